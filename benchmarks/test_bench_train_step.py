"""Benchmark (pytest-benchmark): one training step of every defense on LeNet with a
CIFAR-sized random batch (3 x 32 x 32, one thread), side by side in one run, each registered
as a ratio to the ``normal`` step; targets from Joo et al. (2023) Table 2 (hessian <= 4.25x,
l2_cosd <= 2.75x; the others are reported only). The double-backward defenses are timed
twice: the default path and ``XRBENCH_FAST_DOUBLE_BACKWARD=1`` (:mod:`xrbench.fastgrad`, the
"fast" ratios). A step is what ``xrbench.train.fit`` does for one batch (``train_step.py``);
SEP runs with its regulariser on.

    python -m pytest benchmarks/test_bench_train_step.py -q

Full mode: batch 64 (the recipes'), 10 rounds; short mode (``XRBENCH_BENCH_SHORT=1``): batch
16, 3 rounds (a small batch is dominated by per-op overhead: ratios differ).
"""

from __future__ import annotations

import math

import pytest

from benchutil import pick
from train_step import DEFENSES, DOUBLE_BACKWARD, TARGETS, training_step

BATCH = pick(64, 16)
ROUNDS = pick(10, 3)
CASES = [(d, False) for d in DEFENSES] + [(d, True) for d in DOUBLE_BACKWARD]


@pytest.mark.parametrize("name,fast", CASES,
                         ids=[d + ("-fast" if f else "") for d, f in CASES])
def test_train_step(benchmark, ratios, name, fast):
    step = training_step(name, "cifar10", "lenet", batch=BATCH, fast=fast)
    loss = benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert math.isfinite(loss)
    key = f"train-step/{name}" + ("/fast" if fast else "")
    ratios.record(key, benchmark)
    if name == "normal":
        return
    label = name + (" (SEP regulariser on)" if name.startswith("sep") else "")
    ratios.ratio(f"training step: {label}{' FAST' if fast else ''} vs normal",
                 key, "train-step/normal", at_most=TARGETS.get(name),
                 note=f"LeNet, batch {BATCH} of 3x32x32"
                      + (", XRBENCH_FAST_DOUBLE_BACKWARD=1" if fast else "")
                      + (", Joo et al. Table 2" if name in TARGETS else ""))
