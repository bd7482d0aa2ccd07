"""The ``xrbench sweep`` command: one evaluate per cell of defenses x datasets x models x
explainers x seeds x recipe grid (:mod:`xrbench.sweep`), in this process or on a Ray cluster.
:func:`add_commands` is called by :func:`xrbench.cli.app.build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .common import EPOCHS

DESCRIPTION = """\
Evaluate every cell of defenses x datasets x models x explainers x seeds (and, per defense,
every point of a recipe grid) with the fixed protocol; each cell writes its own entry, as
`xrbench evaluate` would, to OUT/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json.

Grids: --grid DEFENSE.FIELD=V1,V2,... applies to that defense's cells only; each grid point
writes below its own folder, OUT/grid/DEFENSE.FIELD=VALUE/... (several fields of one defense:
OUT/grid/trades.beta=3,trades.epochs=10/...), so the points never overwrite each other. The
SEP paper's TRADES sweep (its section 4): --defenses trades --grid trades.beta=1,3,6,9.

Resuming: a cell whose entry is already there for the same configuration (protocol version,
profile, dataset, model, explainer, defense, recipe hash, seed) is skipped without loading
data or training; rerun the same command after an interruption and only the missing cells
run (and inside a cell, its cached checkpoint and stages are reused). --dry-run lists the
cells and what is cached for each, computing nothing.

Failures: a failing cell does not stop the others; the table at the end lists every cell's
status, seconds and entry, and each failed cell with its error (-v: its traceback). Exit 1
if any cell failed, else 0.

