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
                                   "and seed), with a paired bootstrap 95% interval over the "
                                   "shared images (victims for pair metrics), read from the "
                                   "entries' per-example files; 'zero in CI' says whether the "
                                   "difference could be noise.")
    p.add_argument("a", metavar="A", help="entry JSON (the reference)")
    p.add_argument("b", metavar="B", help="entry JSON compared against A")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")

    p = sub.add_parser(
        "leaderboard", help="leaderboard tables (markdown, JSON or HTML) with correlations",
        description="One table per (dataset, model, explainer, profile, protocol version), "
                    "rows sorted by Expl@end; under each, the correlation of PGD accuracy with "
                    "each explanation metric (Spearman and Kendall, 95% bootstrap interval "
                    "over the table's rows; a sentence instead below 4 rows). Numbers copied "
                    "from the SEP paper's Table 2 and Joo et al. 2023's Table 1 ship as "
                    "'reported' rows, labelled as such, beside measured rows of the same "
                    "dataset, model, explainer and profile. A file that is not a valid entry "
                    "is skipped with a warning naming it; two rows with the same source, "
                    "defense and seed are both shown, marked, and warned about.")
    p.add_argument("--results", action="append", default=None, metavar="DIR",
                   help="folder of JSON entries, searched recursively; repeat for several "
                        "(default: the published entries shipped with xrbench)")
    p.add_argument("--format", choices=("md", "json", "html"), default=None,
                   help="md: markdown tables (default); json: one document valid against "
                        "leaderboard-schema.json (tables, rows, notes, correlations, "
                        "duplicates, skipped files); html: one self-contained page (sortable "
                        "columns, scatter plots embedded, no external resources). Default: "
                        "from --out's suffix (.md, .json, .html), else md")
    p.add_argument("--out", "--output", dest="out", default=None, metavar="PATH",
                   help="write to this file, atomically (default: print to stdout); "
                        "--output is the older name")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--ci", "--intervals", dest="ci", action="store_true",
                   help="show each value with its 95%% bootstrap interval (the entries' ci): "
                        "markdown prints the intervals view (clean/PGD accuracy, "
                        "Expl@start/end, Insertion), HTML adds the interval under each "
                        "value; JSON always has them. --intervals is the older name")
    p.add_argument("--reported", choices=("all", "beside", "none"), default=None,
                   help="where the reported rows (paper tables shipped with xrbench) go: "
                        "all = beside measured rows of the same dataset, model, explainer and "
                        "profile, and in tables of their own (default without --results); "
                        "beside = only beside measured rows (default with --results); "
                        "none = left out")
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


_SUFFIX_FORMAT = {".md": "md", ".markdown": "md", ".json": "json", ".html": "html",
                  ".htm": "html"}


def leaderboard_format(fmt: str | None, out: str | None) -> str:
    """The output format: ``--format`` if given, else from ``--out``'s suffix, else md; an
    ``--out`` whose suffix names another format than ``--format`` is an error."""
    from pathlib import Path

    guessed = _SUFFIX_FORMAT.get(Path(out).suffix.lower()) if out else None
    if fmt is not None and guessed is not None and guessed != fmt:
        raise XRBenchError(f"--format {fmt} but --out {out} ends in {Path(out).suffix}; "
                           "make them agree")
    return fmt or guessed or "md"


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import api
    from .utils import atomic_write_text

    fmt = leaderboard_format(args.format, args.out)
    out = Path(args.out) if args.out else None
    if out is not None:  # refuse before any work
        if out.is_dir():
            raise XRBenchError(f"--out {out} is a folder; give a file path")
        if out.exists() and not args.force:
            raise XRBenchError(f"{out} exists; pass --force to overwrite it")
    rendered = api.leaderboard(args.results, format=fmt, intervals=args.ci,
                               reported=args.reported)
    if out is not None:
        try:
            atomic_write_text(out, rendered.text)
        except OSError as exc:
            raise XRBenchError(f"cannot write {out}: {exc.strerror or exc}") from exc
        board = rendered.board
        print(f"wrote {out} ({fmt}; {len(board.tables)} tables, {rendered.count} entries"
              + (f", {len(board.skipped)} files skipped" if board.skipped else "")
              + (f", {len(board.duplicates)} duplicate groups" if board.duplicates else "")
              + ")")
    else:
        print(rendered.text, end="" if rendered.text.endswith("\n") else "\n")
    return 0
