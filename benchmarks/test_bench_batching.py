"""Benchmark: the targeted manipulation (PROTOCOL 5.2) on a batch of pairs against the same
attack run one pair at a time, side by side in one run (pytest-benchmark):

    python -m pytest benchmarks/test_bench_batching.py -q

Digits ConvNet, grad x input, one thread. The batched side runs one chunk of the
manipulation stage's size (``pair_batch`` 512 pairs; short mode 128); the looped side calls
:func:`~xrbench.attacks.manipulation.manipulate` once per pair on the first 32 of them
(short mode 8), each call building its own attack copy as a one-pair run would. The ratio
is of seconds per pair: (looped / its pairs) / (batched / its pairs). Target >= 10x.
The looped pairs' results are checked against the batched ones (PROTOCOL 5.2: a pair's
optimisation does not depend on its batch).
"""

from __future__ import annotations

import pytest
import torch

import xrbench  # noqa: F401
from xrbench.attacks.manipulation import manipulate, ordered_pairs
from xrbench.data import load_dataset
from xrbench.explainers import get_explainer
from xrbench.models import create_model

from benchutil import pick

BATCH_PAIRS = pick(512, 128)  # one chunk of the manipulation stage (pair_batch)
LOOP_PAIRS = pick(32, 8)
ITERATIONS = pick(10, 3)
ROUNDS = pick(5, 3)
LR = 7.5e-4  # the quick profile's
_batched_result: dict[str, object] = {}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    images, _ = ds.test.get_batch(torch.arange(24))
    pairs = ordered_pairs(24)[:BATCH_PAIRS]  # 552 pairs of 24 images, victim-major
    return model, get_explainer("grad_x_input"), images[pairs[:, 0]], images[pairs[:, 1]]


def _batched(s):
    model, ex, xv, xt = s
    return manipulate(model, ex, xv, xt, iterations=ITERATIONS, lr=LR)


def _looped(s):
    model, ex, xv, xt = s
    return [manipulate(model, ex, xv[i:i + 1], xt[i:i + 1], iterations=ITERATIONS, lr=LR)
            for i in range(LOOP_PAIRS)]


def test_manipulation_batched(benchmark, setup, ratios):
    res = benchmark.pedantic(_batched, args=(setup,), rounds=ROUNDS, warmup_rounds=1)
    ratios.record("manipulation/batched", benchmark, per=BATCH_PAIRS)
    _batched_result["res"] = res


def test_manipulation_one_pair_at_a_time(benchmark, setup, ratios):
    looped = benchmark.pedantic(_looped, args=(setup,), rounds=ROUNDS, warmup_rounds=1)
    ratios.record("manipulation/one pair", benchmark, per=LOOP_PAIRS)
    ratios.ratio("manipulation: batched vs one pair at a time", "manipulation/one pair",
                 "manipulation/batched", at_least=10.0,
                 note=f"s/pair, {BATCH_PAIRS}-pair batch vs {LOOP_PAIRS} single pairs, "
                      f"{ITERATIONS} Adam steps")
    batched = _batched_result.get("res") or _batched(setup)
    end = torch.cat([r.expl_end for r in looped])
    torch.testing.assert_close(end, batched.expl_end[:LOOP_PAIRS], rtol=1e-3, atol=0)
    assert torch.equal(torch.cat([r.pred_adv for r in looped]),
                       batched.pred_adv[:LOOP_PAIRS])