Executors: --executor local (default) runs the cells one after another in this process;
--executor ray runs each cell as a Ray task (pip install "xrbench[ray]"), on a local Ray
cluster started for the sweep with this machine's CPUs and GPUs, or on a running cluster
(--ray-address). Each cell reserves --cpus-per-cell CPUs (default 1: one torch thread per
cell, cells side by side) and --gpus-per-cell GPUs (default 1 with --device cuda, else 0)."""

EPILOG = """\
examples:
  xrbench sweep --defenses normal,mat,trades --datasets digits --dry-run
  xrbench sweep --defenses normal,mat --profile smoke --executor ray
  xrbench sweep --defenses trades --grid trades.beta=1,3,6,9 --seeds 0,1,2 --out results
  xrbench sweep --defenses normal,mat --executor ray --ray-address ray://head:10001 \\
      --device cuda --out /shared/results"""


def add_commands(sub: Any) -> dict[str, Any]:
    """Add the ``sweep`` subparser to ``sub``; return ``{"sweep": handler}``."""
    from .common import add_executor_options
    from ..protocol import PROFILES

    p = sub.add_parser("sweep", help="evaluate every cell of defenses x datasets x models x "
                                     "explainers x seeds x recipe grid, locally or on Ray",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defenses", required=True, metavar="A,B,...",
                   help="defenses, comma-separated (see `xrbench list defenses`)")
    p.add_argument("--datasets", default="digits", metavar="A,B,...",
                   help="datasets, comma-separated (default: digits)")
    p.add_argument("--models", default="convnet", metavar="A,B,...",
                   help="models, comma-separated (default: convnet)")
    p.add_argument("--explainers", default="grad_x_input", metavar="A,B,...",
                   help="explainers used for scoring, comma-separated (default: grad_x_input)")
    p.add_argument("--seeds", default="0", metavar="S,...",
                   help="seeds, comma-separated or a range such as 0-4 (default: 0)")
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="protocol sizes of every cell (default: quick)")
    p.add_argument("--grid", action="append", default=[], metavar="DEFENSE.FIELD=V1,V2",
                   help="sweep a recipe field of one defense over these values, e.g. "
                        "--grid trades.beta=1,3,6,9 (repeatable; several fields of one "
                        "defense give their product); each point writes below "
                        "OUT/grid/DEFENSE.FIELD=VALUE/")
    p.add_argument("--set", dest="sets", action="append", metavar="[DEFENSE.]KEY=VALUE",
                   help="override a recipe field in every cell (every defense must have it), "
                        "or with DEFENSE. in that defense's cells only, e.g. --set epochs=5 "
                        "or --set sep_neg.lambda_=-100 (repeatable)")
    p.add_argument("--epochs", type=EPOCHS, default=None,
                   help="override every recipe's epochs (same as --set epochs=N)")
    p.add_argument("--out", default=None,
                   help="results folder (default: $XRBENCH_RESULTS or ~/.cache/xrbench/results); "
                        "on a multi-machine Ray cluster, a folder every machine can write "
                        "(a shared filesystem)")
    add_executor_options(p, "cells")
    p.add_argument("--cpus-per-cell", type=float, default=1.0, metavar="N",
                   help="CPUs Ray reserves for each cell (default: 1; Ray sets one thread "
                        "per reserved CPU)")
    p.add_argument("--gpus-per-cell", type=float, default=None, metavar="N",
                   help="GPUs Ray reserves for each cell, fractions allowed (default: 1 with "
                        "--device cuda, else 0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu or cuda, in each cell; with --executor "
                        "ray pass cuda to get GPUs (a task without a reserved GPU sees none)")
    p.add_argument("--data-dir", default=None,
                   help="where datasets live (default: $XRBENCH_DATA or ~/.cache/xrbench/data)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells and what is cached for each (entry done, checkpoint "
                        "cached, nothing cached); compute nothing")
    p.add_argument("--force", action="store_true",
                   help="run every cell, finished ones too, recomputing every stage, and "
                        "replace existing entries")
    p.add_argument("--replace", action="store_true",
                   help="let a cell replace an entry file that holds another run (e.g. an "
                        "older xrbench's), reusing cached stages; finished cells stay skipped")
    p.add_argument("--retrain", action="store_true",
                   help="cells that run train again even when a cached checkpoint exists "
                        "(finished cells stay skipped)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no line per finished cell; only the final table")
    return {"sweep": _cmd_sweep}


def _spec(args: argparse.Namespace) -> Any:
    from .common import parse_sets
    from ..sweep import SweepSpec, parse_grid, parse_seeds, split_list

    sets = parse_sets(args.sets)
    if args.epochs is not None:
        sets["epochs"] = str(args.epochs)
    return SweepSpec(defenses=split_list(args.defenses, "--defenses"),
                     datasets=split_list(args.datasets, "--datasets"),
                     models=split_list(args.models, "--models"),
                     explainers=split_list(args.explainers, "--explainers"),
                     seeds=parse_seeds(args.seeds), profile=args.profile,
                     grid=parse_grid(args.grid), sets=sets, out=args.out, device=args.device,
                     data_dir=args.data_dir, force=args.force, replace=args.replace,
                     retrain=args.retrain)


def _show(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..errors import XRBenchError
    from ..engine.executors import get_executor
    from ..sweep import FAILED, RAN, SKIPPED, plan, run_sweep

    import logging
    import time

    t0 = time.perf_counter()
    spec = _spec(args)
    if not args.verbose:  # one line per cell, not per stage of every cell
        for name in ("xrbench.api", "xrbench.train", "xrbench.subset"):
            logging.getLogger(name).setLevel(logging.WARNING)
    get_executor(args.executor, args.ray_address)  # Ray missing: one line, before any work
    if args.cpus_per_cell <= 0 or (args.gpus_per_cell is not None and args.gpus_per_cell < 0):
        raise XRBenchError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
    planned = plan(spec)
    if args.dry_run:
        width = max(len(c.name) for c, _ in planned)
        for cell, state in planned:
            print(f"{cell.name:<{width}}  {state.describe(_show(cell.entry_path))}")
        kinds = Counter(s.kind for _, s in planned)
        print(f"{len(planned)} cells: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
        return 0
    bars = not args.quiet and sys.stderr.isatty()
    lines = not args.quiet and not bars  # piped: one line per finished cell instead of a bar

    def on_start(cells: int, to_run: int, executor: str) -> None:
        if not args.quiet:
            print(f"sweep: {cells} cells, {to_run} to run ({cells - to_run} finished or "
                  f"unable to run); executor {executor}", flush=True)

    def on_result(r: Any) -> None:
        if lines:
            tail = f" ({r.error})" if r.error else ""
            print(f"  {r.status:<7} {r.cell.name}  {r.seconds:.1f} s{tail}", flush=True)

    report = run_sweep(spec, executor=args.executor, address=args.ray_address,
                       cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell,
                       progress=bars, planned=planned, on_start=on_start,
                       on_result=on_result)
    rows = [(r.cell.name, r.status, f"{r.seconds:.1f}", _show(r.path)) for r in report.results]
    print(tabulate(rows, headers=["cell", "status", "seconds", "entry"], tablefmt="simple",
                   disable_numparse=True))
    counts = Counter(r.status for r in report.results)
    print(f"{len(report.results)} cells: {counts[RAN]} done, {counts[SKIPPED]} skipped "
          f"(finished before), {counts[FAILED]} failed; {report.executor}, wall "
          f"{time.perf_counter() - t0:.1f} s")
    for r in report.failed:
        print(f"failed: {r.cell.name}: {r.error}")
        if args.verbose and r.trace:
            print(r.trace.rstrip())
    if any(r.trace for r in report.failed) and not args.verbose:
        print("(-v prints each failed cell's traceback)")
    return 1 if report.failed else 0
