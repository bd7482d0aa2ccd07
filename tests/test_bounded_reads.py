"""Reads with bounds (issue 21 case 8): a deeply nested JSON file is one error, skipped with a
warning by the leaderboard like any other bad file, never a RecursionError."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from test_leaderboard import make_entry
from xrbench import api
from xrbench.errors import XRBenchError
from xrbench.leaderboard.board import load_board
from xrbench.leaderboard.schema import entry_path, write_entry
from xrbench.utils import read_json


def test_deeply_nested_json_is_one_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    with pytest.raises(XRBenchError, match="nests its JSON too deeply"):
        read_json(deep)


def test_the_leaderboard_skips_it_with_a_warning(tmp_path: Path, caplog) -> None:
    e = make_entry("mat")
    write_entry(entry_path(tmp_path, e), e)
    (tmp_path / "digits" / "bad-s0.json").write_text("[" * 200_000)
    board = load_board([tmp_path])
    assert len(board.tables) == 1 and len(board.skipped) == 1
    assert "too deeply" in board.skipped[0].reason
    with caplog.at_level(logging.WARNING):  # what `xrbench leaderboard` prints
        api.leaderboard(tmp_path)
    assert any("too deeply" in r.getMessage() for r in caplog.records)


def test_markdown_never_renders_a_name_as_a_link_or_image() -> None:
    """Issue 21 case 13: a defense named like a markdown link or image stays text."""
    from xrbench.leaderboard.board import build_board
    from xrbench.leaderboard.render import render_markdown

    rows = [make_entry("[x](javascript:alert(1))"), make_entry("![](http://example.com/a.png)")]
    md = render_markdown(build_board(rows))
    assert "[x](javascript" not in md and "![](http" not in md
    assert "\\[x\\](javascript:alert(1))" in md and "!\\[\\](http://example.com/a.png)" in md
