"""leaderboard/runs/table15.py's carry: a quick score of one Fashion-MNIST defense is about
6 hours on one CPU thread, longer than a session, so its finished stage outputs are kept in a
committed folder and put back into a new machine's cache (issue 19: "let a run that stops
resume from what is committed")."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from xrbench.engine.runtime import StageCache

SCRIPT = Path(__file__).parents[1] / "leaderboard" / "runs" / "table15.py"


def _table15():
    spec = importlib.util.spec_from_file_location("table15_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_carried_stage_outputs_are_reused_by_a_new_cache(tmp_path) -> None:
    t15 = _table15()
    key = {"checkpoint": "ab" * 32, "stage": "manipulation-chunk", "chunk": 3}
    old = StageCache(tmp_path / "machine1")
    old.save("manipulation-chunk", key, {"expl_end": torch.arange(4.0)})
    earlier = StageCache(tmp_path / "machine1")
    earlier.save("accuracy", {"x": 1}, {"clean": torch.ones(2)})
    stamp = time.time() + 5  # a file written before a run started is not that run's
    for f in (tmp_path / "machine1" / "stages").glob("accuracy-*.pt"):
        os.utime(f, (stamp - 100, stamp - 100))
    carry = tmp_path / "carry" / "mat"
    for f in (tmp_path / "machine1" / "stages").glob("manipulation-chunk-*.pt"):
        os.utime(f, (stamp, stamp))
    assert t15.save_carry(tmp_path / "machine1", carry, since=stamp - 1) == 1
    assert t15.save_carry(tmp_path / "machine1", carry, since=stamp - 1) == 0  # kept once
    assert [f.name.split("-")[0] for f in carry.glob("*.pt")] == ["manipulation"]
    assert not list(carry.glob(".*"))  # no partial copies left behind

    # another machine: an empty cache gets the carried output back, and reads it as its own
    assert t15.restore_carry(carry, tmp_path / "machine2") == 1
    assert t15.restore_carry(carry, tmp_path / "machine2") == 0
    back = StageCache(tmp_path / "machine2").load("manipulation-chunk", key)
    assert back is not None and torch.equal(back["expl_end"], torch.arange(4.0))
    assert StageCache(tmp_path / "machine2").load("accuracy", {"x": 1}) is None

    # a carried file whose bytes do not match its name is not used (the cache's own check)
    (f,) = carry.glob("*.pt")
    f.write_bytes(f.read_bytes()[:-8] + b"corrupt!")
    (tmp_path / "machine3").mkdir()
    assert t15.restore_carry(carry, tmp_path / "machine3") == 1
    assert StageCache(tmp_path / "machine3").load("manipulation-chunk", key) is None


def test_the_keeper_copies_while_a_run_lasts_and_once_more_at_its_end(tmp_path) -> None:
    t15 = _table15()
    cache, carry = tmp_path / "cache", tmp_path / "carry"
    with t15.CarryKeeper(cache, carry, period=0.05):
        StageCache(cache).save("ensemble-chunk", {"c": 0}, {"v": torch.zeros(1)})
        deadline = time.time() + 10
        while not list(carry.glob("*.pt")) and time.time() < deadline:
            time.sleep(0.05)
        assert len(list(carry.glob("*.pt"))) == 1  # copied while the run goes on
        StageCache(cache).save("ensemble-chunk", {"c": 1}, {"v": torch.ones(1)})
    assert len(list(carry.glob("*.pt"))) == 2  # and what came last, at the end


def test_the_training_state_is_carried_and_resumes_where_the_cache_looks(tmp_path) -> None:
    """A 25-epoch SEP model (about 14 hours on one CPU thread) trains over several sessions:
    the state after each finished epoch goes to the carry folder, and comes back to the
    path the trainer resumes from (xrbench.train: the checkpoint's ``.partial.pt``)."""
    from xrbench.checkpoints import partial_path
    from xrbench.data import dataset_card
    from xrbench.train import checkpoint_key

    t15 = _table15()
    cache, carry = tmp_path / "cache", tmp_path / "carry" / "sep_neg"
    partial = t15.training_partial("sep_neg", None, cache)
    key, _ = checkpoint_key(dataset_card("fashion_mnist"), "convnet", "sep_neg",
                            {"explainer": "guided_backprop"}, 0)
    assert partial == partial_path(key.path(cache))  # where the trainer looks
    assert t15.save_partial_carry(partial, carry) is False  # no epoch finished yet
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"epoch 3")
    with t15.CarryKeeper(cache, carry, period=60.0, partial=partial):
        pass  # the keeper's last copy, at the end of the run
    assert (carry / t15.PARTIAL).read_bytes() == b"epoch 3"
    assert t15.save_partial_carry(partial, carry) is False  # unchanged: not copied again
    partial.write_bytes(b"epoch 4")
    later = (carry / t15.PARTIAL).stat().st_mtime + 10
    os.utime(partial, (later, later))
    assert t15.save_partial_carry(partial, carry) is True
    assert (carry / t15.PARTIAL).read_bytes() == b"epoch 4"
