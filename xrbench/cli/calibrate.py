"""``xrbench calibrate``: choose SEP's lambda for a dataset the paper did not use
(PROTOCOL 7)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EPOCHS, SEED, Handler, progress_bars


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``calibrate`` subparser to ``sub``; return ``{"calibrate": handler}``."""
    p = sub.add_parser(
        "calibrate", help="choose SEP's lambda for a dataset the paper did not use",
        description="PROTOCOL 7: train MAT and SEP (sep_pos or sep_neg) for every |lambda| of "
                    "a grid with a short recipe (10 epochs unless --epochs), score clean and "
                    "PGD accuracy on up to 1000 test images, and choose the largest |lambda| "
                    "whose PGD accuracy stays within 3 points of MAT's and clean accuracy "
                    "within 10. Every grid point is a cached checkpoint (an interrupted run "
                    "resumes). The record (every point, the rule, the choice) goes to "
                    "~/.cache/xrbench/calibrations/, where train and evaluate find it.")
    p.add_argument("--defense", required=True, choices=["sep_pos", "sep_neg"],
                   help="which SEP variant's lambda to choose (the sign of the grid)")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--model", default="convnet", help="model (default: convnet)")
    p.add_argument("--grid", nargs="+", type=float, default=None, metavar="LAMBDA",
                   help="|lambda| values to try; the defense's sign is applied (default: 10 30 "
                        "100 300 1000 3000 10000 30000 100000)")
    p.add_argument("--epochs", type=EPOCHS, default=None,
                   help="epochs of the short recipe (default: 10)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of every training and of the PGD scoring (default: 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the record here instead of the cache (train/evaluate then do "
                        "not find it)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing record that holds a different calibration")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    return {"calibrate": _cmd_calibrate}


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .. import api
    from ..calibrate import SHORT_EPOCHS

    def row(point: dict) -> str:
        if point.get("clean") is None:
            return f"{point['lambda']:>10g}  {'-':>8}  {'-':>8}  {point['status']}"
        mark = "" if "passes" not in point else ("yes" if point["passes"] else "no")
        return (f"{point['lambda']:>10g}  {point['clean']:8.2f}  {point['pgd']:8.2f}  "
                f"{'(MAT, the reference)' if point['lambda'] == 0 else mark}")

    print(f"{'lambda':>10}  {'clean %':>8}  {'PGD %':>8}  passes the rule", flush=True)
    record, path = api.calibrate(args.defense, args.dataset, args.model, grid=args.grid,
                                 epochs=SHORT_EPOCHS if args.epochs is None else args.epochs,
                                 seed=args.seed,
                                 device=args.device, data_dir=args.data_dir, out=args.out,
                                 force=args.force, progress=progress_bars(args),
                                 on_point=lambda p: print(row(p), flush=True))
    chosen = record["chosen"]
    print(f"rule: {record['rule']['text']}")
    if chosen is None:
        print(f"no lambda of the grid passed the rule; try smaller values (--grid ...). "
              f"Record: {path}")
        return 1
    print(f"chosen lambda for {args.defense} on {record['dataset']}/{record['model']}: "
          f"{chosen:g}\nrecord: {path}")
    return 0
