"""Benchmarks (pytest-benchmark): batched tensor code against the per-item loop it replaces,
measured side by side in one run and printed as ratios. Not part of the test suite:

    .venv/bin/python -m pytest benchmarks/ --benchmark-columns=mean,stddev --benchmark-sort=name

Each pair of benchmarks runs the same work; the ratio of their means is the speed-up.
"""

from __future__ import annotations

import pytest
import torch

import xrbench  # noqa: F401
from xrbench.attacks.manipulation import manipulate
from xrbench.data import load_dataset
from xrbench.explainers import get_explainer
from xrbench.models import create_model

PAIRS = 32
ITERATIONS = 5
_means: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    x, _ = ds.test.get_batch(torch.arange(2 * PAIRS))
    return model, get_explainer("grad_x_input"), x[:PAIRS], x[PAIRS:]


def _record(benchmark, name: str) -> None:
    _means[name] = benchmark.stats.stats.mean


def test_manipulation_batched(benchmark, setup):
    model, ex, xv, xt = setup
    benchmark(lambda: manipulate(model, ex, xv, xt, iterations=ITERATIONS, lr=0.05))
    _record(benchmark, "batched")


def test_manipulation_one_pair_at_a_time(benchmark, setup):
    model, ex, xv, xt = setup
    benchmark(lambda: [manipulate(model, ex, xv[i:i + 1], xt[i:i + 1], iterations=ITERATIONS,
                                  lr=0.05) for i in range(PAIRS)])
    _record(benchmark, "looped")


def test_zz_report_ratio():
    """Prints looped / batched (the speed-up of batching pairs)."""
    if {"batched", "looped"} <= set(_means):
        print(f"\nmanipulation: one-pair loop / batched = "
              f"{_means['looped'] / _means['batched']:.1f}x for {PAIRS} pairs")
