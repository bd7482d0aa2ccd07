"""leaderboard/README.md is the published leaderboard as `xrbench leaderboard` renders it now:
regenerated here from the shipped entries and compared with the file."""

from __future__ import annotations

import difflib

from xrbench.leaderboard.readme import COMMAND, README, render_readme


def test_leaderboard_readme_is_up_to_date() -> None:
    want = render_readme()
    have = README.read_text(encoding="utf-8") if README.exists() else ""
    if have != want:
        diff = "".join(list(difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), "leaderboard/README.md (file)",
            "leaderboard/README.md (rendered now)", n=1))[:40])
        raise AssertionError(f"leaderboard/README.md is out of date (the published entries or "
                             f"the rendering changed); refresh it with `{COMMAND}` from the "
                             f"repository root and commit it. First differences:\n{diff}")
    assert want.splitlines()[1].strip() == COMMAND  # the command that made it, at the top
    assert "Correlation with PGD accuracy (measured rows)" in want
