"""Training speed-ups: the trainer's parameter-only backward (on by default: bitwise the same
weights) and :mod:`xrbench.fastgrad` (opt-in: the same gradients up to float32 rounding)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xrbench.fastgrad as fastgrad
from xrbench.data import DatasetCard, TensorSplit
from xrbench.defenses.base import TrainState
from xrbench.inference import DoubleBackwardSoftplus
from xrbench.models import create_model
from xrbench.registry import defenses
from xrbench.train import build_recipe, fit, get_trained_model
from xrbench.utils import generator

DOUBLE_BACKWARD = ["hessian", "l2_cosd", "sep_pos", "sep_neg"]
ALL = ["normal", "mat", "trades", *DOUBLE_BACKWARD]
SEP_ON = {"reg_warmup_fraction": "0", "reg_ramp_fraction": "0"}
# a CIFAR-like card at 8 x 8 pixels: LeNet (no BatchNorm, conv biases) at test speed
RGB8 = DatasetCard("rgb8", 3, 8, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _overrides(name: str) -> dict[str, str]:
    return dict(SEP_ON, lambda_="100") if name.startswith("sep") else {}


def _defense(name: str, card: DatasetCard, model_name: str):
    recipe = build_recipe(name, card, model_name, _overrides(name))
    state = TrainState(card, model_name, generator(1), torch.device("cpu"))
    state.epoch = 1.0
    return defenses.get(name)(recipe, state)


def _batch(card: DatasetCard, n: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, card.channels, card.size, card.size, generator=g),
            torch.randint(0, card.num_classes, (n,), generator=g))


def _reg_grads(name: str, card: DatasetCard, model_name: str, fast: bool, monkeypatch):
    """(regulariser value, its gradient w.r.t. every parameter) on a fixed batch."""
    monkeypatch.setenv(fastgrad.ENV_VAR, "1" if fast else "0")
    torch.manual_seed(0)
    model = create_model(model_name, card).train()
    x, y = _batch(card, 12)
    reg = _defense(name, card, model_name).regulariser(model, x, y)
    reg = sum(reg) if isinstance(reg, tuple) else reg
    params = list(model.parameters())
    grads = torch.autograd.grad(reg, params, allow_unused=True)
    return reg.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("name", ["hessian", "l2_cosd", "sep_pos"])
@pytest.mark.parametrize("model_name", ["lenet", "convnet"])
def test_regulariser_gradients_match_the_default_path(name, model_name, digits, monkeypatch):
    """Parity: with and without the fast double backward, the regulariser and its parameter
    gradient agree to float32 rounding (measured: relative differences <= 4e-6)."""
    card = RGB8 if model_name == "lenet" else digits.card
    r0, g0 = _reg_grads(name, card, model_name, False, monkeypatch)
    r1, g1 = _reg_grads(name, card, model_name, True, monkeypatch)
    assert torch.allclose(r0, r1, rtol=1e-5, atol=0)
    total = torch.cat([g.flatten() for g in g0]).norm()
    assert total > 0
    for a, b in zip(g0, g1):
        assert torch.linalg.vector_norm(a - b) <= 1e-4 * total


def _native_and_fast(build):
    torch.manual_seed(0)
    native = build().double()
    fast = build().double()
    fast.load_state_dict(native.state_dict())
    return native, fast


@pytest.mark.parametrize("conv", [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=2, kernel_size=2, stride=2, groups=2),
    dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=2),
])
def test_conv_and_softplus_third_derivatives_equal_pytorchs(conv):
    """float64, a conv-Softplus-conv net on a 7 x 7 input (odd: strided convolutions leave
    rows out): the parameter gradient of ||H v||^2 (a third derivative) agrees with PyTorch's
    own double backward to 1e-10, and gradgradcheck passes on the convolution alone."""
    def build():
        c2 = dict(conv, in_channels=conv["out_channels"], stride=1, groups=1)
        return nn.Sequential(nn.Conv2d(**conv), nn.Softplus(beta=3), nn.Conv2d(**c2))

    native, fast = _native_and_fast(build)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, conv["in_channels"], 7, 7, generator=g, dtype=torch.float64)
    v = torch.randn(z0.shape, generator=g, dtype=torch.float64)

    def third(model):
        z = z0.clone().requires_grad_(True)
        (gz,) = torch.autograd.grad(model(z).pow(2).sum(), z, create_graph=True)
        (hv,) = torch.autograd.grad((gz * v).sum(), z, create_graph=True)
        return torch.autograd.grad(hv.pow(2).sum(), list(model.parameters()))

    with fastgrad.fast_double_backward(fast, on=True):
        assert isinstance(fast[0], fastgrad.TrainableDoubleBackwardConv2d)
        assert isinstance(fast[1], DoubleBackwardSoftplus)
        got = third(fast)
        conv_fn = fast[0]
        x = z0.clone().requires_grad_(True)
        assert torch.autograd.gradgradcheck(lambda t: conv_fn(t).sin(), (x,))
    for a, b in zip(third(native), got):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert type(fast[0]) is nn.Conv2d and type(fast[1]) is nn.Softplus  # restored


def test_input_gradient_passes_compute_no_weight_gradient(monkeypatch):
    """A convolution's backward asks the engine: ``torch.autograd.grad(..., z)`` computes no
    weight gradient; the parameters' backward computes each needed one once per node."""
    wanted = []
    real = fastgrad._weight_grad

    def spy(grad_out, x, weight, geometry, want_w, want_b):
        wanted.append((want_w, want_b))
        return real(grad_out, x, weight, geometry, want_w, want_b)

    monkeypatch.setattr(fastgrad, "_weight_grad", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Softplus(), nn.Conv2d(2, 1, 3))
    z = torch.randn(2, 1, 6, 6, requires_grad=True)
    with fastgrad.fast_double_backward(model, on=True):
        (g,) = torch.autograd.grad(model(z).sum(), z, create_graph=True)
    assert wanted == [(False, False), (False, False)]
    wanted.clear()
    params = list(model.parameters())
    grads = torch.autograd.grad(g.pow(2).sum(), params, allow_unused=True)
    # the input-gradient ops of both convolutions (weight) and the first convolution (weight,
    # bias); g does not depend on the second convolution's forward pass or bias
    assert sorted(wanted) == [(True, False), (True, False), (True, True)]
    assert [gr is None for gr in grads] == [False, False, False, True]


