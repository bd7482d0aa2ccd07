"""Benchmark (pytest-benchmark): one training step of every defense on LeNet with a
CIFAR-sized random batch (3 x 32 x 32, batch 64, one thread), side by side in one run, printed
as ratios to ``normal`` against Joo et al. (2023) Table 2's (hessian <= 4.25x, l2_cosd <=
2.75x; the others have no target). The double-backward defenses are timed twice: the default
path and ``XRBENCH_FAST_DOUBLE_BACKWARD=1`` (:mod:`xrbench.fastgrad`, "fast" rows).

    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py --benchmark-columns=min,mean

``XRBENCH_BENCH_SHORT=1`` (CI): 3 rounds of batch 16 instead of 10 rounds of batch 64; the
ratios then say less (a small batch is dominated by per-op overhead), the run takes ~1 min.
Ratios use each step's fastest round (the least disturbed on a shared machine).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from train_step import DEFENSES, DOUBLE_BACKWARD, TARGETS, ratio_table, training_step

SHORT = os.environ.get("XRBENCH_BENCH_SHORT", "") not in ("", "0")
ROUNDS, BATCH = (3, 16) if SHORT else (10, 64)
CASES = [(d, False) for d in DEFENSES] + [(d, True) for d in DOUBLE_BACKWARD]
_seconds: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name,fast", CASES,
                         ids=[d + ("-fast" if f else "") for d, f in CASES])
def test_train_step(benchmark, name, fast):
    step = training_step(name, "cifar10", "lenet", batch=BATCH, fast=fast)
    loss = benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert math.isfinite(loss)
    if benchmark.stats is not None:  # None under --benchmark-disable
        _seconds[name + (" (fast)" if fast else "")] = benchmark.stats.stats.min


def test_zz_report_ratios(capsys):
    """Prints the ratio table (markdown) once every step was timed."""
    if "normal" not in _seconds:
        pytest.skip("the normal step was not timed (deselected or --benchmark-disable)")
    order = [d + s for d in DEFENSES for s in ("", " (fast)") if d + s in _seconds]
    with capsys.disabled():
        print(f"\ntraining step, LeNet, batch {BATCH} of 3x32x32, 1 thread, fastest of "
              f"{ROUNDS} rounds:\n" + ratio_table({k: _seconds[k] for k in order}, TARGETS))
