"""Insertion, Adv-Insertion and the frame-target manipulation, PROTOCOL.md section 5.4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrbench.attacks.frame import (adv_insertion_eps, frame_loss, frame_manipulation,
                                   frame_target, frame_width)
from xrbench.explainers import get_explainer
from xrbench.metrics.insertion import (INSERTION_RATIOS, adv_insertion_curves, insertion_curve,
                                       insertion_curves, insertion_ranks, kept_counts)
from xrbench.models import Normalize

PIXEL = (3, 5)  # the one pixel the toy model reads


def score(curves: torch.Tensor) -> torch.Tensor:
    """The per-image (Adv-)Insertion score in percent, as the stages keep it."""
    return 100 * curves.mean(1)


class OnePixelModel(nn.Module):
    """Pixel-space model with the XRModel layout (normalize, net): two logits, (0, 3 z_p)
    with z_p the normalised value of pixel PIXEL."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.net = _PixelNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class _PixelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zp = z[:, 0, PIXEL[0], PIXEL[1]]
        return torch.stack([torch.zeros_like(zp), self.w * zp], dim=1)


def test_ranks_are_stable_by_index_and_counts_floor() -> None:
    h = torch.tensor([[[0.5, 1.0], [0.5, 0.2]]])
    assert insertion_ranks(h).tolist() == [[1, 0, 2, 3]]
    assert kept_counts(INSERTION_RATIOS, 64)[:4] == [0, 3, 6, 9]
    assert kept_counts(INSERTION_RATIOS, 64)[-1] == 60  # r = 0.95: floor(60.8)
    assert kept_counts([0.35, 0.15, 1.0], 400) == [140, 60, 400]  # not 139 / 59 from rounding
    # protocol v2: the reference's 20 ratios i / 20, i = 0..19 (RobustAGA test_insertion.py)
    assert INSERTION_RATIOS == tuple(i / 20 for i in range(20))