def test_swap_is_restored_after_an_error_and_off_by_default(monkeypatch):
    model = create_model("lenet", RGB8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.delenv(fastgrad.ENV_VAR, raising=False)
    assert not fastgrad.enabled()
    with fastgrad.fast_double_backward(model):
        assert {type(m) for m in model.modules()} >= {nn.Conv2d, nn.Softplus}
    monkeypatch.setenv(fastgrad.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="boom"):
        with fastgrad.fast_double_backward(model):
            assert type(model.net.features[0]) is fastgrad.TrainableDoubleBackwardConv2d
            assert list(model.state_dict()) == list(before)
            raise RuntimeError("boom")
    assert type(model.net.features[0]) is nn.Conv2d and type(model.net.act) is nn.Softplus
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _train(name: str, card: DatasetCard, model_name: str, split: TensorSplit,
           reference: bool) -> dict[str, torch.Tensor]:
    """Weights after 2 epochs of 3 steps: ``fit`` (reference=False), or today's loop
    (``loss.backward()``, no fastgrad at all; reference=True)."""
    torch.manual_seed(0)
    model = create_model(model_name, card)
    defense = defenses.get(name)(build_recipe(name, card, model_name, _overrides(name)),
                                 TrainState(card, model_name, generator(1), torch.device("cpu")))
    if not reference:
        fit(model, defense, split, epochs=2, batch_size=8, lr=1e-3,
            data_generator=generator(0), device=torch.device("cpu"), progress=False)
        return model.state_dict()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = generator(0)
    for epoch in range(2):
        perm = torch.randperm(len(split), generator=data)
        model.train()
        for step in range(3):
            x, y = split.get_batch(perm[step * 8:(step + 1) * 8])
            defense.state.epoch = epoch + step / 3
            loss = defense.loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.state_dict()


def _split(card: DatasetCard) -> TensorSplit:
    x, y = _batch(card, 24, seed=5)
    return TensorSplit(x, y)


@pytest.mark.parametrize("name", ALL)
def test_default_training_is_bitwise_todays(name, digits, monkeypatch):
    """Without the environment variable, ``fit`` (parameter-only backward) trains bitwise the
    same weights as ``loss.backward()`` with every fastgrad block a no-op, for every built-in
    defense, on the digits ConvNet (BatchNorm) and on LeNet (conv biases)."""
    monkeypatch.delenv(fastgrad.ENV_VAR, raising=False)
    for card, model_name in [(digits.card, "convnet"), (RGB8, "lenet")]:
        split = _split(card)
        got = _train(name, card, model_name, split, reference=False)
        with monkeypatch.context() as m:
            m.setattr(fastgrad, "fast_double_backward",
                      lambda model, on=None: contextlib.nullcontext(model))
            want = _train(name, card, model_name, split, reference=True)
        for key, value in want.items():
            assert torch.equal(got[key], value), (model_name, key)


@pytest.mark.parametrize("name", ["hessian", "l2_cosd", "sep_pos"])
def test_fast_training_is_deterministic_and_close(name, monkeypatch):
    """With the environment variable: deterministic (two runs bitwise equal), and after 6
    Adam steps (lr 1e-3) each weight within a fifth of one step of the default path's:
    float32 drift (measured: at most 5e-5), not a different gradient."""
    split = _split(RGB8)
    monkeypatch.setenv(fastgrad.ENV_VAR, "1")
    a = _train(name, RGB8, "lenet", split, reference=False)
    b = _train(name, RGB8, "lenet", split, reference=False)
    monkeypatch.setenv(fastgrad.ENV_VAR, "0")
    ref = _train(name, RGB8, "lenet", split, reference=False)
    for key in ref:
        assert torch.equal(a[key], b[key])
        assert (a[key] - ref[key]).abs().max() <= 2e-4, key


def test_checkpoint_records_the_fast_path(digits, tmp_path, monkeypatch):
    """The sidecar says when the fast double backward trained a checkpoint; the default
    path's metadata is unchanged (no new key)."""
    monkeypatch.delenv(fastgrad.ENV_VAR, raising=False)
    off = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                            progress=False, cache_root=tmp_path / "off")
    assert "fast_double_backward" not in off.meta
    monkeypatch.setenv(fastgrad.ENV_VAR, "1")
    on = get_trained_model(digits, "convnet", "normal", overrides={"epochs": "1"},
                           progress=False, cache_root=tmp_path / "on")
    assert on.meta["fast_double_backward"] is True
    assert on.sha256 == off.sha256  # normal has no double backward: same weights


