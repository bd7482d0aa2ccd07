"""Interrupted and concurrent runs, through the real command line: SIGKILL during training,
SIGINT during the manipulation, and two runs of one key at once all end with the entry an
uninterrupted run writes, and no cache file is ever read half-written (atomic renames) or
computed twice at once (file locks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ARGS = ["evaluate", "--defense", "normal", "--profile", "smoke", "--device", "cpu", "--quiet"]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "XRBENCH_CACHE": str(cache), "XRBENCH_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _start(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xrbench.cli", *ARGS, "--out", str(out),
                             *extra], env=_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hits = [p for p in root.rglob(pattern) if not p.name.startswith(".")]
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {pattern} appeared: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"{pattern} never appeared under {root}")


def _entry(out: Path) -> dict:
    (path,) = out.rglob("normal-s0.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two uninterrupted runs of one key started at the same moment, sharing one cache."""
    root = tmp_path_factory.mktemp("concurrent")
    cache = root / "cache"
    procs = [_start(cache, root / f"out{i}", "--epochs", "3") for i in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    return root, cache, [_entry(root / f"out{i}") for i in (1, 2)]


def test_two_runs_of_one_key_at_once(reference):
    root, cache, (a, b) = reference
    assert a["metrics"] == b["metrics"] and a["flags"] == b["flags"]
    # the lock made one of them train and the other wait and reuse the checkpoint
    assert sorted(e["checkpoint"]["origin"] for e in (a, b)) == ["cache", "trained"]
    assert len(list((cache / "checkpoints").rglob("normal-*.pt"))) == 1
    # no temporary or partial files left behind, one output per stage
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob("*.partial.pt"))
    stages = [p.name.rsplit("-", 1)[0] for p in (cache / "stages").glob("*.pt")]
    for name in ("accuracy", "rps", "insertion", "adv_insertion", "retrieval", "landscape",
                 "manipulation", "manipulation-chunk"):
        assert stages.count(name) == 1, stages


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("phase, marker", [
    ("training", "*.partial.pt"),          # an epoch finished, training goes on
    ("retrieval", "adv_insertion-*.pt"),    # the stage before retrieval is done
    ("manipulation", "landscape-*.pt"),     # the stage before the manipulation is done
], ids=["training", "stage", "manipulation"])
def test_interrupt_then_rerun_gives_the_same_entry(reference, tmp_path, sig, phase, marker):
    _, _, (want, _) = reference
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _start(cache, out, "--epochs", "3")
    _wait_for(marker, cache, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip(f"the run finished before the signal arrived during {phase}")
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not list(out.rglob("*.json"))  # nothing half-written
    again = _start(cache, out, "--epochs", "3")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    got = _entry(out)
    assert got["metrics"] == want["metrics"] and got["flags"] == want["flags"]
    assert got["checkpoint"]["sha256"] == want["checkpoint"]["sha256"]  # resumed exactly
    assert not list(cache.rglob("*.tmp"))
