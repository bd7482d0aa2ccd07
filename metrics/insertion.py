"""Insertion and Adv-Insertion (Joo et al. 2023), PROTOCOL.md section 5.4.

Insertion: for each ratio r in {0, 0.05, ..., 0.95} (20 values), keep the top ``floor(r * H*W)``
pixel locations of the ranking map (all channels of a kept pixel) and set every other pixel to
the dataset mean colour (``model.normalize.mean``, i.e. 0 in normalised space, what the
reference's ``x_s * mask`` on normalised tensors gives). The per-image score is the mean over
the ratios of the softmax probability of the TRUE label, in percent. The ranking map is
``max_map(a(x, y))`` for Insertion and ``max_map(a(x_adv, y))`` for Adv-Insertion, where
``x_adv`` is the frame-target manipulation of x (:mod:`xrbench.attacks.frame`); the inserted
pixels always come from the clean x. :func:`insertion_curves` and :func:`adv_insertion_curves`
give the per-ratio probabilities behind the scores (the stages keep them in the entry's
per-example file, as ``insertion/curve`` and ``adv_insertion/curve``, (R, N), for the
figures). References: RobustAGA ``project/module/test_insertion.py``,
``test_adv_insertion.py`` (``perturbation``), ``test_taps_saps.py`` (``get_adv_img``).

Choices (the ratios, the budget and the attack's settings are recorded in each entry):

- Ratios: the protocol's (version 2) 20 values 0, 0.05, ..., 0.95, the reference's ``i / 20``
  for i = 0..19 (no r = 1: the whole image is never put back). Version 1 also scored r = 1,
  which raised the scores by 0.4 to 1.3 points over the reference's.
- Exactly ``floor(r * H*W + 1e-9)`` pixels are kept (the 1e-9 guards against r * H*W landing
  a rounding error below an integer). Ties in the ranking are broken stably by flat pixel
  index (row-major; the lower index is inserted first). The reference keeps the pixels
  strictly above the value at rank ``int(r * H*W)``, so it keeps fewer pixels when that
  value is tied.
- The explained class is the true label in both metrics, as in the reference.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.attacks.frame import FRAME_ITERATIONS, frame_manipulation
from xrbench.attacks.pgd import eval_mode
from xrbench.chunking import chunk_rows, chunk_slices, map_chunks
from xrbench.explainers import max_map, split_model
from xrbench.utils import model_device

Explain = Callable[..., torch.Tensor]  # explain(model, x, target, create_graph=False)

INSERTION_RATIOS: tuple[float, ...] = tuple(i / 20 for i in range(20))


def insertion_ranks(h: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel location, 0 = inserted first: (N, H, W) map -> (N, H*W) int64.

    Descending by map value, ties by ascending flat index (stable sort).
    """
    order = torch.sort(h.flatten(1), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                   .expand_as(order).contiguous())
    return ranks


def kept_counts(ratios: Sequence[float], n_pixels: int) -> list[int]:
    """``floor(r * n_pixels)`` per ratio (with a 1e-9 guard against rounding below)."""
    return [min(n_pixels, max(0, math.floor(r * n_pixels + 1e-9))) for r in ratios]


def insertion_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    h: torch.Tensor,
    *,
    ratios: Sequence[float] = INSERTION_RATIOS,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Softmax probability of class ``y`` after inserting the top pixels of ``h``:
    (N, R) in [0, 1], column j for ``ratios[j]``.

    x: (N, C, H, W) clean pixels in [0, 1]; y: (N,) int64; h: (N, H, W) ranking map. All
    ratios of a chunk of ``max(1, batch_size // R)`` images go through ONE forward pass; the
    model runs in eval mode (restored afterwards). Result on ``x``'s device, float32.
    """
    device = model_device(model, x.device)
    _, mean, _ = split_model(model)
    counts = torch.tensor(kept_counts(ratios, h.shape[-2] * h.shape[-1]), device=device)
    r = len(counts)
    out = torch.empty(x.shape[0], r, device=x.device)
    with eval_mode(model), torch.no_grad():
        for s in chunk_slices(x.shape[0], chunk_rows(batch_size, r)):  # R rows per image
            xc = x[s].to(device)
            yc = y[s].to(device)
            m = xc.shape[0]
            ranks = insertion_ranks(h[s].to(device))                              # (m, HW)
            keep = (ranks.unsqueeze(0) < counts.view(-1, 1, 1)).view(r, m, 1, *xc.shape[-2:])
            fill = torch.as_tensor(mean, dtype=xc.dtype, device=device).expand_as(xc)
            x_ins = torch.where(keep, xc.unsqueeze(0), fill.unsqueeze(0))         # (R, m, ...)
            prob = F.softmax(model(x_ins.flatten(0, 1)).float(), dim=1)
            p_y = prob.gather(1, yc.repeat(r).view(-1, 1)).view(r, m)
            out[s] = p_y.t().to(x.device)
    return out


def insertion_curves(
    model: nn.Module,
    explainer: Explain,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ratios: Sequence[float] = INSERTION_RATIOS,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Per-image Insertion curve, (N, R) in [0, 1]: column j is the softmax probability of
    the TRUE label y (N,) after inserting the top ``ratios[j]`` share of the pixels of
    ``max_map(a(x, y))`` into the mean-colour image (RobustAGA ``test_insertion.py``).
    The Insertion score is ``100 * curves.mean(1)`` (the stage's ``scores``)."""
    device = model_device(model, x.device)
    with eval_mode(model):
        h = map_chunks(lambda xc, yc: max_map(explainer(model, xc.to(device),
                                                        yc.to(device))).detach(),
                       x, y, rows=batch_size)
    return insertion_curve(model, x, y, h, ratios=ratios, batch_size=batch_size)


def adv_insertion_curves(
    model: nn.Module,
    explainer: Explain,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    iterations: int = FRAME_ITERATIONS,
    lr: float | None = None,
    ratios: Sequence[float] = INSERTION_RATIOS,
    attack_batch: int = 128,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Per-image Adv-Insertion curve, (N, R) in [0, 1]: :func:`insertion_curve` of the CLEAN
    pixels of x in the order of ``max_map(a(x_adv, y))``, x_adv the frame-target
    manipulation of x for the true label y with L-inf budget ``eps`` (pixel units; see
    :func:`xrbench.attacks.frame.adv_insertion_eps`). RobustAGA ``test_adv_insertion.py``.
    The Adv-Insertion score is ``100 * curves.mean(1)`` (the stage's ``scores``).

    The attack runs ``attack_batch`` images at a time (its objective is a per-image sum, so
    the result does not depend on the chunking); the map of x_adv is taken on the original
    model.
    """
    device = model_device(model, x.device)

    def adv_map(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        xc, yc = xc.to(device), yc.to(device)
        x_adv = frame_manipulation(model, explainer, xc, yc, eps=eps, iterations=iterations,
                                   lr=lr)
        return max_map(explainer(model, x_adv, yc)).detach()

    with eval_mode(model):
        h_adv = map_chunks(adv_map, x, y, rows=attack_batch)
    return insertion_curve(model, x, y, h_adv, ratios=ratios, batch_size=batch_size)

