"""pytest configuration of the benchmarks: one torch thread, a temporary cache unless
XRBENCH_CACHE is set, the session fixture ``ratios`` (a :class:`benchutil.RatioBoard`) and
the table of every registered ratio in the terminal summary (benchutil's docstring says how
a benchmark registers one)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
import torch

from benchutil import SHORT, RatioBoard

_BOARD = pytest.StashKey[RatioBoard]()
_TMP_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BOARD] = RatioBoard()
    torch.set_num_threads(1)  # ratios of single-thread work: comparable across machines
    os.environ.setdefault("XRBENCH_OFFLINE", "1")
    if "XRBENCH_CACHE" not in os.environ:  # never write into the user's cache
        config.stash[_TMP_CACHE] = tempfile.mkdtemp(prefix="xrbench-bench-cache-")
        os.environ["XRBENCH_CACHE"] = config.stash[_TMP_CACHE]


def pytest_unconfigure(config: pytest.Config) -> None:
    tmp = config.stash.get(_TMP_CACHE, None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.pop("XRBENCH_CACHE", None)


@pytest.fixture(scope="session")
def ratios(request: pytest.FixtureRequest) -> RatioBoard:
    """The session's :class:`RatioBoard` (printed at the end of the run)."""
    return request.config.stash[_BOARD]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    board = config.stash.get(_BOARD, None)
    if board is None or not board.ratios:
        return
    mode = "short mode (XRBENCH_BENCH_SHORT=1)" if SHORT else "full mode"
    terminalreporter.write_sep("-", f"benchmark ratios, {mode}, {torch.get_num_threads()} "
                                    f"torch thread(s)")
    for line in board.table():
        terminalreporter.write_line(line)
