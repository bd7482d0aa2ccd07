"""Untargeted L-inf PGD (Madry et al. 2018), PROTOCOL.md sections 5.1, 5.5 and 7."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards
    (torchattacks' habit: attacks never leave BatchNorm statistics changed)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cross_entropy_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def pgd_step_size(eps: float, steps: int) -> float:
    """The protocol's PGD step, ``2.5 * eps / steps`` (Madry et al. 2018), pixel units."""
    return 2.5 * eps / steps if steps > 0 else 0.0


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = cross_entropy_per_example,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """L-inf PGD maximising ``loss_fn(model(x_adv), y)`` (summed over the batch).

    x: (N, C, H, W) pixels in [0, 1]; y: whatever ``loss_fn`` takes (labels (N,) for CE);
    eps and ``step_size`` in pixel units (default step ``2.5 * eps / steps``). The start is
    ``x_init`` if given, else uniform in the eps-ball when ``random_start``, else x. After
    every step x_adv is projected to the eps-ball around x and clamped to [0, 1]. The model is
    run in eval mode and restored. Returns a detached tensor shaped like x.
    """
    if step_size is None:
        step_size = pgd_step_size(eps, steps)
    x = x.detach()
    if eps <= 0 or steps <= 0:
        return x.clone()
    if x_init is not None:
        x_adv = x_init.detach().clone()
    elif random_start:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + (2 * u - 1) * eps
    else:
        x_adv = x.clone()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()
