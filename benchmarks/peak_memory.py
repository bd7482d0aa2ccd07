"""Peak resident memory of xrbench evaluate on digits and of the manipulation stage alone.

The manipulation stage runs at 380, 2,450 and 22,350 pairs (the smoke, quick and paper
subsets): it keeps only per-pair numbers (never the manipulated images) and runs its pairs
in chunks of ``pair_batch``, so its peak must stay flat in the number of pairs.

    python benchmarks/peak_memory.py                        # every run below, ~10 min
    python benchmarks/peak_memory.py --runs manipulation    # the stage alone, ~1 min

Each run is a fresh process under GNU ``/usr/bin/time -v`` (its "Maximum resident set
size"), with a fresh temporary cache (``XRBENCH_CACHE``; so it trains its model and builds
its subset, as a first run does) and a temporary ``--out``; default torch threads. The runs of
this script's own ``--inner`` modes also report the peak measured in the process when its
work is done (``getrusage``): ``/usr/bin/time``'s figure is larger by what the interpreter's
exit touches after torch was imported (about 115 MiB here, the same in every run; the
``floor`` row shows it on ``import torch, xrbench`` alone).

* ``floor``: ``python -c "import torch, xrbench"``.

* ``smoke``, ``quick``: ``xrbench evaluate --defense normal --dataset digits --profile P``.
* ``paper``: ``api.evaluate`` with the ``paper`` profile's sizes (150 images, 22,350 pairs,
  every chunk, every stage) but ``--iterations`` steps for the manipulation, RelEx and the
  Adv-Insertion attack (memory does not grow with steps; paper's own 1,500 take an hour
  here). A second table gives the peak so far (``getrusage``) after the training and
  subset, after each stage (its summary included) and after the entry is built and
  written, which says what sets the peak.
* ``manipulation``: the manipulation stage (:class:`xrbench.stages.Manipulation` through
  its cache, as evaluate runs it) on the first 20, 50 and 150 digits test images of an
  untrained ConvNet (memory does not depend on the weights), ``--iterations`` steps, and a
  ``baseline`` process that loads the same things and runs nothing.

Prints a markdown table (paste it into docs/benchmarks.md with the command).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNS = ("floor", "smoke", "quick", "paper", "manipulation")
PAIR_IMAGES = (20, 50, 150)  # smoke, quick, paper subsets: 380, 2,450, 22,350 pairs
PEAK_TAG = "PEAK_BY_STAGE "


def _peak_mib() -> float:
    """This process's peak resident set so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- inside the measured process --------------------------------------------------------

def inner_evaluate(profile: str, iterations: int, out: Path) -> None:
    """``api.evaluate`` of normal on digits with ``profile``'s sizes and ``iterations``
    attack/RelEx steps; prints the peak resident set so far (MiB) after the training and
    subset, each stage and the entry, as JSON."""
    from xrbench import api, entry
    from xrbench import stage as stage_module
    from xrbench.protocol import get_profile, with_overrides
    from xrbench.stages import STAGES

    prof = with_overrides(get_profile(profile), manipulation_iterations=iterations,
                          relex_iterations=iterations, adv_insertion_iterations=iterations)
    peaks: dict[str, float] = {}

    def mark(owner: Any, attr: str, name: str | None, before: str | None = None) -> None:
        """Record the peak so far when ``owner.attr`` (a function) returns (and, named
        ``before``, when it is called)."""
        fn = getattr(owner, attr)

        def marked(*args: Any, **kw: Any) -> Any:
            if before is not None:
                peaks[before] = _peak_mib()
            result = fn(*args, **kw)
            if name is not None:
                peaks[name] = _peak_mib()
            return result
        setattr(owner, attr, marked)

    # training, the subset and its extractor come before the stages
    mark(stage_module, "run_stages", None, before="training and subset")
    for stage in STAGES:  # run_stages calls execute, then summarize (bootstrap intervals)
        mark(stage, "summarize", stage.name)
    mark(entry, "build_entry", "entry")
    mark(api, "_write", "written")
    with tempfile.TemporaryDirectory(prefix="xrbench-mem-cache-") as cache:
        api.evaluate("normal", "digits", "convnet", "grad_x_input", prof, out=out,
                     progress=False, device="cpu", cache_root=Path(cache))
    print(PEAK_TAG + json.dumps(peaks), flush=True)


def inner_manipulation(n_images: int, iterations: int) -> None:
    """The manipulation stage on ``n_images`` digits test images (n(n-1) pairs), through
    a stage cache in a temporary folder; ``n_images`` 0 loads everything, runs nothing."""
    import torch

    import xrbench  # noqa: F401
    from xrbench.data import load_dataset
    from xrbench.explainers import get_explainer
    from xrbench.models import create_model
    from xrbench.protocol import get_profile, with_overrides
    from xrbench.engine.runtime import RunContext, StageCache
    from xrbench.stages import Manipulation

    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    images, labels = ds.test.get_batch(torch.arange(max(n_images, 2)))
    profile = with_overrides(get_profile("paper"), manipulation_iterations=iterations)
    peaks = {"loaded": _peak_mib()}
    with tempfile.TemporaryDirectory(prefix="xrbench-mem-cache-") as cache:
        ctx = RunContext(model=model, model_name="convnet",
                         explainer=get_explainer("grad_x_input"), dataset=ds, profile=profile,
                         images=images, labels=labels, device=torch.device("cpu"), seed=0,
                         progress=False, base_key={}, cache=StageCache(Path(cache)))
        if n_images:
            stage = Manipulation()
            out = stage.execute(ctx, stage.params(ctx))
            assert out["expl_end"].shape == (n_images * (n_images - 1),)
            peaks["manipulation"] = _peak_mib()
    print(PEAK_TAG + json.dumps(peaks), flush=True)


