"""Regenerate xrbench's own golden baselines (this folder), the reference of its CI guard.

    nice .venv/bin/python leaderboard/baselines/make.py        # about 10 minutes on 2 CPU cores (590 s measured)

For each of the seven built-in defenses, on digits / convnet / grad_x_input, profile
``smoke`` (its 3-epoch short recipe): train seed 0 and score it; write the entry, its
per-example file and the checkpoint itself (``<defense>-s0.pt``) here, so scoring mode can
re-score exactly the weights the baseline scored, whatever torch version trains today. Then
train and score seeds 1-7 and keep their entries only (``spread/``): the seed spread of the
training mode's band (docs/ci.md). Everything runs on the CPU with one thread, from a fresh
cache (nothing stale is reused), and replaces what was here (entries no longer made are
removed).

A refresh changes what CI accepts: it is a reviewed commit of its own, whose diff shows which
numbers moved (``xrbench regress leaderboard/baselines NEW --mode scoring`` before it says
why).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFENSES = ("normal", "mat", "trades", "sep_pos", "sep_neg", "l2_cosd", "hessian")
SPREAD_SEEDS = (1, 2, 3, 4, 5, 6, 7)
PROFILE = "smoke"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE), help="baseline folder (default: this one)")
    ap.add_argument("--defenses", nargs="+", default=list(DEFENSES),
                    help="defenses (default: the seven built-ins)")
    ap.add_argument("--spread-seeds", nargs="*", type=int, default=list(SPREAD_SEEDS),
                    help="extra seeds kept as entries under spread/ (default: 1 to 7)")
    ap.add_argument("--cache", default=None,
                    help="checkpoint and stage cache (default: a fresh temporary folder)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # as the tests run; scoring numbers do not depend on it
    from xrbench import api
    from xrbench.leaderboard import regress as rg
    from xrbench.protocol import get_profile

    epochs = str(get_profile(PROFILE).train_epochs)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="xrbench-baselines-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        results, spread = Path(tmp) / "results", Path(tmp) / "spread"
        for seed in (0, *args.spread_seeds):
            for defense in args.defenses:
                t0 = time.perf_counter()
                res = api.evaluate(defense, profile=PROFILE, seed=seed,
                                   out=results if seed == 0 else spread, cache_root=cache,
                                   progress=False, device="cpu")
                if seed == 0:  # the checkpoint goes beside the entry (then into the baseline)
                    trained = api.train(defense=defense, seed=seed, overrides={"epochs": epochs},
                                        device="cpu", progress=False, cache_root=cache)
                    if trained.sha256 != res.entry["checkpoint"]["sha256"]:
                        raise SystemExit(f"{defense}: the cached checkpoint is not the scored one")
                    rg.copy_checkpoint(trained.path, res.path)
                print(f"{defense} seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)
        actions = rg.update_baselines(out, rg.load_side(results)[0], prune=True)
        if args.spread_seeds:
            actions += rg.update_baselines(out / rg.SPREAD_FOLDER,
                                           rg.load_side(spread, with_examples=False)[0],
                                           examples=False, prune=True)
    for line in actions:
        print(line)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()
               and p.suffix in (".json", ".npz", ".pt"))
    print(f"baselines in {out}: {size / 1e6:.2f} MB of entries, per-example files and "
          "checkpoints; review the diff and commit it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
