"""Input loss landscapes (PROTOCOL.md section 5.6; SEP paper section 4, eq. 5).

Explanation loss landscape: ``f(gamma) = L_e(x_v + gamma * d, x_t)`` with ``d ~ N(0, I)``
(SEP paper eq. 5), averaged over pairs (victim v, target t); cross-entropy landscape:
``CE(f(x + gamma * d), y)`` averaged over images (SEP paper Fig. 1b, after Li & Spratling
2023). ``d`` is drawn once per pair (per image for CE) from the caller's generator and reused
for every gamma, so each curve is a 1-D slice along a fixed random direction.

Choices where the paper is silent (protocol parameters, recorded by the caller):
- The perturbed input is **not** clamped to [0, 1] by default: eq. 5 adds ``gamma * d`` to
  ``x_v`` with no projection, and a clamp would bend the direction (in pixel space most
  digits pixels sit at 0 or 1). ``clamp=True`` clamps to [0, 1].
- The explained class of the perturbed victim is the prediction on clean ``x_v`` (as in the
  manipulation attack, PROTOCOL 5.2); the target map is ``x_t``'s explanation for ``x_t``'s
  own prediction.
- ``d`` is standard normal in pixel units (pixel space is where noise lives, PROTOCOL 0).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.attacks.pgd import eval_mode
from xrbench.explainers import expl_loss, sum_map
from xrbench.chunking import (LANDSCAPE_FORWARD_FACTOR, LANDSCAPE_PIXELS, chunk_pixels,
                              chunk_slices, map_chunks, rows_per_chunk)

from .retrieval import predict

log = logging.getLogger(__name__)

Explainer = Callable[..., torch.Tensor]


def _as_gammas(gammas: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(gammas, dtype=like.dtype, device=like.device).flatten()


def _pixels(max_batch_pixels: int | None, like: torch.Tensor) -> int:
    """The explainer calls' pixel budget: ``max_batch_pixels``, default
    :data:`~xrbench.chunking.LANDSCAPE_PIXELS` for ``like``'s device."""
    if max_batch_pixels is None:
        return chunk_pixels(LANDSCAPE_PIXELS, like.device)
    return max_batch_pixels


def _maps(model: nn.Module, explainer: Explainer, x: torch.Tensor, c: torch.Tensor,
          max_batch_pixels: int) -> torch.Tensor:
    """sum_map of the explanation of x (n, C, H, W) for classes c (n,), chunked: (n, H, W)."""
    return map_chunks(lambda xc, cc: sum_map(explainer(model, xc, cc).detach()), x, c,
                      rows=rows_per_chunk(x, max_batch_pixels))


def explanation_landscape_pairs(
    model: nn.Module,
    explainer: Explainer,
    images: torch.Tensor,
    pairs: torch.Tensor,
    gammas: Sequence[float] | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clamp: bool = False,
    max_batch_pixels: int | None = None,
) -> torch.Tensor:
    """Per-pair explanation landscape ``L_e(x_v + gamma * d_p, x_t)``: (G, P).

    images: (M, C, H, W) pixels in [0, 1]; pairs: int64 (P, 2) rows (victim, target) indexing
    images; gammas: (G,) in pixel units (gamma = 0 gives the unperturbed L_e, the attack's
    Expl@start); d_p ~ N(0, I) shaped like an image, one per pair, drawn in pair order from
    ``generator``. L_e = mean over pixels of the squared difference of sum_maps (PROTOCOL 0).
    All G * P perturbed victims are explained in chunks of ``max_batch_pixels`` input values
    (default :data:`~xrbench.chunking.LANDSCAPE_PIXELS` for the device; no per-pair loop);
    predictions take :data:`~xrbench.chunking.LANDSCAPE_FORWARD_FACTOR` times as many.
    """
    images = images.detach()
    max_batch_pixels = _pixels(max_batch_pixels, images)
    pairs = torch.as_tensor(pairs, dtype=torch.long, device=images.device)
    g = _as_gammas(gammas, images)
    n_pairs = pairs.shape[0]
    d = torch.randn((n_pairs, *images.shape[1:]), generator=generator, device=images.device,
                    dtype=images.dtype)
    out = torch.empty(g.numel() * n_pairs, device=images.device, dtype=images.dtype)
    log.info("explanation landscape: %d pairs x %d gammas", n_pairs, g.numel())
    with eval_mode(model):
        pred = predict(model, images, LANDSCAPE_FORWARD_FACTOR * max_batch_pixels)
        used = torch.unique(pairs)
        target_maps = torch.zeros((len(images), *images.shape[2:]), device=images.device,
                                  dtype=images.dtype)
        target_maps[used] = _maps(model, explainer, images[used], pred[used], max_batch_pixels)
        for s in chunk_slices(out.numel(), rows_per_chunk(images, max_batch_pixels)):
            r = torch.arange(s.start, s.stop, device=images.device)
            gi, pi = r // n_pairs, r % n_pairs  # row r = (gamma gi, pair pi)
            v, t = pairs[pi, 0], pairs[pi, 1]
            x_pert = images[v] + g[gi].view(-1, 1, 1, 1) * d[pi]
            if clamp:
                x_pert = x_pert.clamp(0, 1)
            maps = sum_map(explainer(model, x_pert, pred[v]).detach())
            out[s] = expl_loss(maps, target_maps[t])
    return out.view(g.numel(), n_pairs)


def ce_landscape_per_image(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    gammas: Sequence[float] | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clamp: bool = False,
    max_batch_pixels: int | None = None,
) -> torch.Tensor:
    """Per-image cross-entropy landscape ``CE(f(x + gamma * d_i), y_i)``: (G, N), in nats.

    x: (N, C, H, W) pixels in [0, 1]; y: int64 (N,) labels; d_i ~ N(0, I) one per image, drawn
    in image order from ``generator``; gammas (G,) in pixel units. Chunked over G * N rows,
    :data:`~xrbench.chunking.LANDSCAPE_FORWARD_FACTOR` times ``max_batch_pixels`` (default
    :data:`~xrbench.chunking.LANDSCAPE_PIXELS` for the device) input values per chunk.
    """
    x = x.detach()
    max_batch_pixels = _pixels(max_batch_pixels, x)
    g = _as_gammas(gammas, x)
    n = x.shape[0]
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    out = torch.empty(g.numel() * n, device=x.device, dtype=x.dtype)
    rows = rows_per_chunk(x, LANDSCAPE_FORWARD_FACTOR * max_batch_pixels)
    with eval_mode(model), torch.no_grad():
        for s in chunk_slices(out.numel(), rows):
            r = torch.arange(s.start, s.stop, device=x.device)
            gi, i = r // n, r % n
            x_pert = x[i] + g[gi].view(-1, 1, 1, 1) * d[i]
            if clamp:
                x_pert = x_pert.clamp(0, 1)
            out[s] = F.cross_entropy(model(x_pert), y[i], reduction="none")
    return out.view(g.numel(), n)

