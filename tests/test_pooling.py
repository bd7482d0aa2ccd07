"""xrbench.pooling.MaxPool2d: the channels-last kernel gives nn.MaxPool2d's bits, values,
first and second derivatives, ties included, so trained weights and attack results do not
change."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrbench.data import dataset_card
from xrbench.inference import frozen_inference_copy
from xrbench.models import create_model
from xrbench.pooling import MaxPool2d, use_channels_last_pooling

SHAPES = [(4, 8, 28, 28), (4, 8, 7, 7), (3, 5, 9, 6)]
POOLS = [dict(kernel_size=2, ceil_mode=True), dict(kernel_size=2),
         dict(kernel_size=3, stride=2, padding=1)]


def _inputs(shape: tuple[int, ...], ties: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64 if shape[0] == 3 else torch.float32)
    # rounded and clamped: many windows hold several equal maxima (zeros of a background)
    return (x * 2).round().clamp(min=0) if ties else x


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", POOLS)
def test_values_and_gradients_of_every_order_are_the_same_bits(shape, kw, ties) -> None:
    x = _inputs(shape, ties)
    ref, fast = nn.MaxPool2d(**kw), MaxPool2d(**kw)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [ref(xs[0]), fast(xs[1])]
    assert ys[1].is_contiguous()
    assert type(ys[1].grad_fn).__name__ == "_MaxPool2dChannelsLastBackward"  # the fast path
    assert torch.equal(ys[0], ys[1])
    w = torch.randn(ys[0].shape, generator=torch.Generator().manual_seed(1))
    # first derivative, kept differentiable, then a second derivative through it
    g1 = [torch.autograd.grad((y * w).sum(), xx, create_graph=True)[0] for y, xx in zip(ys, xs)]
    assert torch.equal(g1[0], g1[1])
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    ws = [w.clone().requires_grad_(True) for _ in range(2)]
    g1 = [torch.autograd.grad((p(xx) * ww).sum(), xx, create_graph=True)[0]
          for p, xx, ww in zip((ref, fast), xs, ws)]
    g2 = [torch.autograd.grad((g * v).sum(), ww)[0] for g, ww in zip(g1, ws)]
    assert torch.equal(g2[0], g2[1]) and g2[0].abs().sum() > 0


def test_other_inputs_take_the_plain_path_and_agree() -> None:
    fast, ref = MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, ceil_mode=True)
    x3 = torch.randn(8, 9, 9)                              # unbatched
    xcl = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    xt = torch.randn(2, 8, 10, 9).transpose(2, 3)          # not contiguous
    for x in (x3, xcl, xt):
        assert torch.equal(fast(x), ref(x))
    y, idx = MaxPool2d(2, return_indices=True)(x3)
    assert torch.equal(idx, nn.MaxPool2d(2, return_indices=True)(x3)[1])


def test_models_use_it_and_batchnorm_folding_still_happens() -> None:
    card = dataset_card("digits")
    m = create_model("convnet", card)
    assert sum(type(p) is MaxPool2d for p in m.modules()) == 3
    frozen = frozen_inference_copy(m)
    assert not any(isinstance(p, nn.BatchNorm2d) for p in frozen.modules())  # folded
    assert sum(type(p) is MaxPool2d for p in frozen.modules()) == 3
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(frozen(x), m.eval()(x), atol=1e-5)
    assert use_channels_last_pooling(m, enabled=False) == 3
    assert use_channels_last_pooling(m) == 3


def test_training_steps_give_the_same_weights_with_either_pooling() -> None:
    """A few SGD steps of the Fashion-MNIST ConvNet with a PGD inner loop (the MAT step
    shape) from one seed: the state dicts are equal bit for bit."""
    from xrbench.attacks.pgd import pgd

    card = dataset_card("fashion_mnist")
    torch.manual_seed(0)
    fast = create_model("convnet", card)
    plain = copy.deepcopy(fast)
    assert use_channels_last_pooling(plain, enabled=False) == 3
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(3)]
    for m in (fast, plain):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(4)
        m.train()
        for x, y in batches:
            x_adv = pgd(m, x, y, eps=0.3, steps=3, generator=gen)
            opt.zero_grad()
            F.cross_entropy(m(x_adv), y).backward()
            opt.step()
    sa, sb = fast.state_dict(), plain.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["deeplift", "lrp"])
def test_captum_explainers_see_plain_pooling(name) -> None:
    """captum's DeepLift and LRP choose their max-pool rule by the module's exact type; through
    xrbench the maps equal captum's on a copy with nn.MaxPool2d, and the model keeps its
    channels-last pooling afterwards."""
    from captum.attr import LRP, DeepLift
    from captum.attr._utils.lrp_rules import IdentityRule

    from xrbench.explainers import get_explainer

    card = dataset_card("digits")
    torch.manual_seed(0)
    m = create_model("convnet", card).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.arange(6) % 10
    got = get_explainer(name)(m, x, y)
    assert sum(type(p) is MaxPool2d for p in m.modules()) == 3
    plain = copy.deepcopy(m)
    use_channels_last_pooling(plain, enabled=False)
    z = plain.normalize(x).requires_grad_(True)
    if name == "deeplift":
        want = DeepLift(plain.net).attribute(z, target=y, baselines=0.0)
    else:
        for mod in plain.net.modules():
            if isinstance(mod, nn.Softplus):
                mod.rule = IdentityRule()
        want = LRP(plain.net).attribute(z, target=y)
    assert torch.allclose(got, want.detach(), rtol=1e-5, atol=1e-7)
