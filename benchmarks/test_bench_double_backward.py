"""Benchmark (pytest-benchmark): one step of the explanation manipulation's gradient, i.e. the
double backward through the model, on the model itself against the copies that
:mod:`xrbench.inference` builds. Side by side in one run, printed as ratios:

    python -m pytest benchmarks/test_bench_double_backward.py -q

Digits ConvNet (BatchNorm, Softplus), grad x input, 256 pairs (short mode 64), one thread.
Reported without a target (the speed-up :mod:`xrbench.inference` documents).
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

from benchutil import pick

PAIRS = pick(256, 64)
ROUNDS = pick(10, 5)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
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
def test_double_backward_step(benchmark, setup, ratios, which):
    g = benchmark.pedantic(_step, args=(setup, which), rounds=ROUNDS, warmup_rounds=1)
    ref = _step(setup, "model")
    assert torch.linalg.vector_norm(g - ref) <= 1e-4 * torch.linalg.vector_norm(ref)
    ratios.record(f"double backward/{which}", benchmark)
    note = f"one step of the manipulation's gradient, {PAIRS} pairs"
    ratios.ratio("double backward: BatchNorm folded vs the model", "double backward/model",
                 "double backward/folded", note=note)
    ratios.ratio("double backward: frozen_inference_copy vs the model",
                 "double backward/model", "double backward/copy", note=note)
