"""Benchmark (pytest-benchmark): one step of the explanation manipulation's gradient, i.e. the
double backward through the model, on the model itself against the copies that
:mod:`xrbench.inference` builds. Side by side in one run, printed as ratios:

    .venv/bin/python -m pytest benchmarks/test_bench_double_backward.py --benchmark-columns=mean,stddev

Digits ConvNet (BatchNorm, Softplus), grad x input, 256 pairs, one thread.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xrbench  # noqa: F401
from xrbench.data import load_dataset
from xrbench.explainers import expl_loss, get_explainer, sum_map
from xrbench.inference import fold_batchnorm, frozen_inference_copy
from xrbench.models import create_model

PAIRS = 256
_means: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    x, _ = ds.test.get_batch(torch.arange(2 * PAIRS) % len(ds.test))
    ex = get_explainer("grad_x_input")
    cls = torch.arange(PAIRS) % ds.card.num_classes
    target = sum_map(ex(model, x[PAIRS:], cls))
    folded = create_model("convnet", ds.card)
    folded.load_state_dict(model.state_dict())
    folded.net = fold_batchnorm(folded.eval().net)
    folded.requires_grad_(False)
    return {"model": model, "folded": folded, "copy": frozen_inference_copy(model),
            "ex": ex, "x": x[:PAIRS], "cls": cls, "target": target}


def _step(s, which: str) -> torch.Tensor:
    """Gradient of the manipulation objective at x (PROTOCOL 5.2), w.r.t. x."""
    x = s["x"].clone().requires_grad_(True)
    a, logits = s["ex"].attribute_and_logits(s[which], x, s["cls"], create_graph=True)
    loss = 1e11 * expl_loss(sum_map(a), s["target"]) + 1e6 * F.softmax(logits, 1).pow(2).mean(1)
    return torch.autograd.grad(loss.sum(), x)[0]


@pytest.mark.parametrize("which", ["model", "folded", "copy"])
def test_double_backward_step(benchmark, setup, which):
    g = benchmark(lambda: _step(setup, which))
    ref = _step(setup, "model")
    assert torch.linalg.vector_norm(g - ref) <= 1e-4 * torch.linalg.vector_norm(ref)
    _means[which] = benchmark.stats.stats.mean


def test_zz_report_ratio():
    """Prints model / folded and model / frozen_inference_copy (speed-ups)."""
    if {"model", "folded", "copy"} <= set(_means):
        print(f"\ndouble backward, {PAIRS} pairs: model / BatchNorm folded = "
              f"{_means['model'] / _means['folded']:.2f}x, model / frozen_inference_copy = "
              f"{_means['model'] / _means['copy']:.2f}x")
