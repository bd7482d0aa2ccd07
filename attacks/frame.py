"""Frame-target explanation manipulation for Adv-Insertion (Joo et al. 2023),
PROTOCOL.md section 5.4.

Starting at ``x_adv = x``, Adam minimises, for each image,

    0.5 * sum_pixels((max_map(a(x_adv, y)) - frame)^2) + 0.5 * mean_classes((f(x_adv) - f(x))^2)

(f the logits), and after each step clips the perturbation to [-eps, eps] and the image to
[0, 1]. Reference: RobustAGA ``project/module/test_taps_saps.py`` (``prepare_target``: a
32 x 32 map with a border of width 5, 35 of 224 for ImageNet; ``get_adv_img``: Adam,
``lr = 4 * eps / adv_num_iter``, 100 iterations, ``adv_gamma`` 0.5, eps 4/255 by default)
and ``test_adv_insertion.py``.

Choices (the protocol or the reference is silent):

- The explained class ``y`` is what the caller passes; Adv-Insertion passes the TRUE label,
  as the reference does (``get_adv_img(x_s, y_s, ...)`` explains ``y_s``).
- The objective is a SUM over images of the per-image loss (the reference divides the map
  term by the batch size and averages the logit term over the batch): Adam is elementwise,
  so each image's trajectory does not depend on its batch.
- Border width ``round(5 * S / 32)`` rounds halves up (S = 16 gives 3), at least 1; S = 8
  gives 1, 28 gives 4, 32 gives 5, 64 gives 10, 224 gives 35.
- The attack shares the manipulation's loop and attack model (``adam_attack`` and
  ``attack_copy`` of :mod:`xrbench.attacks.manipulation`): it differentiates the frozen inference copy (BatchNorm folded; the same function up to
  float32 rounding). ReLU models: that copy has the Softplus surrogate of PROTOCOL section 0
  (beta 10 to 100, geometric); the reference uses a fixed beta 20. Clean logits come from
  the original model.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import nn

from xrbench.explainers import max_map

from .manipulation import adam_attack, attack_copy
from .pgd import eval_mode

log = logging.getLogger(__name__)

Explain = Callable[..., torch.Tensor]  # explain(model, x, target, create_graph=False)

FRAME_ITERATIONS = 100  # RobustAGA test_taps_saps.py --adv_num_iter
SMALL_MODELS = ("convnet", "lenet")


def adv_insertion_eps(model_name: str) -> float:
    """L-inf budget of the frame manipulation in pixel units: 4/255 for ``convnet`` and
    ``lenet``, 2/255 for the ResNet family and every other model (PROTOCOL 5.4)."""
    return 4 / 255 if model_name in SMALL_MODELS else 2 / 255


def frame_lr(eps: float, iterations: int) -> float:
    """The reference's Adam learning rate of the frame attack, ``4 * eps / iterations``
    (RobustAGA ``test_taps_saps.py``: ``4 * eps / adv_num_iter``), pixel units."""
    return 4 * eps / iterations


def frame_width(size: int) -> int:
    """Border width ``round(5 * size / 32)`` (halves up), at least 1."""
    return max(1, math.floor(5 * size / 32 + 0.5))


def frame_target(size: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(S, S) target map: ones on a border of width :func:`frame_width` (S), zeros inside.

    The reference's ``prepare_target`` for S = 32 (width 5) and S = 224 (width 35).
    """
    k = frame_width(size)
    frame = torch.ones(size, size, device=device, dtype=dtype)
    if size > 2 * k:
        frame[k:size - k, k:size - k] = 0
    return frame


def frame_loss(model: nn.Module, explainer: Explain, x_adv: torch.Tensor, y: torch.Tensor,
               logits_clean: torch.Tensor, frame: torch.Tensor, create_graph: bool = False
               ) -> torch.Tensor:
    """Per-image objective (N,): ``0.5 * sum((max_map(a(x_adv, y)) - frame)^2)
    + 0.5 * mean((f(x_adv) - logits_clean)^2)``; frame (H, W), logits_clean (N, K)."""
    h = max_map(explainer(model, x_adv, y, create_graph=create_graph))
    map_term = ((h - frame) ** 2).flatten(1).sum(dim=1)
    out_term = ((model(x_adv) - logits_clean) ** 2).mean(dim=1)
    return 0.5 * map_term + 0.5 * out_term


def frame_manipulation(
    model: nn.Module,
    explainer: Explain,
    x: torch.Tensor,
    y_explained: torch.Tensor,
    *,
    eps: float,
    iterations: int = FRAME_ITERATIONS,
    lr: float | None = None,
    relu_beta_range: tuple[float, float] = (10.0, 100.0),
) -> torch.Tensor:
    """x_adv (N, C, H, W), detached, with ``|x_adv - x|_inf <= eps`` and values in [0, 1],
    whose ``max_map`` for class ``y_explained`` (N,) is pushed toward the frame target.

    x: (N, C, H, W) pixels in [0, 1], square images; eps in pixel units; ``lr`` defaults to
    ``4 * eps / iterations`` (the reference; 4 * eps / 100 at the default 100 iterations).
    The model runs in eval mode (restored afterwards); gradients are taken with respect to
    x_adv only (``torch.autograd.grad``), so model parameters never receive ``.grad``.
    """
    x = x.detach()
    if eps <= 0 or iterations <= 0:
        return x.clone()
    if lr is None:
        lr = frame_lr(eps, iterations)
    frame = frame_target(x.shape[-1], device=x.device, dtype=x.dtype)
    y_explained = y_explained.to(x.device)
    with eval_mode(model):
        with torch.no_grad():
            logits_clean = model(x)
        attack_model, softplus = attack_copy(model, relu_beta_range[0])
        if softplus:
            log.info("ReLU model: frame attack on a Softplus surrogate, beta %g -> %g",
                     *relu_beta_range)
        return adam_attack(
            x, lambda x_adv, _: frame_loss(attack_model, explainer, x_adv, y_explained,
                                           logits_clean, frame, create_graph=True),
            lambda x_adv: (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0),
            iterations=iterations, lr=lr, softplus=softplus, relu_beta_range=relu_beta_range)
