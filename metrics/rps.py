"""Random perturbation similarity, RPS (Joo et al. 2023), PROTOCOL.md section 5.3.

For each image x with true label y and each eps in ``card.rps_eps`` ({4, 8, 16}/255):
``draws`` (10) uniform perturbations ``d ~ U[-eps, eps]^dim``, ``x' = clamp(x + d, 0, 1)``,
and the similarity of ``max_map(a(x', y))`` to ``max_map(a(x, y))`` by cosine, Pearson
correlation and SSIM (:mod:`xrbench.metrics.similarity`). The per-image value is the mean over
the draws; the reported number is the mean over images with a bootstrap interval
(:class:`xrbench.stages.RPS`). Reference: RobustAGA ``project/module/test_rps.py`` (true label,
``rand_num_iter`` 10, ``rand_eps`` in units of 1/255; ``max_map`` is its ``standard``
normalisation of ``abs`` maps).

Choices the references leave open:

- Common random numbers: one draw ``u ~ U[-1, 1]^dim`` per (image, draw) is shared by all
  eps, ``d = eps * u``; comparisons across eps are then less noisy. (The reference runs each
  eps separately with fresh noise.)
- The noise is drawn on the CPU from the caller's CPU ``generator``, image-major in
  the order of ``x``, then moved to the model's device: the numbers depend on the seed and
  the images only, not on ``batch_size`` or the device.
- Clamping is to the pixel box [0, 1] (the reference clamps to the batch's min and max).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from xrbench.attacks.pgd import eval_mode
from xrbench.chunking import chunk_rows, chunk_slices
from xrbench.data import RPS_EPS
from xrbench.explainers import max_map
from xrbench.utils import model_device

from .similarity import SIMILARITIES

log = logging.getLogger(__name__)

Explain = Callable[..., torch.Tensor]  # explain(model, x, target, create_graph=False)
RPS_DRAWS = 10  # RobustAGA test_rps.py --rand_num_iter


def rps(
    model: nn.Module,
    explainer: Explain,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float] = RPS_EPS,
    draws: int = RPS_DRAWS,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    similarities: Sequence[str] = tuple(SIMILARITIES),
) -> dict[str, dict[float, torch.Tensor]]:
    """Per-image RPS: ``{similarity: {eps: (N,) tensor}}``, each value the mean over
    ``draws`` of sim(max_map(a(x')), max_map(a(x))).

    x: (N, C, H, W) pixels in [0, 1]; y: (N,) int64 TRUE labels (the explained class, as in
    the reference); eps in pixel units. ``batch_size``: perturbed inputs per explainer call;
    a chunk of ``max(1, batch_size // (draws * len(eps)))`` images sends all its draws for
    all eps through ONE explainer call. The model runs in eval mode (restored afterwards).
    Results are float32 on ``x``'s device, in the order of ``x``.
    """
    unknown = [s for s in similarities if s not in SIMILARITIES]
    if unknown:
        raise ValueError(f"unknown similarities {unknown}; use {sorted(SIMILARITIES)}")
    eps = tuple(float(e) for e in eps)
    n, dim = x.shape[0], x.shape[1:]
    device = model_device(model, x.device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if gen.device.type != "cpu":
        raise ValueError("rps draws its noise on the CPU (so that batch size and device never "
                         "change a number): pass a CPU generator")
    eps_t = torch.tensor(eps, dtype=x.dtype).view(-1, 1, 1, *([1] * len(dim)))
    out = {s: {e: torch.empty(n, device=x.device) for e in eps} for s in similarities}
    with eval_mode(model):
        for chunk in chunk_slices(n, chunk_rows(batch_size, draws * len(eps))):
            xc = x[chunk]
            yc = y[chunk]
            m = xc.shape[0]
            # u: (m, draws, *dim) on the CPU, image-major, then d = eps * u: (E, m, draws, ...)
            u = 2 * torch.rand((m, draws, *dim), generator=gen, dtype=x.dtype) - 1
            xp = (xc.detach().cpu().unsqueeze(1) + eps_t * u.unsqueeze(0)).clamp(0, 1)
            xc, yc = xc.to(device), yc.to(device)
            h = max_map(explainer(model, xc, yc)).detach()               # (m, H, W)
            hp = max_map(explainer(model, xp.flatten(0, 2).to(device),
                                   yc.repeat_interleave(draws).repeat(len(eps)))).detach()
            hp = hp.view(len(eps), m, draws, *h.shape[1:])
            href = h.unsqueeze(0).unsqueeze(2).expand_as(hp)
            for s in similarities:
                sim = SIMILARITIES[s](hp.flatten(0, 2), href.flatten(0, 2))
                sim = sim.view(len(eps), m, draws).mean(dim=2).float().to(x.device)
                for k, e in enumerate(eps):
                    out[s][e][chunk] = sim[k]
    log.debug("rps: %d images, %d draws, eps %s", n, draws, eps)
    return out
