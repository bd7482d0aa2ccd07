"""Benchmark: RelEx masks (PROTOCOL 5.5) for N images at once against one image at a time,
side by side in one run (pytest-benchmark):

    python -m pytest benchmarks/test_bench_relex.py -q

Digits ConvNet, one thread, the images' predicted classes, keys as the retrieval stage
makes them (``keyed_random.stream_keys(seed, STREAM_RELEX, ids)``). Batched:
:func:`~xrbench.metrics.retrieval.relex_mask` on all N images with its default chunking (on
a CPU chunks of about 512 rows). Looped: ``relex_mask`` once per image with that image's
key. With the same keys the masks agree (checked, max abs diff < 1e-4). Full mode 20 images
and 10 optimisation steps, short mode 10 and 3 (the time is linear in the steps; the
protocol's 50 steps only scale both sides). Two settings of the noisy copies per image:
the protocol's 50 (quick, paper: 100 rows per image and step, 2 x samples) and smoke's 8.
Target >= 10x.

A third, reported measurement is the floor of the batched run: only the network's forward
pass and input gradient on the same number of rows in the same chunks (no noise, masks or
update), which shows how much of a RelEx step is the network itself.
"""

from __future__ import annotations

import pytest
import torch

import xrbench  # noqa: F401
from xrbench import keyed_random
from xrbench.chunking import RELEX_PIXELS, chunk_slices, rows_per_chunk
from xrbench.data import load_dataset
from xrbench.explainers import split_model
from xrbench.inference import frozen_inference_copy
from xrbench.metrics.retrieval import STREAM_RELEX, predict, relex_mask
from xrbench.models import create_model

from benchutil import pick

N_IMAGES = pick(20, 10)
ITERATIONS = pick(10, 3)
ROUNDS = pick(5, 3)
SAMPLES = {"protocol": 50, "smoke": 8}  # noisy copies per image and step (profile)
_masks: dict[str, torch.Tensor] = {}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = create_model("convnet", ds.card).eval()
    x, _ = ds.test.get_batch(torch.arange(N_IMAGES))
    keys = keyed_random.stream_keys(0, STREAM_RELEX, torch.arange(N_IMAGES))
    return model, x, predict(model, x), keys


def _batched(s, samples: int) -> torch.Tensor:
    model, x, c, keys = s
    return relex_mask(model, x, c, keys=keys, iterations=ITERATIONS, samples=samples)


def _looped(s, samples: int) -> torch.Tensor:
    model, x, c, keys = s
    return torch.cat([relex_mask(model, x[i:i + 1], c[i:i + 1], keys=keys[i:i + 1],
                                 iterations=ITERATIONS, samples=samples)
                      for i in range(len(x))])


@pytest.mark.parametrize("copies", list(SAMPLES))
def test_relex_batched(benchmark, setup, ratios, copies):
    _masks[copies] = benchmark.pedantic(_batched, args=(setup, SAMPLES[copies]),
                                        rounds=ROUNDS, warmup_rounds=1)
    ratios.record(f"relex/{copies}/batched", benchmark)


@pytest.mark.parametrize("copies", list(SAMPLES))
def test_relex_one_image_at_a_time(benchmark, setup, ratios, copies):
    looped = benchmark.pedantic(_looped, args=(setup, SAMPLES[copies]), rounds=ROUNDS,
                                warmup_rounds=1)
    ratios.record(f"relex/{copies}/looped", benchmark)
    ratios.ratio(f"RelEx: batched vs one image at a time, {SAMPLES[copies]} copies "
                 f"({copies})", f"relex/{copies}/looped", f"relex/{copies}/batched",
                 at_least=10.0, note=f"{N_IMAGES} images, {ITERATIONS} steps, "
                                     f"{2 * SAMPLES[copies]} rows per image and step")
    batched = _masks.get(copies)
    if batched is None:
        batched = _batched(setup, SAMPLES[copies])
    assert float((batched - looped).abs().max()) < 1e-4


def _network_floor(s, samples: int) -> None:
    """Forward pass and input gradient of the batched run's rows, in its chunks."""
    model, x, c, _ = s
    net, _, _ = split_model(frozen_inference_copy(model, double_backward=False,
                                                  channels_last=True))
    per_chunk = rows_per_chunk(x, RELEX_PIXELS["cpu"], expand=2 * samples)
    for _ in range(ITERATIONS):
        for s in chunk_slices(len(x), per_chunk):
            rows = x[s].repeat(2 * samples, 1, 1, 1).requires_grad_(True)
            log_p = torch.log_softmax(net(rows), dim=1)
            picked = log_p.gather(1, c[s].repeat(2 * samples).view(-1, 1))
            torch.autograd.grad(picked.sum(), rows)


def test_relex_network_floor(benchmark, setup, ratios):
    benchmark.pedantic(_network_floor, args=(setup, SAMPLES["protocol"]), rounds=ROUNDS,
                       warmup_rounds=1)
    ratios.record("relex/protocol/network", benchmark)
    ratios.ratio("RelEx batched vs its network alone (forward + input gradient)",
                 "relex/protocol/batched", "relex/protocol/network",
                 note=f"{SAMPLES['protocol']} copies: the part of a step that is not the "
                      "network")
