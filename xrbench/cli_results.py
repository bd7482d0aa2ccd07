"""The result commands of the ``xrbench`` command line: ``compare`` and ``leaderboard``.

They read entries (and their per-example files) and print or write tables; nothing here
trains or scores. :func:`add_commands` is called by :func:`xrbench.cli.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .errors import XRBenchError


def add_commands(sub: Any) -> dict[str, Any]:
    """Add this module's subparsers to ``sub``; return ``{command: handler}``."""
    p = sub.add_parser("compare", help="compare two entries metric by metric, paired",
                       description="B - A for every metric of two entries scored on the same "
                                   "subset (same dataset, profile, protocol version, manifest "
                                   "and seed), with a paired bootstrap 95%% interval over the "
                                   "shared images (victims for pair metrics), read from the "
                                   "entries' per-example files; 'zero in CI' says whether the "
                                   "difference could be noise.")
    p.add_argument("a", metavar="A", help="entry JSON (the reference)")
    p.add_argument("b", metavar="B", help="entry JSON compared against A")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")

    p = sub.add_parser("leaderboard", help="render markdown tables from a folder of entries",
                       description="One markdown table per (dataset, model, explainer, "
                                   "profile, protocol version), rows sorted by Expl@end.")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="folder of JSON entries (default: the published entries shipped "
                        "with xrbench)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the markdown here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--intervals", action="store_true",
                   help="show clean/PGD accuracy, Expl@start/end and Insertion each with its "
                        "95%% bootstrap interval")
    return {"compare": _cmd_compare, "leaderboard": _cmd_leaderboard}


def _cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from . import api
    from .leaderboard.schema import read_entry

    rows = []
    for d in api.compare(args.a, args.b, n_resamples=args.resamples):
        scale, unit = (1e7, " (x1e-7)") if d.metric.startswith("expl_") else (1.0, "")
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


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import api
    from .utils import atomic_write_text

    text, count = api.leaderboard(args.results, intervals=args.intervals)
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.force:
            raise XRBenchError(f"{out} exists; pass --force to overwrite it")
        atomic_write_text(out, text)
        print(f"wrote {out} ({count} entries)")
    else:
        print(text)
    return 0