def test_fast_and_default_checkpoints_never_share_a_cache_entry(digits, tmp_path,
                                                                monkeypatch):
    """One cache: a checkpoint trained on the fast path is not reused by a default run (nor
    the other way round), and an entry scored on it is not marked as the reference recipe."""
    from xrbench import api

    common = dict(overrides={"epochs": "1"}, progress=False, cache_root=tmp_path / "c")
    monkeypatch.setenv(fastgrad.ENV_VAR, "1")
    on = get_trained_model(digits, "convnet", "hessian", **common)
    monkeypatch.delenv(fastgrad.ENV_VAR)
    off = get_trained_model(digits, "convnet", "hessian", **common)
    assert not off.reused and off.path != on.path
    assert "fast_double_backward" not in off.meta
    monkeypatch.setenv(fastgrad.ENV_VAR, "1")
    again = get_trained_model(digits, "convnet", "normal", **common)
    assert not again.reused  # normal's default checkpoint was never made in this cache
    _, info, _, _ = api._checkpoint(digits, "convnet", "normal", checkpoint=None,
                                    checkpoint_sha256=None, overrides=None, seed=0,
                                    device=torch.device("cpu"), retrain=False, progress=False,
                                    beta=again.meta["model"]["beta"],
                                    cache_root=tmp_path / "c2")
    assert info["reference"] is False and "FAST_DOUBLE_BACKWARD" in info["reference_note"]


def test_backward_to_parameters_matches_backward_and_layout():
    """Values and strides as ``loss.backward()`` leaves them; unreached parameters None."""
    from xrbench.train import backward_to_parameters

    torch.manual_seed(0)
    lin, unused = nn.Linear(4, 3), nn.Linear(2, 2)
    x = torch.randn(5, 4, requires_grad=True)
    params = [*lin.parameters(), *unused.parameters()]
    F.softplus(lin(x)).pow(2).sum().backward()
    want = [p.grad for p in params]
    for p in params:
        p.grad = None
    x.grad = None
    backward_to_parameters(F.softplus(lin(x)).pow(2).sum(), params)
    assert x.grad is None
    for p, w in zip(params, want):
        assert (p.grad is None) == (w is None)
        if w is not None:
            assert torch.equal(p.grad, w) and p.grad.stride() == w.stride()
