"""``leaderboard/README.md``: the published leaderboards, rendered from the entries shipped
with xrbench (and the reported paper tables), with the command that made it at its top.

    python -m xrbench.leaderboard.readme            # rewrite leaderboard/README.md
    python -m xrbench.leaderboard.readme --check    # exit 1 if it is out of date

A test (``tests/test_leaderboard_readme.py``) regenerates the text and compares it with the
file, so a change to the published entries or to the rendering that is not followed by this
command fails the test suite with the command to run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .board import load_board
from .render import render_markdown

COMMAND = "python -m xrbench.leaderboard.readme"
README = Path(__file__).parent / "README.md"


def render_readme() -> str:
    """The README's text: a header naming the command, then ``xrbench leaderboard``'s
    markdown of the published entries with every reported table (deterministic)."""
    board = load_board(None, reported_mode="all")
    measured = sum(1 for t in board.tables for r in t.rows if not r.reported)
    reported = len({id(r.entry) for t in board.tables for r in t.rows if r.reported})
    head = (
        "<!-- Generated file: edit the entries or the renderer, then run\n"
        f"     {COMMAND}\n     (tests/test_leaderboard_readme.py checks it is up to date). -->\n"
        "# Published leaderboards\n\n"
        f"Rendered by `{COMMAND}` from the published entries in `leaderboard/results/` "
        f"({measured} measured rows) and the reported paper tables in `leaderboard/reported/` "
        f"({reported} rows); the same tables as `xrbench leaderboard` prints with no "
        "arguments. Reported rows are numbers copied from a paper, labelled in their "
        "`source` column; they sit beside measured rows of the same dataset, model and "
        "explainer (any profile), and in tables of their own where nothing is measured yet. How to read "
        "the tables and the correlation lines: `docs/leaderboard.md`.\n\n")
    return head + render_markdown(board)


def refresh(check: bool = False) -> tuple[int, str]:
    """Write ``leaderboard/README.md`` when it differs from :func:`render_readme` (with
    ``check``, write nothing). Returns (exit code, one line saying what happened): 1 when
    ``check`` finds the file out of date, else 0."""
    text = render_readme()
    current = README.read_text(encoding="utf-8") if README.exists() else None
    if current == text:
        return 0, f"{README} is up to date"
    if check:
        return 1, f"{README} is out of date; run: {COMMAND}"
    from xrbench.utils import atomic_write_text

    atomic_write_text(README, text)
    return 0, f"wrote {README}"


if __name__ == "__main__":  # pragma: no cover - the maintainers' command line
    _parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    _parser.add_argument("--check", action="store_true",
                         help="do not write; exit 1 if the file is out of date")
    _code, _line = refresh(_parser.parse_args().check)
    print(_line, file=sys.stderr if _code else sys.stdout)
    sys.exit(_code)
