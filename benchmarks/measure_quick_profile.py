"""Measure the `quick` profile's manipulation iterations and learning rate (PROTOCOL 6).

Rule: `quick` must keep Expl@end within 5% of what doubling its iterations gives, on the
digits models. Adam without a schedule is deterministic, so the first T steps of a 2T-step
run are exactly a T-step run: one run of `2 * max(T)` steps, traced at every candidate T and
2T, gives every comparison. Runs on a fixed sample of the quick subset's ordered pairs.

    python benchmarks/measure_quick_profile.py --defenses normal mat sep_pos sep_neg \
        --lrs 1e-3 2e-3 --candidates 50 100 150 200 300 --pairs 500

``--refine`` measures instead whether the step size has converged: for each candidate T it
compares separate runs of (T steps, lr) and (2T steps, lr / 2), the same total Adam movement
in twice as many, half-size steps (the `paper` profile is such a refinement of `quick`:
1500 steps at lr 2e-4 x std against 150 at ten times that lr).

Prints a markdown table (paste it into docs/quick-profile.md with the command).
"""

from __future__ import annotations

import argparse
import time

import torch

import xrbench  # noqa: F401
from xrbench.attacks.manipulation import manipulate, ordered_pairs
from xrbench.data import load_dataset
from xrbench.explainers import get_explainer
from xrbench.subset import get_manifest
from xrbench.train import get_trained_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defenses", nargs="+", default=["normal", "mat", "sep_pos", "sep_neg"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3])
    ap.add_argument("--candidates", nargs="+", type=int, default=[50, 100, 150, 200, 300])
    ap.add_argument("--pairs", type=int, default=500, help="pairs sampled from the 2,450")
    ap.add_argument("--explainer", default="grad_x_input")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--refine", action="store_true",
                    help="compare (T, lr) with (kT, lr / k) instead of (T, lr) with (2T, lr)")
    ap.add_argument("--factor", type=int, default=2, help="k for --refine (default 2)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    manifest, _ = get_manifest(ds, 5, torch.device("cpu"), progress=False)
    images, _ = ds.test.get_batch(torch.tensor(manifest["indices"]))
    pairs = ordered_pairs(images.shape[0])
    pick = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))
                 [:args.pairs]]
    explainer = get_explainer(args.explainer)
    if args.refine:
        refine(args, ds, images, pick, explainer)
        return
    total = 2 * max(args.candidates)
    steps = sorted({t for c in args.candidates for t in (c, 2 * c)})
    points = tuple(s / total for s in steps)
    print(f"| defense | lr | Expl@start | " + " | ".join(
        f"T={c}: E(T) / E(2T) - 1" for c in args.candidates) +
        f" | class changed after {total} | s/iteration |")
    print("|---|---|---|" + "---|" * len(args.candidates) + "---|---|")
    for name in args.defenses:
        model = get_trained_model(ds, "convnet", name, progress=False).model.eval()
        for lr in args.lrs:
            t0 = time.perf_counter()
            res = manipulate(model, explainer, images[pick[:, 0]], images[pick[:, 1]],
                             iterations=total, lr=lr, trace_points=points)
            sec = (time.perf_counter() - t0) / total
            e = {s: float(res.expl_trace[k].double().mean()) for k, s in enumerate(steps)}
            cells = [f"{100 * (e[c] / e[2 * c] - 1):+.1f}% ({e[c] * 1e7:.0f} / "
                     f"{e[2 * c] * 1e7:.0f})" for c in args.candidates]
            print(f"| {name} | {lr:g} | {float(res.expl_start.mean()) * 1e7:.0f} | "
                  + " | ".join(cells) + f" | {100 * float(res.class_changed.float().mean()):.1f}%"
                  f" | {sec:.2f} |", flush=True)


def refine(args: argparse.Namespace, ds, images: torch.Tensor, pick: torch.Tensor,
           explainer) -> None:
    """Table of E(T, lr) / E(kT, lr / k) - 1, separate runs, with class-change shares."""
    k = args.factor
    print("| defense | lr | Expl@start | " + " | ".join(
        f"T={c}: E(T, lr) / E({k}T, lr/{k}) - 1 | class changed (T / {k}T)"
        for c in args.candidates) + " |")
    print("|---|---|---|" + "---|---|" * len(args.candidates))
    for name in args.defenses:
        model = get_trained_model(ds, "convnet", name, progress=False).model.eval()
        for lr in args.lrs:
            cells, start = [], 0.0
            for c in args.candidates:
                runs = [manipulate(model, explainer, images[pick[:, 0]], images[pick[:, 1]],
                                   iterations=t, lr=rate)
                        for t, rate in ((c, lr), (k * c, lr / k))]
                start = float(runs[0].expl_start.mean())
                e = [float(r.expl_end.double().mean()) for r in runs]
                ch = [100 * float(r.class_changed.float().mean()) for r in runs]
                cells.append(f"{100 * (e[0] / e[1] - 1):+.1f}% ({e[0] * 1e7:.0f} / "
                             f"{e[1] * 1e7:.0f}) | {ch[0]:.1f}% / {ch[1]:.1f}%")
            print(f"| {name} | {lr:g} | {start * 1e7:.0f} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
