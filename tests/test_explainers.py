"""Explainers: parity with captum on a seeded model, map normalisations, differentiability."""

from __future__ import annotations

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGB
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from xrbench.data import DatasetCard
from xrbench.explainers import expl_loss, get_explainer, max_map, sum_map
from xrbench.models import create_model
from xrbench.registry import explainers

CARD = DatasetCard("t", 3, 8, 5, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
DIFFERENTIABLE = ["gradient", "grad_x_input", "integrated_gradients", "smoothgrad",
                  "guided_backprop"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("lenet", CARD).eval()
    x = torch.rand(6, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    z = model.normalize(x)
    return model, x, target, z


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_matches_captum_saliency_wrt_normalised_input(setup):
    model, x, target, z = setup
    ref = Saliency(model.net).attribute(z, target=target, abs=False)
    _close(get_explainer("gradient")(model, x, target), ref)


def test_grad_x_input_matches_captum(setup):
    model, x, target, z = setup
    ref = InputXGradient(model.net).attribute(z, target=target)
    _close(get_explainer("grad_x_input")(model, x, target), ref)


def test_integrated_gradients_matches_captum_riemann_right(setup):
    model, x, target, z = setup
    ref = IntegratedGradients(model.net).attribute(
        z, target=target, baselines=0.0, n_steps=30, method="riemann_right")
    _close(get_explainer("integrated_gradients")(model, x, target), ref)


def test_guided_backprop_matches_captum_on_relu_model():
    torch.manual_seed(1)
    model = create_model("lenet", CARD, activation="relu").eval()
    x = torch.rand(4, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 3])
    ref = CaptumGB(model.net).attribute(model.normalize(x), target=target)
    _close(get_explainer("guided_backprop")(model, x, target), ref)


def test_guided_softplus_backward_rule():
    """One Softplus layer: the guided signal is softplus_beta(R) * sigmoid(beta z)."""
    from xrbench.explainers import _GuidedSoftplus

    z = torch.randn(10, requires_grad=True)
    r = torch.randn(10)
    out = _GuidedSoftplus.apply(z, 3.0)
    (g,) = torch.autograd.grad(out, z, grad_outputs=r)
    expected = torch.nn.functional.softplus(r, beta=3.0) * torch.sigmoid(3.0 * z.detach())
    _close(g, expected)


def test_smoothgrad_with_zero_noise_is_its_base(setup):
    model, x, target, _ = setup
    sg = get_explainer("smoothgrad", base="grad_x_input", noise=0.0, samples=3)
    _close(sg(model, x, target), get_explainer("grad_x_input")(model, x, target))


@pytest.mark.parametrize("name", explainers.names())
def test_every_explainer_returns_map_shaped_like_x(setup, name):
    model, x, target, _ = setup
    a = get_explainer(name)(model, x, target)
    assert a.shape == x.shape and torch.isfinite(a).all() and not a.requires_grad


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_create_graph_reaches_parameters_and_input(setup, name):
    model, x, target, _ = setup
    xg = x.clone().requires_grad_(True)
    a = get_explainer(name)(model, xg, target, create_graph=True)
    loss = (sum_map(a) ** 2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [xg, *params], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads[1:])


@pytest.mark.parametrize("name", ["deeplift", "lrp", "gradcam"])
def test_captum_explainers_refuse_create_graph(setup, name):
    from xrbench.errors import XRBenchError

    model, x, target, _ = setup
    with pytest.raises(XRBenchError, match="evaluation-only"):
        get_explainer(name)(model, x, target, create_graph=True)


def test_sum_map_sums_to_one_and_max_map_peaks_at_one():
    a = torch.randn(5, 3, 7, 7)
    torch.testing.assert_close(sum_map(a).sum(dim=(1, 2)), torch.ones(5))
    m = max_map(a)
    assert m.shape == (5, 7, 7)
    torch.testing.assert_close(m.flatten(1).max(1).values, torch.ones(5), atol=1e-6, rtol=0)
    # channel sum of |a|, then normalisation
    h = a.abs().sum(1)
    torch.testing.assert_close(sum_map(a), h / h.sum(dim=(1, 2), keepdim=True))


def test_expl_loss_of_a_map_with_itself_is_zero():
    m = sum_map(torch.randn(4, 1, 8, 8))
    assert torch.equal(expl_loss(m, m), torch.zeros(4))
    other = sum_map(torch.randn(4, 1, 8, 8))
    torch.testing.assert_close(expl_loss(m, other), ((m - other) ** 2).mean(dim=(1, 2)))


def test_smoothgrad_map_does_not_depend_on_the_batch(setup):
    model, x, target, _ = setup
    sg = get_explainer("smoothgrad", samples=4)
    _close(sg(model, x[:2], target[:2]), sg(model, x, target)[:2])


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_attribute_and_logits_agree_with_separate_calls(setup, name):
    model, x, target, _ = setup
    e = get_explainer(name)
    a, logits = e.attribute_and_logits(model, x, target)
    _close(a, e(model, x, target))
    _close(logits, model(x))
