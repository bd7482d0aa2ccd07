"""``xrbench compare A B``: two entries metric by metric, with a paired bootstrap interval
of each difference over their shared examples. It reads entries (and their per-example
files); nothing here trains or scores."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Handler, int_in


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``compare`` subparser to ``sub``; return ``{"compare": handler}``."""
    p = sub.add_parser("compare", help="compare two entries metric by metric, paired",
                       description="B - A for every metric of two entries scored on the same "
                                   "subset (same dataset, profile, protocol version, manifest "
                                   "and seed), with a paired bootstrap 95% interval over the "
                                   "shared images (victims for pair metrics), read from the "
                                   "entries' per-example files; 'zero in CI' says whether the "
                                   "difference could be noise.")
    p.add_argument("a", metavar="A", help="entry JSON (the reference)")
    p.add_argument("b", metavar="B", help="entry JSON compared against A")
    p.add_argument("--resamples", type=int_in(1, 1_000_000, "--resamples"), default=1000,
                   help="bootstrap resamples (1000; at most 1,000,000)")
    return {"compare": _cmd_compare}


def _cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .. import api
    from ..leaderboard.schema import read_entry

    rows = []
    for d in api.compare(args.a, args.b, n_resamples=args.resamples):
        last = d.metric.split("/")[-1] if d.metric.startswith("ensemble/") else d.metric
        scale, unit = (1e7, " (x1e-7)") if last.startswith("expl_") else (1.0, "")
        rows.append((d.metric + unit, f"{d.a * scale:.4g}", f"{d.b * scale:.4g}",
                     f"{d.diff * scale:+.4g}", f"[{d.lo * scale:+.4g}, {d.hi * scale:+.4g}]",
                     "yes" if d.zero_inside else "no", f"{d.n} / {d.units}"))
    a, b = read_entry(args.a), read_entry(args.b)
    print(f"A = {a['defense']['name']}, B = {b['defense']['name']} on {a['dataset']['name']} / "
          f"{a['model']['name']} / {a['explainer']['name']} / profile "
          f"{a['protocol']['profile']}; paired bootstrap over the shared examples")
    print(tabulate(rows, headers=["metric", "A", "B", "B - A", "95% CI of B - A", "zero in CI",
                                  "examples / units"], tablefmt="simple",
                   disable_numparse=True))
    return 0
