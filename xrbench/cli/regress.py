"""``xrbench regress BASELINE CURRENT``: the regression guard of metric values.

The logic is :mod:`xrbench.leaderboard.regress` (pure functions over entries and their
per-example files); this module parses, prints and sets the exit code: 0 when every metric is
within its band and the two sides hold the same entries, 1 otherwise, 2 on a usage error.
:func:`add_commands` is called by :func:`xrbench.cli.app.build_parser`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DESCRIPTION = """\
Compare every metric of the entries in CURRENT with the same entries in BASELINE (files or
folders of entries; matched by dataset, model, explainer, profile, defense and seed) and fail
(exit 1) when a value leaves its band, an entry is missing or extra, or two entries are not
comparable (another protocol version or subset manifest).

--mode scoring (default): the same checkpoint (sha256) scored by changed code; band
  max(atol, rtol*|baseline|), rtol 1e-4; any move fails, better or worse; intervals,
  medians and per-example values must agree too.
--mode training: a retrained checkpoint; band from the data, on each side the larger of the
  distance to the baseline's 95% interval, K x the sd over the baseline's seeds (entries in a
  spread/ folder of BASELINE, or --spread), one example of a count metric, atol and
  rtol*|baseline|. Worse beyond the band fails; better is reported ("improved") and fails only
  with --fail-on-improvement. docs/ci.md explains the defaults and why.
"""


def add_commands(sub: Any) -> dict[str, Any]:
    """Add ``regress`` to ``sub``; return ``{"regress": handler}``."""
    from ..leaderboard.regress import DEFAULT_ATOL, DEFAULT_K, DEFAULT_RTOL

    p = sub.add_parser("regress", help="fail when metric values moved beyond their band "
                                       "(CI regression guard)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", metavar="BASELINE",
                   help="baseline entry file or folder (entries under a spread/ folder only "
                        "feed the training band's seed spread)")
    p.add_argument("current", metavar="CURRENT",
                   help="current entry file or folder (entries under a spread/ folder are not "
                        "compared: comparing two baseline folders works)")
    p.add_argument("--mode", choices=["scoring", "training"], default="scoring",
                   help="scoring: same checkpoint, changed scoring code (tight band; "
                        "default); training: retrained checkpoint (band from the data)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"relative tolerance: the scoring band, a floor of the training band "
                        f"(default {DEFAULT_RTOL:g})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="absolute tolerance in the entry's units, likewise (default 0)")
    p.add_argument("--metric", dest="metrics", action="append", metavar="NAME=TOL",
                   help="band of the metrics NAME matches (a name as the table prints it, or "
                        "a glob such as 'retrieval/*'), replacing the default band in either "
                        "mode: TOL is relative (1e-3 or rel:1e-3) or absolute in the "
                        "entry's units (abs:0.5); repeatable, the last match wins")
    p.add_argument("--k", type=float, default=DEFAULT_K,
                   help=f"training mode: seed standard deviations in the band "
                        f"(default {DEFAULT_K:g})")
    p.add_argument("--spread", default=None, metavar="DIR",
                   help="training mode: more baseline seeds (entries) for the seed spread, "
                        "besides BASELINE/spread/")
    p.add_argument("--fail-on-improvement", action="store_true",
                   help="training mode: a metric better than its band fails too")
    p.add_argument("--across-versions", action="store_true",
                   help="compare entries of different protocol versions (same subset): what "
                        "a new version moved on the same checkpoints; any move still fails")
    p.add_argument("--show", choices=["all", "changed", "failed"], default="changed",
                   help="table rows: every row that is not ok (default; a line counts the "
                        "others), all rows, or failing rows only")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table (default) or json (for machines; same exit code)")
    p.add_argument("--update", action="store_true",
                   help="after printing the comparison, write CURRENT's entries (with their "
                        "per-example files and any <defense>-s<seed>.pt checkpoint beside "
                        "them) into the BASELINE folder, replacing those of the same key; "
                        "exit 0. A refresh is a reviewed commit")
    return {"regress": _cmd_regress}


def _cmd_regress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..leaderboard import regress as rg

    settings = rg.Settings(mode=args.mode, rtol=args.rtol, atol=args.atol,
                           metric_tolerances=rg.parse_metric_tolerances(args.metrics), k=args.k,
                           fail_on_improvement=args.fail_on_improvement,
                           across_versions=args.across_versions)
    current, ignored = rg.load_side(args.current, split_spread=True)  # e.g. a baseline folder
    base_path = Path(args.baseline)
    if args.update and not (base_path.is_dir() and rg.entry_files(base_path)):
        baseline, spread = [], []  # a first baseline: nothing to compare with yet
    else:
        baseline, spread = rg.load_side(base_path, split_spread=True)
    if args.spread:
        spread = spread + rg.load_side(args.spread, with_examples=False)[0]
    report = rg.regress(baseline, current, settings, spread)
    note = (f"note: {len(ignored)} entries under spread/ in {args.current} are seed-spread "
            "entries: not compared" if ignored else "")
    if args.format == "json":
        out = report.to_dict()
        out["ignored_spread_entries"] = [str(s.path) for s in ignored]
        if args.update:
            out["updated"] = rg.update_baselines(base_path, current)
        print(json.dumps(out, indent=1))
        return 0 if args.update else int(report.failed)
    if baseline:
        print(rg.render(report, args.show))
    if note:
        print(note)
    if args.update:
        for line in rg.update_baselines(base_path, current):
            print(line)
        print(f"updated the baseline {base_path}; review the diff and commit it (a baseline "
              "refresh is a reviewed commit)")
        return 0
    return int(report.failed)
