"""Targeted explanation manipulation (PROTOCOL 5.2): attacks/manipulation.py and
metrics/manipulation.py, on the trained digits ConvNet (conftest) and a ReLU twin."""

from __future__ import annotations

import copy

import pytest
import torch

from xrbench.attacks.manipulation import (ManipulationResult, beta_schedule, manipulate,
                                          manipulate_pairs, ordered_pairs)
from xrbench.explainers import expl_loss, get_explainer, sum_map
from xrbench.metrics.manipulation import mean_loss_at, second_half_fall
from xrbench.models import create_model

GXI = get_explainer("grad_x_input")


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """8x8 images in batches of 1-30: intra-op threads only add overhead (and spin when the
    CPU is shared), so this module runs single-threaded and restores the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(digits) -> torch.Tensor:
    """Eight digits test images (8, 1, 8, 8)."""
    return digits.test.get_batch(torch.arange(8))[0]


def test_ordered_pairs_victim_major():
    p = ordered_pairs(4)
    assert p.shape == (12, 2) and p.dtype == torch.long
    assert (p[:, 0] != p[:, 1]).all()
    assert p[:4].tolist() == [[0, 1], [0, 2], [0, 3], [1, 0]]
    assert len({tuple(r) for r in p.tolist()}) == 12
    assert len(ordered_pairs(150)) == 22350


def test_sum_map_and_self_loss(trained_convnet, images):
    x = images[:4]
    a = GXI(trained_convnet, x, trained_convnet(x).argmax(1))
    m = sum_map(a)
    assert m.shape == (4, 8, 8)
    torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(4))
    assert expl_loss(m, m).abs().max().item() == 0.0
    # a pair whose victim is its own target starts at L_e = 0
    res = manipulate(trained_convnet, GXI, x, x, iterations=1, lr=1e-3)
    assert res.expl_start.abs().max().item() == 0.0


def _check_batch_independence(model, images, pairs, rel_tol, **kw):
    full = manipulate_pairs(model, GXI, images, pairs, pair_batch=len(pairs), **kw)
    chunked = manipulate_pairs(model, GXI, images, pairs, pair_batch=3, **kw)
    single = ManipulationResult.cat([
        manipulate(model, GXI, images[v:v + 1], images[t:t + 1], **kw)
        for v, t in pairs.tolist()])
    assert full.expl_end.mean() < full.expl_start.mean()  # the attack did something
    for other in (chunked, single):
        rel = (other.expl_end - full.expl_end).abs() / full.expl_end
        assert rel.max().item() <= rel_tol
        rel_trace = (other.loss_trace - full.loss_trace).abs() / full.loss_trace
        assert rel_trace.max().item() <= max(rel_tol, 1e-6)
    assert torch.equal(full.pairs, pairs) and torch.equal(chunked.pairs, pairs)


def test_batched_equals_one_pair_at_a_time(trained_convnet, images):
    """Float32, small lr: agreement to float32 reduction-order noise (observed ~1e-6)."""
    pairs = ordered_pairs(8)[::5][:10]  # 10 pairs, various victims and targets
    _check_batch_independence(trained_convnet, images, pairs, 1e-4, iterations=30, lr=1e-3)


def test_batched_equals_one_pair_at_a_time_float64(trained_convnet, images):
    """Float64 and a larger lr: exact agreement. (In float32 at this lr Adam can amplify
    reduction-order rounding of the batched convolutions into ~1e-3 differences.)"""
    model = copy.deepcopy(trained_convnet).double()
    pairs = ordered_pairs(8)[1::6][:8]
    _check_batch_independence(model, images.double(), pairs, 1e-12, iterations=20, lr=3e-3)


def test_manipulation_lowers_expl_loss_and_keeps_class(trained_convnet, images):
    pairs = ordered_pairs(6)  # 30 pairs
    grads = [None if p.grad is None else p.grad.clone() for p in trained_convnet.parameters()]
    store = _DictStore()
    res = manipulate_pairs(trained_convnet, GXI, images, pairs, iterations=100, lr=1e-3,
                           pair_batch=16, chunk_store=store)
    assert [(k, len(r)) for k, r in store.saved.items()] == [(0, 16), (1, 14)]
    assert res.x_adv.shape == (30, 1, 8, 8)
    # nearly every pair moves toward its target (the fixture model differs between torch
    # versions; under 2.15 one pair of 30 starts so close to its target that it does not)
    assert (res.expl_end < res.expl_start).float().mean().item() >= 0.9
    assert res.expl_end.mean() < 0.8 * res.expl_start.mean()
    assert res.class_changed.float().mean().item() <= 0.1
    # the objective falls over the trace points 10% -> 50% -> 100%
    mean_trace = res.loss_trace.mean(dim=1)
    assert mean_trace[0] > mean_trace[1] > mean_trace[2]
    # Softplus model: the 100% trace point is evaluated on the model that gives expl_end
    torch.testing.assert_close(res.expl_trace[-1], res.expl_end, rtol=1e-4, atol=0)
    # the expl start values are L_e of the clean maps, recomputed independently
    xv, xt = images[pairs[:, 0]], images[pairs[:, 1]]
    mv = sum_map(GXI(trained_convnet, xv, trained_convnet(xv).argmax(1)))
    mt = sum_map(GXI(trained_convnet, xt, trained_convnet(xt).argmax(1)))
    torch.testing.assert_close(res.expl_start, expl_loss(mv, mt))

    at = mean_loss_at(res.loss_trace, res.trace_points)
    assert at["at_10"] > at["at_50"] > at["at_100"]
    assert at["at_100"] == pytest.approx(res.loss_trace[-1].double().mean().item())
    # params never receive gradients (the fixture's leftover training grads stay as they are)
    assert all(_same(g, p.grad) for g, p in zip(grads, trained_convnet.parameters()))


def test_eps_budget_and_pixel_range(trained_convnet, images):
    pairs = ordered_pairs(3)
    eps = 0.02
    res = manipulate_pairs(trained_convnet, GXI, images, pairs, iterations=20, lr=1e-2, eps=eps)
    free = manipulate_pairs(trained_convnet, GXI, images, pairs, iterations=20, lr=1e-2)
    xv = images[pairs[:, 0]]
    assert (res.x_adv - xv).abs().max().item() <= eps + 1e-6
    assert (free.x_adv - xv).abs().max().item() > eps  # the budget binds
    for r in (res, free):
        assert r.x_adv.min().item() >= 0.0 and r.x_adv.max().item() <= 1.0
    assert res.params["eps"] == eps and free.params["eps"] is None


def test_second_half_fall_and_loss_keys():
    lt = torch.tensor([10.0, 5.0, 4.0]).view(3, 1).expand(3, 4)
    assert second_half_fall(lt, (0.1, 0.5, 1.0)) == pytest.approx(0.2)  # 20% over 2nd half
    assert second_half_fall(lt * 0, (0.1, 0.5, 1.0)) == 0.0
    assert mean_loss_at(lt, (0.1, 0.5, 1.0)) == {"at_10": 10.0, "at_50": 5.0, "at_100": 4.0}
    with pytest.raises(ValueError, match="0.5 and 1.0"):
        second_half_fall(lt, (0.1, 0.4, 1.0))


class _DictStore:
    """A ChunkStore in a dict; counts what it was asked for."""

    def __init__(self):
        self.saved, self.asked = {}, []

    def load(self, chunk, pairs):
        self.asked.append(chunk)
        return self.saved.get(chunk)

    def save(self, chunk, result):
        self.saved[chunk] = ManipulationResult.from_per_pair(result.per_pair())


def test_chunk_store_resumes_without_recomputing(trained_convnet, images, monkeypatch):
    import xrbench.attacks.manipulation as manip

    pairs = ordered_pairs(4)  # 12 pairs, 3 chunks of 5, 5, 2
    store = _DictStore()
    first = manipulate_pairs(trained_convnet, GXI, images, pairs, iterations=5, lr=1e-3,
                             pair_batch=5, chunk_store=store, keep_x_adv=False)
    assert first.x_adv is None and sorted(store.saved) == [0, 1, 2]
    del store.saved[1]  # as if interrupted in the middle chunk
    calls = []
    real = manip.manipulate
    monkeypatch.setattr(manip, "manipulate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    again = manipulate_pairs(trained_convnet, GXI, images, pairs, iterations=5, lr=1e-3,
                             pair_batch=5, chunk_store=store)
    assert len(calls) == 1  # only the missing chunk ran
    for f in ("expl_start", "expl_end", "loss_trace", "pairs"):
        assert torch.equal(getattr(first, f), getattr(again, f))


def test_beta_schedule_geometric():
    assert beta_schedule(0, 100) == pytest.approx(10.0)
    assert beta_schedule(50, 100) == pytest.approx(10.0 * 10 ** 0.5)
    assert beta_schedule(100, 100) == pytest.approx(100.0)
    b = [beta_schedule(i, 20) for i in range(20)]
    assert all(x < y for x, y in zip(b, b[1:])) and b[-1] < 100.0


def test_relu_model_uses_softplus_surrogate(digits, images):
    torch.manual_seed(0)
    model = create_model("convnet", digits.card, activation="relu").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_relu = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    res = manipulate_pairs(model, GXI, images, ordered_pairs(3), iterations=10, lr=1e-2)
    assert res.params["relu_surrogate"] is True
    assert res.params["relu_beta_growth"] == "geometric"
    for t in (res.expl_start, res.expl_end, res.loss_trace, res.x_adv):
        assert torch.isfinite(t).all()
    assert (res.x_adv != images[ordered_pairs(3)[:, 0]]).any()  # second derivatives exist
    # the original model is untouched: weights, BN statistics, mode, activations, grads
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == n_relu
    assert not any(isinstance(m, torch.nn.Softplus) for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
