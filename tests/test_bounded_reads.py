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


def test_a_read_only_or_full_cache_serves_reads_and_warns(tmp_path: Path, monkeypatch,
                                                           caplog) -> None:
    """Issue 21 case 9: a read-only cache still serves what it holds (no lock file can be
    made: the run goes on without one), and a full disk costs the caching, not the run."""
    import errno

    import torch

    from xrbench import utils
    from xrbench.engine.runtime import StageCache

    cache = StageCache(tmp_path)
    cache.save("rps", {"k": 1}, {"x": torch.arange(3)})

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", erofs)
    with utils.file_lock(tmp_path / "locks" / "new.lock"):  # no lock, no error
        assert torch.equal(cache.load("rps", {"k": 1})["x"], torch.arange(3))
    monkeypatch.undo()

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("xrbench.engine.runtime.atomic_write_bytes", enospc)
    with caplog.at_level(logging.WARNING):
        cache.save("rps", {"k": 2}, {"x": torch.arange(2)})
    assert any("could not cache the rps stage's output" in r.getMessage()
               for r in caplog.records)
    assert cache.load("rps", {"k": 2}) is None


def test_a_cache_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    afile = tmp_path / "cache"
    afile.write_text("not a folder")
    res = subprocess.run([sys.executable, "-m", "xrbench.cli", "evaluate", "--profile", "smoke"],
                         env={**os.environ, "XRBENCH_CACHE": str(afile)}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "XRBENCH_CACHE" in res.stderr and "is a file" in res.stderr
    assert afile.read_text() == "not a folder"