# --- the measuring process ------------------------------------------------------------

def _timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``: peak RSS (MiB), wall seconds, its stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *cmd], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        text = Path(report.name).read_text()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if kib is None:
        raise SystemExit(f"no 'Maximum resident set size' in /usr/bin/time's report:\n{text}")
    return {"rss_mib": int(kib.group(1)) / 1024, "seconds": wall, "stdout": proc.stdout}


def _fresh_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, XRBENCH_CACHE=str(tmp / "cache"), XRBENCH_OFFLINE="1")
    env.pop("XRBENCH_RESULTS", None)
    return env


def measure(runs: list[str], iterations: int) -> list[dict[str, Any]]:
    """Rows of the table (run, pairs, peak RSS MiB, seconds, command, stage peaks)."""
    xrbench_cli = Path(sys.executable).with_name("xrbench")
    cli = [str(xrbench_cli)] if xrbench_cli.exists() else [
        sys.executable, "-c", "import sys; from xrbench.cli import main; sys.exit(main())"]
    me = [sys.executable, os.path.abspath(__file__)]
    rows = []
    for run in runs:
        jobs: list[tuple[str, int, list[str], str]] = []
        if run == "floor":
            code = "import torch, xrbench"
            jobs.append(("floor: import torch, xrbench", 0, [sys.executable, "-c", code],
                         f'python -c "{code}"'))
        elif run in ("smoke", "quick"):
            n = 20 if run == "smoke" else 50
            args = ["evaluate", "--defense", "normal", "--dataset", "digits", "--profile", run,
                    "--quiet", "--out"]
            jobs.append((f"`{run}` evaluate", n * (n - 1), cli + args,
                         f"xrbench {' '.join(args)} OUT"))
        elif run == "paper":
            args = ["--inner", "evaluate", "--profile", "paper", "--iterations",
                    str(iterations), "--out"]
            jobs.append((f"`paper` evaluate, {iterations} steps", 22350, me + args,
                         f"python benchmarks/peak_memory.py {' '.join(args)} OUT"))
        else:
            for n in (0, *PAIR_IMAGES):
                args = ["--inner", "manipulation", "--images", str(n), "--iterations",
                        str(iterations)]
                label = ("baseline (load, no attack)" if n == 0
                         else f"manipulation stage, {iterations} steps")
                jobs.append((label, n * (n - 1), me + args,
                             f"python benchmarks/peak_memory.py {' '.join(args)}"))
        for label, pairs, cmd, shown in jobs:
            with tempfile.TemporaryDirectory(prefix="xrbench-mem-") as tmp:
                if cmd[-1] == "--out":
                    cmd = cmd + [str(Path(tmp) / "out")]
                print(f"running {shown} ...", file=sys.stderr, flush=True)
                res = _timed(cmd, _fresh_env(Path(tmp)))
            stage_peaks = None
            for line in res["stdout"].splitlines():
                if line.startswith(PEAK_TAG):
                    stage_peaks = json.loads(line[len(PEAK_TAG):])
            rows.append({"run": label, "pairs": pairs, "rss_mib": res["rss_mib"],
                         "seconds": res["seconds"], "command": shown,
                         "stage_peaks": stage_peaks})
            print(f"  peak RSS {res['rss_mib']:.0f} MiB, {res['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows``, then each run's peaks by stage where it has them."""
    lines = ["| run | pairs | peak RSS (/usr/bin/time) | peak RSS when done (in process) "
             "| wall | command |", "|---|---|---|---|---|---|"]
    for r in rows:
        done = (f"{max(r['stage_peaks'].values()):.0f} MiB" if r["stage_peaks"] else "")
        lines.append(f"| {r['run']} | {r['pairs']:,} | {r['rss_mib']:.0f} MiB | {done} | "
                     f"{r['seconds']:.0f} s | `{r['command']}` |")
    for r in rows:
        if r["stage_peaks"] and len(r["stage_peaks"]) > 2:
            lines += ["", f"Peak RSS so far (in process) after each step, {r['run']}:", "",
                      "| " + " | ".join(r["stage_peaks"]) + " |",
                      "|" + "---|" * len(r["stage_peaks"]),
                      "| " + " | ".join(f"{v:.0f} MiB" for v in r["stage_peaks"].values())
                      + " |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                    help="what to measure (default: all)")
    ap.add_argument("--iterations", type=int, default=2,
                    help="manipulation, RelEx and Adv-Insertion steps of the paper-sized "
                         "evaluate and of the stage-alone runs (default 2)")
    ap.add_argument("--inner", choices=["evaluate", "manipulation"],
                    help="(internal) the measured process itself")
    ap.add_argument("--profile", default="paper", help="(with --inner evaluate)")
    ap.add_argument("--images", type=int, default=0, help="(with --inner manipulation)")
    ap.add_argument("--out", type=Path, help="(with --inner evaluate) results folder")
    args = ap.parse_args()
    if args.inner == "evaluate":
        inner_evaluate(args.profile, args.iterations, args.out)
    elif args.inner == "manipulation":
        inner_manipulation(args.images, args.iterations)
    else:
        t0 = time.perf_counter()
        rows = measure(args.runs, args.iterations)
        print(table(rows))
        print(f"\nmeasured in {time.perf_counter() - t0:.0f} s, load average "
              f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
