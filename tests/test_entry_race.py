"""Two runs writing one entry path at the same time (issue 21 case 2): the results folder's
own exclusive create decides, so in no round do both report "written" and never is the first
entry silently replaced; the surviving entry's per-example file is its own."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from test_leaderboard import make_entry
from xrbench.errors import XRBenchError
from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.schema import read_entry, write_entry

ROUNDS = 12


def _writer(path: str, value: float, start, out) -> None:
    entry = make_entry("mat", expl_end=value)
    examples = {"manipulation/expl_end": np.full(4, value)}
    start.wait()
    try:
        done = write_entry(Path(path), entry, examples=examples)
        out.put(("written" if done.written else "same", value))
    except XRBenchError as exc:
        out.put(("refused", str(exc)))


def test_two_runs_one_path_never_lose_an_entry(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    both_written = 0
    for r in range(ROUNDS):
        path = tmp_path / f"round{r}" / "mat-s0.json"
        start, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(str(path), v, start, out))
                 for v in (1e-5 * (r + 1), 2e-5 * (r + 1))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = [out.get(timeout=10) for _ in procs]
        kinds = sorted(k for k, _ in got)
        both_written += kinds == ["written", "written"]
        assert kinds == ["refused", "written"], got
        refused = next(msg for k, msg in got if k == "refused")
        assert "already holds a different result entry" in refused
        winner = next(v for k, v in got if k == "written")
        entry = read_entry(path)
        assert entry["metrics"]["expl_end"]["value"] == winner
        arrays = read_examples(path, entry)  # sha256-checked: the winner's own file
        assert np.all(arrays["manipulation/expl_end"] == winner)
    assert both_written == 0
