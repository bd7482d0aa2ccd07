"""``xrbench leaderboard``: the leaderboard tables (markdown, JSON or HTML) of result
entries, with correlations. It reads entries and writes tables; nothing here trains or
scores."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import XRBenchError
from .common import Handler


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``leaderboard`` subparser to ``sub``; return ``{"leaderboard": handler}``."""
    p = sub.add_parser(
        "leaderboard", help="leaderboard tables (markdown, JSON or HTML) with correlations",
        description="One table per (dataset, model, explainer, profile, protocol version), "
                    "rows sorted by Expl@end (or --sort), the newest protocol version's "
                    "tables first (older versions' tables only with --superseded); under "
                    "each, the correlation of PGD accuracy with each explanation metric "
                    "(Spearman and Kendall, 95% bootstrap interval over the table's rows; a "
                    "sentence instead below 4 rows). Numbers copied from the SEP paper's "
                    "Tables 2 and 15 and Joo et al. 2023's Table 1 ship as 'reported' rows, "
                    "labelled as such, beside measured rows of the same dataset, model and "
                    "explainer (any profile). A file that is not a valid entry is skipped "
                    "with a warning naming it; two rows with the same source, defense and "
                    "seed are both shown, marked, and warned about.")
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
                        "all = beside measured rows of the same dataset, model and explainer "
                        "(any profile: a paper's setup is none of ours), else in a table of "
                        "their own (default without --results); "
                        "beside = only beside measured rows (default with --results); "
                        "none = left out")
    p.add_argument("--sort", choices=("expl_end", "expl_end_worst"), default="expl_end",
                   help="the metric each table's rows are ordered by: Expl@end (default) or "
                        "Expl@end (worst), the worst case over the attack ensemble of "
                        "PROTOCOL 5.8; reported rows follow the measured ones")
    p.add_argument("--superseded", action="store_true",
                   help="also show the tables of protocol versions older than the newest one "
                        "among the entries (by default they are left out, with a closing note "
                        "naming them: their numbers measure what an older protocol measured)")
    return {"leaderboard": _cmd_leaderboard}


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

    from .. import api
    from ..utils import atomic_write_text

    fmt = leaderboard_format(args.format, args.out)
    out = Path(args.out) if args.out else None
    if out is not None:  # refuse before any work
        if out.is_dir():
            raise XRBenchError(f"--out {out} is a folder; give a file path")
        if out.exists() and not args.force:
            raise XRBenchError(f"{out} exists; pass --force to overwrite it")
    rendered = api.leaderboard(args.results, format=fmt, intervals=args.ci,
                               reported=args.reported, sort=args.sort,
                               superseded=args.superseded)
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
