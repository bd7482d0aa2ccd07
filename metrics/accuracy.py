"""Clean and PGD accuracy (PROTOCOL.md section 5.1).

L-inf PGD (Madry et al. 2018) with ``eps`` in pixel units, ``steps`` steps of size
``2.5 * eps / steps``, a uniform random start in the eps-ball, cross-entropy, clamping to
[0, 1]; :func:`xrbench.attacks.pgd.pgd` does the attack. Per-example bool tensors are returned
for bootstrap intervals; ``clean_acc`` and ``pgd_acc`` are percentages.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xrbench.attacks.pgd import eval_mode, pgd, pgd_step_size
from xrbench.chunking import chunk_slices
from xrbench.data import ImageSplit

log = logging.getLogger(__name__)


def accuracy_under_pgd(
    model: nn.Module,
    split: ImageSplit,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    indices: torch.Tensor | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Clean and PGD accuracy of ``model`` on ``split`` (all of it, or rows ``indices``).

    eps: L-inf radius in pixel units (0.3 grey, 8/255 RGB); ``steps`` PGD steps of size
    ``step_size`` (default ``2.5 * eps / steps``), from a uniform random start in the ball
    unless ``random_start`` is False. ``generator`` draws the random starts; it must live on
    the model's device; default ``torch.Generator(device).manual_seed(0)``. Returns ``clean_correct`` and
    ``pgd_correct`` (N,) bool (CPU), ``indices`` (N,) int64, ``clean_acc`` and ``pgd_acc`` in
    percent, and the attack ``params``.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    if indices is None:
        indices = torch.arange(len(split))
    indices = torch.as_tensor(indices, dtype=torch.long)
    if step_size is None:
        step_size = pgd_step_size(eps, steps)
    clean, robust = [], []
    with eval_mode(model):
        for s in tqdm(chunk_slices(len(indices), batch_size), desc="pgd", disable=not progress):
            x, y = split.get_batch(indices[s])
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean.append((model(x).argmax(dim=1) == y).cpu())
            x_adv = pgd(model, x, y, eps=eps, steps=steps, step_size=step_size,
                        random_start=random_start, generator=generator)
            with torch.no_grad():
                robust.append((model(x_adv).argmax(dim=1) == y).cpu())
    clean_correct = torch.cat(clean) if clean else torch.zeros(0, dtype=torch.bool)
    pgd_correct = torch.cat(robust) if robust else torch.zeros(0, dtype=torch.bool)
    n = max(len(indices), 1)
    out = {
        "clean_correct": clean_correct,
        "pgd_correct": pgd_correct,
        "indices": indices,
        "clean_acc": 100.0 * float(clean_correct.sum()) / n,
        "pgd_acc": 100.0 * float(pgd_correct.sum()) / n,
        "params": {"eps": float(eps), "steps": steps, "step_size": step_size,
                   "random_start": random_start, "loss": "cross_entropy", "n": len(indices)},
    }
    log.info("clean %.2f%%, PGD(eps=%g, %d steps) %.2f%% on %d images",
             out["clean_acc"], eps, steps, out["pgd_acc"], len(indices))
    return out
