"""RelEx masks and class retrieval (PROTOCOL 5.5): protocol defaults, mask range, a mask
that finds the only region a model reads, retrieval of clean predictions, explainer masks."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from xrbench.explainers import get_explainer
from xrbench.keyed_random import stream_keys
from xrbench.metrics.retrieval import (STREAM_RELEX, apply_mask, explainer_mask, predict,
                                       relex_mask, retrieval)
from xrbench.models import XRModel


def test_defaults_are_the_protocol_values() -> None:
    d = {k: p.default for k, p in inspect.signature(relex_mask).parameters.items()}
    assert (d["iterations"], d["samples"], d["lr"], d["momentum"]) == (50, 50, 0.1, 0.99)
    assert (d["lambda1"], d["lambda2"], d["noise_level"], d["init_max"]) == (1e-4, 1.0, 0.1, 0.01)
    assert inspect.signature(retrieval).parameters["pgd_steps"].default == 20


class TopLeft(nn.Module):
    """Two classes read from the top-left 3 x 3 pixels only: logits (s, -s), s their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(9, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([torch.ones(9), -torch.ones(9)]))
            self.fc.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z[:, :, :3, :3].flatten(1))


def test_relex_mask_concentrates_on_the_region_the_model_reads(digits) -> None:
    model = XRModel(TopLeft(), digits.card, "topleft").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 1, 8, 8), generator=g)
    x[:, :, :3, :3] = 1.0  # bright region: class 0 with p ~ 1
    m = relex_mask(model, x, iterations=20, samples=8)
    assert m.shape == x.shape and m.min() >= 0 and m.max() <= 1
    inside = m[:, :, :3, :3].mean().item()
    outside = (m.sum() - m[:, :, :3, :3].sum()).item() / (m.numel() - 6 * 9)
    assert inside > 0.9 and outside < 0.01, (inside, outside)
    assert all(p.grad is None for p in model.parameters())


def test_relex_mask_is_keyed_in_range_and_leaves_the_model_alone(trained_convnet,
                                                                 test_batch) -> None:
    x = test_batch[0][:8]
    for p in trained_convnet.parameters():
        p.grad = None
    trained_convnet.train()
    kw = dict(iterations=5, samples=4)
    keys = stream_keys(1, STREAM_RELEX, torch.arange(8))
    m1 = relex_mask(trained_convnet, x, keys=keys, **kw)
    m2 = relex_mask(trained_convnet, x, keys=keys, **kw)
    assert trained_convnet.training  # mode restored
    trained_convnet.eval()
    assert torch.equal(m1, m2) and m1.shape == x.shape
    assert m1.min() >= 0 and m1.max() <= 1
    assert all(p.grad is None for p in trained_convnet.parameters())
    other = relex_mask(trained_convnet, x, keys=stream_keys(2, STREAM_RELEX, torch.arange(8)),
                       **kw)
    assert (other - m1).abs().max() > 1e-3  # another seed draws other noise


def test_relex_mask_per_image_equals_one_image_at_a_time(trained_convnet, test_batch) -> None:
    """Issue 10: the batched optimisation (every image at once, chunked) gives each image
    the mask it gets alone: its noise is keyed by its own key, never by its batch."""
    x = test_batch[0][:6]
    c = predict(trained_convnet, x)
    keys = stream_keys(7, STREAM_RELEX, torch.arange(6))
    kw = dict(iterations=8, samples=5)
    together = relex_mask(trained_convnet, x, c, keys=keys, **kw)
    chunked = relex_mask(trained_convnet, x, c, keys=keys, max_batch_pixels=2 * 5 * 64 * 2,
                         **kw)  # chunks of two images
    alone = torch.cat([relex_mask(trained_convnet, x[i:i + 1], c[i:i + 1],
                                  keys=keys[i:i + 1], **kw) for i in range(6)])
    assert (together - alone).abs().max() < 1e-4
    assert (together - chunked).abs().max() < 1e-4
    # reversed order, reversed keys: the same masks, reversed
    rev = relex_mask(trained_convnet, x.flip(0), c.flip(0), keys=keys.flip(0), **kw)
    assert (rev.flip(0) - together).abs().max() < 1e-4


