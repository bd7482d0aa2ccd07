"""Clean and PGD accuracy (PROTOCOL 5.1): attacks/pgd.py bounds and metrics/accuracy.py."""

from __future__ import annotations

import pytest
import torch

from xrbench.attacks.pgd import pgd
from xrbench.metrics.accuracy import accuracy_under_pgd


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_pgd_stays_in_ball_and_box(trained_convnet, test_batch, eps):
    x, y = test_batch
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(trained_convnet, x, y, eps=eps, steps=10, generator=g)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert (x_adv - x).abs().max().item() > 0.5 * eps  # it moved
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_accuracy_under_pgd_values(trained_convnet, digits):
    idx = torch.arange(0, 540, 3)  # 180 test images
    res = accuracy_under_pgd(trained_convnet, digits.test, eps=0.3, indices=idx, batch_size=64,
                             generator=torch.Generator().manual_seed(0))
    assert res["clean_correct"].shape == (180,) and res["clean_correct"].dtype == torch.bool
    assert res["pgd_correct"].shape == (180,)
    assert res["clean_acc"] == pytest.approx(100 * res["clean_correct"].double().mean().item())
    assert res["pgd_acc"] == pytest.approx(100 * res["pgd_correct"].double().mean().item())
    assert res["clean_acc"] >= 90.0
    assert res["pgd_acc"] <= res["clean_acc"] - 40.0  # an undefended model breaks at eps 0.3
    assert res["params"]["step_size"] == pytest.approx(2.5 * 0.3 / 10)
    assert torch.equal(res["indices"], idx)
    # seeded: the same generator seed gives the same per-example outcome, whatever the batch
    again = accuracy_under_pgd(trained_convnet, digits.test, eps=0.3, indices=idx,
                               batch_size=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["pgd_correct"], res["pgd_correct"])


def test_eps_zero_and_monotone(trained_convnet, digits):
    idx = torch.arange(100)
    trained_convnet.train()
    zero = accuracy_under_pgd(trained_convnet, digits.test, eps=0.0, indices=idx)
    assert trained_convnet.training  # mode restored
    trained_convnet.eval()
    assert torch.equal(zero["pgd_correct"], zero["clean_correct"])
    assert zero["pgd_acc"] == zero["clean_acc"]
    small = accuracy_under_pgd(trained_convnet, digits.test, eps=0.05, indices=idx)
    big = accuracy_under_pgd(trained_convnet, digits.test, eps=0.3, indices=idx)
    assert small["clean_acc"] == zero["clean_acc"]
    assert zero["clean_acc"] >= small["pgd_acc"] >= big["pgd_acc"]
