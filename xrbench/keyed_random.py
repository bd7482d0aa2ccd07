"""Counter-based random numbers: each value is a hash of (key, position), so an image's noise is
fixed by its own key alone, never by which other images share its batch, its chunk, its shard
or its device.

A generator (``torch.Generator``) hands out one stream in order: split the same images into
other chunks (or shards on other machines) and each image gets other numbers. Where a protocol
result must not depend on how the work is cut (RelEx masks, retrieval's PGD start: issue 10's
sharded evaluation and batched RelEx), xrbench draws from these functions instead:

- :func:`key32` folds integers (a seed, a stream tag, an image's index, an iteration) into one
  32-bit key per item, (n,) int64 holding values in [0, 2**32);
- :func:`uniform` and :func:`normal` give ``numel`` values per key, (n, numel).

The hash is the "lowbias32" integer finaliser (two xor-shift-multiply rounds, a bijection on
32-bit words), applied twice per value with the key mixed in between; the 32-bit products are
computed in int64 with constants below 2**31 in absolute value, so no operation overflows (identical bits on every
device). Uniforms are ``(h + 0.5) / 2**32`` in (0, 1); normals use the Box-Muller transform
of two uniforms, in float64, then cast.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF
_MUL_A = 0x7FEB352D
_MUL_B = 0x846CA68B
_GOLDEN = 0x9E3779B9  # separates the two hash rounds and the two Box-Muller uniforms

IntLike = int | torch.Tensor


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for x in [0, 2**32) (int64) and a 32-bit constant c, without
    overflowing int64: a c above 2**31 is used as ``c - 2**32`` (the same residue), so
    ``|x * c| < 2**63``; the low 32 bits of the two's-complement product are the residue."""
    return (x * (c - 2 ** 32 if c >= 2 ** 31 else c)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 finaliser, elementwise on int64 values in [0, 2**32): a bijection of
    32-bit words whose output bits each depend on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL_A)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL_B)
    return x ^ (x >> 16)


def key32(*parts: IntLike, device: torch.device | str | None = None) -> torch.Tensor:
    """One 32-bit key per item from integer ``parts`` (Python ints in [0, 2**64), or int
    tensors >= 0 broadcasting together): each part is folded in turn as two 32-bit words (low,
    high), so parts of any size never alias one another. Returns int64 values in
    [0, 2**32), shaped like the broadcast parts (0-d for ints only)."""
    h = torch.tensor(_GOLDEN, dtype=torch.int64, device=device)
    for part in parts:
        if isinstance(part, torch.Tensor):
            p = part.to(device=h.device, dtype=torch.int64)
            if bool((p < 0).any()):
                raise ValueError("key parts must be >= 0")
            words: tuple[IntLike, IntLike] = (p & MASK32, p >> 32)
        else:
            if not 0 <= int(part) < 2 ** 64:
                raise ValueError(f"key part {part} is outside [0, 2**64)")
            words = (int(part) & MASK32, int(part) >> 32)
        for w in words:
            h = mix32(h ^ w)
    return h


def _bits(keys: torch.Tensor, numel: int, offset: int = 0) -> torch.Tensor:
    """(n, numel) 32-bit hashes of (key, position) for positions offset .. offset+numel-1."""
    pos = torch.arange(offset, offset + numel, dtype=torch.int64, device=keys.device)
    k = keys.reshape(-1, 1).to(torch.int64)
    return mix32(mix32(pos.unsqueeze(0) ^ k) ^ (k ^ _GOLDEN))


def uniform(keys: torch.Tensor, numel: int, *, dtype: torch.dtype = torch.float32
            ) -> torch.Tensor:
    """``numel`` uniform values in (0, 1) per key: (len(keys), numel), on the keys' device."""
    u = (_bits(keys, numel).to(torch.float64) + 0.5) * (2.0 ** -32)
    return u.to(dtype)


def normal(keys: torch.Tensor, numel: int, *, dtype: torch.dtype = torch.float32
           ) -> torch.Tensor:
    """``numel`` standard normal values per key: (len(keys), numel), on the keys' device.

    Box-Muller on pairs of uniforms from two hash streams, both of its outputs used: value
    ``2j`` is ``sqrt(-2 ln u1_j) cos(2 pi u2_j)`` and value ``2j + 1`` the same with sin."""
    k = keys.reshape(-1).to(torch.int64)
    half = (numel + 1) // 2
    u1 = (_bits(k, half).to(torch.float64) + 0.5) * (2.0 ** -32)
    angle = (_bits(k ^ 0x5BD1E995, half).to(torch.float64) + 0.5) * (2.0 ** -32 * 2 * math.pi)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=2)
    return z.flatten(1)[:, :numel].to(dtype)


def stream_keys(seed: int, tag: int, ids: torch.Tensor, *extra: IntLike) -> torch.Tensor:
    """Keys of items ``ids`` (n,) in stream ``tag`` of ``seed``, with ``extra`` parts (e.g.
    an iteration or an eps index): ``key32(seed, tag, *extra, ids)``."""
    return key32(seed, tag, *extra, ids, device=ids.device)


__all__: Sequence[str] = ("key32", "mix32", "uniform", "normal", "stream_keys")