def test_relex_frozen_copy_has_the_models_gradient(trained_convnet, test_batch) -> None:
    """The copy RelEx differentiates (BatchNorm folded, channels-last) is the model: logits
    and the gradient of a class log-probability in x agree to float32 rounding."""
    from xrbench.inference import frozen_inference_copy

    x = test_batch[0][:16].clone().requires_grad_(True)
    copy = frozen_inference_copy(trained_convnet, double_backward=False, channels_last=True)
    grads = []
    for net in (trained_convnet.eval(), copy):
        logp = torch.log_softmax(net(x), dim=1)[:, 3].sum()
        grads.append(torch.autograd.grad(logp, x)[0])
    assert torch.allclose(copy(x), trained_convnet(x), atol=1e-4, rtol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_apply_mask_blends_toward_the_dataset_mean(trained_convnet, test_batch) -> None:
    x = test_batch[0][:4]
    mean = trained_convnet.normalize.mean
    assert torch.allclose(apply_mask(trained_convnet, x, torch.ones_like(x)), x)
    assert torch.allclose(apply_mask(trained_convnet, x, torch.zeros_like(x)),
                          mean.expand_as(x))


def test_explainer_mask_scales_by_the_99th_percentile() -> None:
    h = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    a = torch.cat([h / 2, -h / 2], dim=1)  # |.| summed over channels gives h
    m = explainer_mask(a)
    assert m.shape == (1, 1, 10, 10)
    q99 = 98.01  # numpy.percentile(range(100), 99), linear interpolation
    assert torch.allclose(m.flatten()[:99], torch.arange(99.) / q99)
    assert m.flatten()[99].item() == 1.0  # 99 / 98.01 > 1, clamped


def test_retrieval_recovers_clean_predictions(trained_convnet, test_batch, digits) -> None:
    x = test_batch[0][:16]
    out = retrieval(trained_convnet, get_explainer("grad_x_input"), x,
                    eps_list=[0.0, 0.2], card=digits.card, seed=0,
                    relex=dict(iterations=15, samples=8))
    hits, rates = out["hits"], out["rates"]
    assert torch.equal(out["pred_clean"], predict(trained_convnet, x))
    assert rates["relex_on_clean"] >= 0.9
    for key in ("relex_adv_mask", "relex_clean_mask", "explainer_adv_mask",
                "explainer_clean_mask", "no_mask"):
        assert hits[key].shape == (2, 16) and hits[key].dtype == torch.bool
        assert all(0.0 <= r <= 1.0 for r in rates[key])
        assert rates[key] == pytest.approx(hits[key].float().mean(dim=1).tolist())
    assert 0.0 <= rates["explainer_on_clean"] <= 1.0
    # eps = 0: PGD leaves x unchanged, so the clean-mask rows equal the clean-image rows
    assert hits["no_mask"][0].all()
    assert torch.equal(hits["relex_clean_mask"][0], hits["relex_on_clean"])
    assert torch.equal(hits["explainer_clean_mask"][0], hits["explainer_on_clean"])
    # eps = 0.2 really attacks, and the clean RelEx mask retrieves more than no mask
    assert rates["no_mask"][1] < 0.5
    assert rates["relex_clean_mask"][1] > rates["no_mask"][1]
    assert out["params"]["relex"]["samples"] == 8 and out["params"]["relex"]["lr"] == 0.1


def test_every_mask_explains_the_clean_prediction(trained_convnet, test_batch, digits,
                                                  monkeypatch) -> None:
    """PROTOCOL 5.5 (version 2; RelEx reference ``generate.py``): the masks of x_adv explain
    the prediction on the CLEAN image, as the mask of x does, even where PGD changed it."""
    import xrbench.metrics.retrieval as r

    x = test_batch[0][:12]
    c0 = predict(trained_convnet, x)
    relex_classes, explained = [], []
    real_relex = r.relex_mask

    def spy_relex(model, images, c, **kw):
        relex_classes.append(c.clone())
        return real_relex(model, images, c, **kw)

    grad = get_explainer("gradient")

    def spy_explainer(model, images, target, **kw):
        explained.append(target.clone())
        return grad(model, images, target, **kw)

    monkeypatch.setattr(r, "relex_mask", spy_relex)
    out = retrieval(trained_convnet, spy_explainer, x, eps_list=[0.3], card=digits.card,
                    seed=0, relex=dict(iterations=2, samples=2))
    assert out["rates"]["no_mask"][0] < 0.5  # PGD changed most predictions...
    # one batched RelEx optimisation: the clean images, then the eps's adversarial ones
    assert len(relex_classes) == 1 and len(explained) >= 2
    for c in list(relex_classes[0].split(len(x))) + [torch.cat(explained[: len(explained) // 2]),
                              torch.cat(explained[len(explained) // 2:])]:
        assert torch.equal(c, c0)  # ...yet every mask explains the clean class


def test_retrieval_of_a_shard_equals_the_whole_subset(trained_convnet, test_batch,
                                                      digits) -> None:
    """Issue 10's shards: scoring images 0-6 and 7-11 separately, each with its subset
    indices, gives the hits of scoring all twelve at once (PGD starts and RelEx noise are
    keyed by (seed, image id)); another seed gives other random numbers."""
    x = test_batch[0][:12]
    kw = dict(eps_list=[0.1, 0.3], card=digits.card, seed=11,
              relex=dict(iterations=6, samples=4))
    ex = get_explainer("grad_x_input")
    whole = retrieval(trained_convnet, ex, x, **kw)
    parts = [retrieval(trained_convnet, ex, x[a:b], image_ids=torch.arange(a, b), **kw)
             for a, b in ((0, 7), (7, 12))]
    for key, v in whole["hits"].items():
        assert torch.equal(v, torch.cat([p["hits"][key] for p in parts], dim=-1)), key
    from xrbench.metrics.retrieval import pgd_start

    s1 = pgd_start(x, 0.1, 11, 0, torch.arange(12))
    assert torch.equal(s1[7:], pgd_start(x[7:], 0.1, 11, 0, torch.arange(7, 12)))
    assert (s1 - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(s1, pgd_start(x, 0.1, 12, 0, torch.arange(12)))
