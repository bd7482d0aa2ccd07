"""frozen_inference_copy: the same function, first and second input derivatives as the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrbench.explainers import expl_loss, sum_map
from xrbench.inference import (DoubleBackwardSoftplus, InputGradConv2d, _Conv2dInputGrad,
                               frozen_inference_copy)
from xrbench.models import create_model
from xrbench.registry import explainers


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


def _map_loss_grad(model: nn.Module, x: torch.Tensor, target_map: torch.Tensor,
                   cls: torch.Tensor) -> torch.Tensor:
    """d/dx of L_e(sum_map(grad x input at x), target): the manipulation's double backward."""
    x = x.clone().requires_grad_(True)
    a = explainers.get("grad_x_input")()(model, x, cls, create_graph=True)
    (g,) = torch.autograd.grad(expl_loss(sum_map(a), target_map).sum(), x)
    return g


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "lenet"])
def test_copy_matches_model_to_second_order(digits, arch):
    torch.manual_seed(0)
    model = create_model(arch, digits.card).eval()
    _randomise_batchnorm(model)
    fast = frozen_inference_copy(model)
    x, _ = digits.test.get_batch(torch.arange(16))
    cls = torch.arange(16) % digits.card.num_classes
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    if arch != "lenet":  # lenet has no BatchNorm to fold
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, InputGradConv2d) for m in fast.modules())
    target = sum_map(explainers.get("grad_x_input")()(model, x.flip(0), cls))
    g_ref = _map_loss_grad(model, x, target, cls)
    g_fast = _map_loss_grad(fast, x, target, cls)
    assert torch.linalg.vector_norm(g_fast - g_ref) <= 1e-4 * torch.linalg.vector_norm(g_ref)
    # the original is untouched: trainable, plain modules, BatchNorm still there
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, (InputGradConv2d, DoubleBackwardSoftplus))
                   for m in model.modules())
    assert all(not p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("stride,padding,dilation,groups,size",
                         [(1, 1, 1, 1, 7), (2, 1, 1, 1, 7), (2, 0, 1, 1, 8), (2, 2, 2, 2, 9),
                          (3, 1, 1, 1, 10)])
def test_conv_input_grad_gradgradcheck(stride, padding, dilation, groups, size):
    """Strided/odd-sized/grouped/dilated cases: first and second derivatives are exact
    (float64 finite differences), and equal to the generic nn.Conv2d's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups).double().requires_grad_(False)
    x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
    f = lambda x: F.softplus(_Conv2dInputGrad.apply(x, conv)) ** 2  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    y_ref, y = conv(x), _Conv2dInputGrad.apply(x, conv)
    v = torch.randn_like(y)
    (g_ref,) = torch.autograd.grad((y_ref * v).sum(), x)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    assert torch.allclose(g, g_ref)


def test_softplus_first_and_second_derivative():
    sp = DoubleBackwardSoftplus(beta=3.0).double()
    x = torch.linspace(-12, 12, 101, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sp, (x,))
    assert torch.autograd.gradgradcheck(sp, (x,))
    # equal to nn.Softplus on both sides of the threshold (beta * x = 20), float32
    xf = torch.tensor([-30.0, -1.0, 0.0, 0.5, 6.0, 6.7, 7.0, 30.0], requires_grad=True)
    for beta in (3.0, 10.0, 100.0):
        ref, fast = nn.Softplus(beta=beta), DoubleBackwardSoftplus(beta=beta)
        (d1r,) = torch.autograd.grad(ref(xf).sum(), xf, create_graph=True)
        (d1f,) = torch.autograd.grad(fast(xf).sum(), xf, create_graph=True)
        assert torch.equal(fast(xf), ref(xf))
        assert torch.allclose(d1f, d1r, atol=1e-7)
        (d2r,) = torch.autograd.grad(d1r.sum(), xf)
        (d2f,) = torch.autograd.grad(d1f.sum(), xf)
        assert torch.allclose(d2f, d2r, atol=1e-5 * beta)


def test_trainable_conv_keeps_weight_gradients():
    conv = nn.Conv2d(1, 2, 3)
    conv.__class__ = InputGradConv2d
    conv(torch.randn(1, 1, 5, 5)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
