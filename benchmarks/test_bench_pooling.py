"""Benchmark (issue 22 item 2): max pooling through the channels-last kernel
(:mod:`xrbench.pooling`) against PyTorch's NCHW kernel, on the default path's work.

Each pair of rows runs the same work twice in one session, with ``xrbench.pooling.MaxPool2d``
(the default) and with plain ``nn.MaxPool2d`` put back, and asserts that both give the same
bits (a training step's loss and updated weights; the manipulation's per-pair L_e): the
speed-up changes no number. Registered as ratios "plain / channels-last", never asserted.

* training steps (``benchmarks/train_step.py``: the defense's loss, the parameter backward, one
  Adam step) of normal, mat, sep_pos and hessian, ConvNet at Fashion-MNIST shapes
  (1 x 28 x 28) and LeNet at CIFAR-10 shapes, batch 64;
* the manipulation (PROTOCOL 5.2) with guided backprop, ConvNet 28 x 28, 64 pairs (Table 15's
  explainer; the double backward runs through the pooling).

    python -m pytest benchmarks/test_bench_pooling.py -q

Short mode (``XRBENCH_BENCH_SHORT=1``): batch and pairs 16, 2 rounds.
"""

from __future__ import annotations

import copy

import pytest
import torch

import xrbench  # noqa: F401
from xrbench.attacks.manipulation import manipulate
from xrbench.data import dataset_card
from xrbench.explainers import get_explainer
from xrbench.models import create_model
from xrbench.pooling import use_channels_last_pooling
from xrbench.protocol import get_profile

from benchutil import pick
from train_step import training_step

BATCH = pick(64, 16)
PAIRS = pick(64, 16)
ROUNDS = pick(5, 2)
CASES = {("fashion_mnist", "convnet"): "ConvNet 28x28", ("cifar10", "lenet"): "LeNet 3x32x32"}
_RESULTS: dict[str, object] = {}


@pytest.mark.parametrize("pooling", ["plain", "channels_last"])
@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("defense", ["normal", "mat", "sep_pos", "hessian"])
def test_train_step_pooling(benchmark, ratios, defense, case, pooling):
    dataset, model = case
    step = training_step(defense, dataset, model, batch=BATCH,
                         channels_last_pooling=pooling == "channels_last")
    first = step()  # the same first step from the same seed: the same loss, bit for bit
    key = f"pooling/train/{dataset}/{model}/{defense}"
    other = _RESULTS.setdefault(key, first)
    assert other == first, f"{key}: loss {first!r} with {pooling} pooling, {other!r} without"
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(f"{key}/{pooling}", benchmark)
    if pooling == "channels_last":
        ratios.ratio(f"channels-last pooling speed-up: {defense} training step, {CASES[case]}, "
                     f"batch {BATCH}", f"{key}/plain", f"{key}/channels_last",
                     note="same loss bits (asserted)")


@pytest.mark.parametrize("pooling", ["plain", "channels_last"])
def test_manipulation_pooling(benchmark, ratios, pooling):
    card = dataset_card("fashion_mnist")
    torch.manual_seed(0)
    model = create_model("convnet", card).eval()
    if pooling == "plain":
        model = copy.deepcopy(model)
        use_channels_last_pooling(model, enabled=False)
    g = torch.Generator().manual_seed(1)
    xv = torch.rand(PAIRS, 1, 28, 28, generator=g)
    xt = torch.rand(PAIRS, 1, 28, 28, generator=g)
    explain = get_explainer("guided_backprop")
    lr = get_profile("quick").lr_for(card)
    iters = pick(20, 6)
    res = benchmark.pedantic(lambda: manipulate(model, explain, xv, xt, iterations=iters, lr=lr),
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    other = _RESULTS.setdefault("pooling/manipulation", res.expl_end)
    assert torch.equal(other, res.expl_end), "L_e moved with the pooling kernel"
    ratios.record(f"pooling/manipulation/{pooling}", benchmark, per=iters * PAIRS)
    if pooling == "channels_last":
        ratios.ratio(f"channels-last pooling speed-up: manipulation pair-step, guided backprop, "
                     f"ConvNet 28x28, {PAIRS} pairs", "pooling/manipulation/plain",
                     "pooling/manipulation/channels_last", note="same L_e bits (asserted)")
