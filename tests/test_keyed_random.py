"""Keyed (counter-based) random numbers: the hash equals a pure-Python reference of the
lowbias32 finaliser, values depend only on (key, position), and the distributions are right."""

from __future__ import annotations

import math

import pytest
import torch

from xrbench import keyed_random as kr


def _mix32_reference(x: int) -> int:
    """lowbias32 on Python ints (unbounded, reduced mod 2**32 by hand)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_equals_the_reference_on_edge_and_random_words() -> None:
    words = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    words += torch.randint(0, 2 ** 32, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    got = kr.mix32(torch.tensor(words, dtype=torch.int64)).tolist()
    assert got == [_mix32_reference(w) for w in words]


def test_key32_folds_low_and_high_words_and_broadcasts() -> None:
    expected = 0x9E3779B9
    for word in (5, 0, 7, 0):  # parts 5 and 7: low word, then high word (0) each
        expected = _mix32_reference(expected ^ word)
    assert int(kr.key32(5, 7)) == expected
    ids = torch.arange(4)
    keys = kr.key32(5, ids)
    assert keys.shape == (4,) and [int(kr.key32(5, i)) for i in range(4)] == keys.tolist()
    assert int(kr.key32(2 ** 40)) != int(kr.key32(0, 2 ** 8))  # no aliasing across parts
    with pytest.raises(ValueError):
        kr.key32(-1)


def test_values_depend_only_on_key_and_position() -> None:
    keys = kr.key32(3, torch.arange(10))
    u = kr.uniform(keys, 1000)
    assert torch.equal(kr.uniform(keys[4:6], 1000), u[4:6])  # batch-independent
    assert torch.equal(kr.uniform(keys.flip(0), 1000), u.flip(0))  # order-independent
    z = kr.normal(keys, 999)
    assert torch.equal(kr.normal(keys[7:8], 999), z[7:8])
    assert torch.equal(kr.normal(keys, 500), z[:, :500])  # a prefix of a longer draw


def test_uniform_and_normal_have_the_right_moments() -> None:
    keys = kr.key32(1, torch.arange(8))
    u = kr.uniform(keys, 50_000, dtype=torch.float64)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002 and abs(u.var().item() - 1 / 12) < 0.001
    z = kr.normal(keys, 50_000, dtype=torch.float64)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs(((z ** 4).mean() / (z ** 2).mean() ** 2).item() - 3) < 0.05  # kurtosis
    assert abs((z > 1.96).double().mean().item() - 0.025) < 0.002
    corr = torch.corrcoef(z)  # distinct keys: uncorrelated streams
    off = corr[~torch.eye(8, dtype=torch.bool)]
    assert off.abs().max() < 4 / math.sqrt(50_000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_bits_on_cuda() -> None:
    keys = kr.key32(9, torch.arange(6))
    cpu = kr.uniform(keys, 4096, dtype=torch.float64)
    gpu = kr.uniform(keys.cuda(), 4096, dtype=torch.float64).cpu()
    assert torch.equal(cpu, gpu)
    assert torch.allclose(kr.normal(keys, 4096), kr.normal(keys.cuda(), 4096).cpu(), atol=1e-6)
