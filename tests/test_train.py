"""Trainer and checkpoint cache: reuse, sha256 checks, NaN handling, resume, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xrbench.checkpoints import load_weights, partial_path
from xrbench.errors import XRBenchError
from xrbench.models import create_model
from xrbench.registry import defenses
from xrbench.train import NonFiniteLoss, get_trained_model

SHORT = {"epochs": "2"}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_second_run_reuses_the_checkpoint(digits, cache):
    first = get_trained_model(digits, "convnet", "normal", overrides=SHORT, progress=False,
                              cache_root=cache)
    assert not first.reused and first.path.is_file() and first.meta["test_acc"] > 80
    second = get_trained_model(digits, "convnet", "normal", overrides=SHORT, progress=False,
                               cache_root=cache)
    assert second.reused and second.sha256 == first.sha256
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_training_is_deterministic_on_cpu(digits, cache, tmp_path):
    a = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=cache)
    b = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=tmp_path / "other")
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("threads", [1, 2])
def test_training_on_several_threads_says_the_weights_depend_on_it(digits, cache, caplog,
                                                                   threads):
    """Issue 23 item 1: a fresh `evaluate --defense sep_neg` on 2 threads gave other weights
    than the published one-thread checkpoint (which one thread reproduces bit for bit, under
    torch 2.14.1 as under 2.15.0), and said nothing."""
    import logging

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with caplog.at_level(logging.INFO, logger="xrbench.train"):
            get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                              progress=False, cache_root=cache)
    finally:
        torch.set_num_threads(before)
    said = [r.getMessage() for r in caplog.records if "CPU threads" in r.getMessage()]
    assert said == ([] if threads == 1 else [
        "training on 2 CPU threads: CPU training gives the same weights only at the same "
        "thread count, and xrbench's published checkpoints were trained with one "
        "(OMP_NUM_THREADS=1 reproduces them)"])


def test_overridden_recipe_gets_its_own_checkpoint(digits, cache):
    a = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=cache)
    b = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1", "lr": "5e-4"},
                          progress=False, cache_root=cache)
    assert a.path != b.path and a.meta["recipe_hash"] != b.meta["recipe_hash"]


def test_corrupted_checkpoint_is_refused(digits, cache):
    t = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=cache)
    data = bytearray(t.path.read_bytes())
    data[-10] ^= 0xFF
    t.path.write_bytes(bytes(data))
    with pytest.raises(XRBenchError, match="corrupt or was changed"):
        get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=cache)


def test_load_weights_checks_given_sha(digits, cache):
    t = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                          progress=False, cache_root=cache)
    model = create_model("convnet", digits.card)
    assert load_weights(model, t.path, t.sha256) == t.sha256
    with pytest.raises(XRBenchError, match="sha256"):
        load_weights(model, t.path, "0" * 64)
    with pytest.raises(XRBenchError, match="does not fit"):
        load_weights(create_model("lenet", digits.card), t.path)


class _Exploding(defenses.get("normal")):
    """NaN from the second epoch on."""

    def loss(self, model, x, y):
        loss = F.cross_entropy(model(x), y)
        return loss * float("nan") if self.state.epoch >= 1 else loss


def test_nan_loss_stops_and_keeps_last_good_epoch(digits, cache, monkeypatch):
    entry = defenses._entries["normal"]
    monkeypatch.setitem(defenses._entries, "normal",
                        type(entry)(entry.name, _Exploding, entry.description))
    with pytest.raises(NonFiniteLoss, match="epoch 2.*last good epoch is kept"):
        get_trained_model(digits, "convnet", "normal", overrides={"epochs": "3"},
                          progress=False, cache_root=cache)
    model = create_model("convnet", digits.card)
    from xrbench.checkpoints import CheckpointKey  # noqa: F401

    partial = next(cache.rglob("*.partial.pt"))
    payload = torch.load(partial, weights_only=True)
    assert payload["epoch"] == 1
    model.load_state_dict(payload["model"])  # the kept state is a usable model


def test_resume_from_partial_equals_uninterrupted(digits, cache, tmp_path):
    full = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "2"},
                             progress=False, cache_root=tmp_path / "full")
    # simulate an interrupt after epoch 1: train 2 epochs, then remove the final file and
    # rebuild the partial by training only one epoch in a run that is killed afterwards
    import xrbench.train as tr

    calls = {"n": 0}
    real_fit = tr.fit

    def interrupted_fit(*args, **kwargs):
        cb = kwargs["on_epoch_end"]

        def once(epoch, opt, record):
            cb(epoch, opt, record)
            calls["n"] += 1
            raise KeyboardInterrupt

        kwargs["on_epoch_end"] = once
        return real_fit(*args, **kwargs)

    tr.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            get_trained_model(digits, "convnet", "normal", overrides={"epochs": "2"},
                              progress=False, cache_root=cache)
    finally:
        tr.fit = real_fit
    assert calls["n"] == 1 and partial_path(full.path).name.endswith(".partial.pt")
    resumed = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "2"},
                                progress=False, cache_root=cache)
    assert not resumed.reused
    assert resumed.sha256 == full.sha256
    assert not partial_path(resumed.path).exists()


def test_resumed_training_keeps_the_whole_history(digits, tmp_path, monkeypatch):
    """An interrupted run's epochs and seconds count in the checkpoint that a rerun finishes."""
    import xrbench.train as tr

    real_fit = tr.fit
    calls = {"n": 0}

    def stop_after_two_epochs(*args, **kwargs):
        calls["n"] += 1
        hook = kwargs["on_epoch_end"]

        def hook_then_stop(epoch, opt, record):
            hook(epoch, opt, record)
            if calls["n"] == 1 and epoch == 2:
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch_end": hook_then_stop})

    monkeypatch.setattr(tr, "fit", stop_after_two_epochs)
    kw = dict(overrides={"epochs": "4"}, progress=False, cache_root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        get_trained_model(digits, "convnet", "normal", **kw)
    t = get_trained_model(digits, "convnet", "normal", **kw)
    assert [r["epoch"] for r in t.meta["history"]] == [1, 2, 3, 4]
    assert t.meta["train_seconds"] >= sum(r["seconds"] for r in t.meta["history"][:2])
    monkeypatch.setattr(tr, "fit", real_fit)
    fresh = get_trained_model(digits, "convnet", "normal", **{**kw, "cache_root": tmp_path / "b"})
    assert fresh.sha256 == t.sha256  # resuming changed nothing in the weights