def test_insertion_endpoints(trained_convnet, test_batch) -> None:
    x, y = test_batch[0][:8], test_batch[1][:8]
    h = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))
    assert insertion_curve(trained_convnet, x, y, h).shape == (8, 20)
    curve = insertion_curve(trained_convnet, x, y, h, ratios=(0.0, 0.5, 1.0), batch_size=50)
    assert curve.shape == (8, 3)
    with torch.no_grad():
        p_clean = F.softmax(trained_convnet(x), dim=1)[torch.arange(8), y]
        mean_img = trained_convnet.normalize.mean.expand_as(x)
        p_mean = F.softmax(trained_convnet(mean_img), dim=1)[torch.arange(8), y]
    torch.testing.assert_close(curve[:, -1], p_clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(curve[:, 0], p_mean, atol=1e-5, rtol=0)
    # chunking does not change the values
    torch.testing.assert_close(insertion_curve(trained_convnet, x, y, h, ratios=(0.0, 0.5, 1.0),
                                               batch_size=5000), curve, atol=1e-5, rtol=0)
    s = score(insertion_curves(trained_convnet, get_explainer("gradient"), x, y))
    assert s.shape == (8,) and ((s >= 0) & (s <= 100)).all()


def test_inserting_the_read_pixel_first_scores_highest() -> None:
    model = OnePixelModel().eval()
    x = torch.full((2, 1, 8, 8), 0.2)
    x[:, 0, PIXEL[0], PIXEL[1]] = 1.0          # z = 2: p(class 1) = sigmoid(6) when present
    y = torch.ones(2, dtype=torch.long)
    first = torch.zeros(2, 8, 8)
    first[:, PIXEL[0], PIXEL[1]] = 1.0
    last = 1.0 - first
    s_first = 100 * insertion_curve(model, x, y, first).mean(1)
    s_last = 100 * insertion_curve(model, x, y, last).mean(1)
    p_in = torch.sigmoid(torch.tensor(6.0)).item()
    # first: the pixel is in from r = 0.05 on (19 of 20 ratios); last: never (r stops at
    # 0.95, 60 of 64 pixels), so the class probability stays 0.5
    assert s_first[0].item() == pytest.approx(100 * (0.5 + 19 * p_in) / 20, abs=1e-4)
    assert s_last[0].item() == pytest.approx(50.0, abs=1e-4)
    # the gradient explainer sees exactly that pixel, so Insertion ranks it first
    torch.testing.assert_close(score(insertion_curves(model, get_explainer("gradient"), x, y)),
                               s_first)
    assert all(p.grad is None for p in model.parameters())


def test_frame_target_and_eps() -> None:
    assert [frame_width(s) for s in (8, 16, 28, 32, 64, 224)] == [1, 3, 4, 5, 10, 35]
    f32 = frame_target(32)
    assert f32.shape == (32, 32)
    assert f32.sum().item() == 32 * 32 - 22 * 22
    assert f32[5:27, 5:27].sum() == 0 and f32[:5].all() and f32[:, -5:].all()
    assert frame_target(8).sum().item() == 64 - 36
    assert adv_insertion_eps("convnet") == adv_insertion_eps("lenet") == 4 / 255
    assert adv_insertion_eps("resnet18") == adv_insertion_eps("timm:vit_tiny") == 2 / 255


def test_frame_manipulation_budget_and_loss(trained_convnet, test_batch) -> None:
    x, y = test_batch[0][:6], test_batch[1][:6]
    explainer = get_explainer("gradient")
    eps = 4 / 255
    grads = [None if p.grad is None else p.grad.clone() for p in trained_convnet.parameters()]
    trained_convnet.train()
    x_adv = frame_manipulation(trained_convnet, explainer, x, y, eps=eps, iterations=5)
    assert trained_convnet.training  # mode restored
    trained_convnet.eval()
    for p, g in zip(trained_convnet.parameters(), grads):  # parameter grads untouched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert (x_adv - x).abs().max().item() > eps / 2
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # per-image objective: an image's result does not depend on its batch
    alone = frame_manipulation(trained_convnet, explainer, x[:2], y[:2], eps=eps, iterations=5)
    torch.testing.assert_close(alone, x_adv[:2], atol=1e-5, rtol=0)
    # zero budget: no change
    assert torch.equal(frame_manipulation(trained_convnet, explainer, x, y, eps=0.0), x)
    # the objective falls. Max-pooling over the flat digit background has exact ties, so the
    # gradient map is discontinuous in x and small budgets move the loss little: use 0.1.
    with torch.no_grad():
        logits = trained_convnet(x)
    frame = frame_target(8)
    x_adv = frame_manipulation(trained_convnet, explainer, x, y, eps=0.1, iterations=20)
    before = frame_loss(trained_convnet, explainer, x, y, logits, frame).detach()
    after = frame_loss(trained_convnet, explainer, x_adv, y, logits, frame).detach()
    assert after.sum() < 0.96 * before.sum()
    assert (after < before).sum() >= 5


def test_adv_insertion_runs_and_matches_insertion_at_zero_budget(trained_convnet,
                                                                 test_batch) -> None:
    x, y = test_batch[0][:4], test_batch[1][:4]
    explainer = get_explainer("gradient")
    clean = score(insertion_curves(trained_convnet, explainer, x, y))
    torch.testing.assert_close(
        score(adv_insertion_curves(trained_convnet, explainer, x, y, eps=0.0)), clean)
    adv = score(adv_insertion_curves(trained_convnet, explainer, x, y, eps=0.1, iterations=5,
                                     attack_batch=2))
    assert adv.shape == (4,) and ((adv >= 0) & (adv <= 100)).all()
    assert not torch.allclose(adv, clean)


def test_frame_manipulation_on_a_relu_model_uses_a_softplus_surrogate() -> None:
    torch.manual_seed(0)
    model = OnePixelModel()
    model.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 64, 3))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2])
    x_adv = frame_manipulation(model, get_explainer("gradient"), x, y, eps=0.05, iterations=5)
    assert 0 < (x_adv - x).abs().max().item() <= 0.05 + 1e-6
    assert isinstance(model.net[1], nn.ReLU)  # the original model is untouched
