"""An example xrbench attack plugin: the Dombrowski et al. manipulation (PROTOCOL 5.2) at ten
times the profile's learning rate, a coarser search that the worst-case ensemble (PROTOCOL
5.8) can add with ``xrbench evaluate --attacks adam_lr10``.

An attack is a function ``attack(model, explainer, x_victim, x_target, *, pairs, budget)``
that returns the manipulated images: ``x_victim`` and ``x_target`` are (P, C, H, W) batches of
pairs, pixels in [0, 1]; ``pairs`` (P, 2) their (victim, target) indices in the subset (for
random numbers keyed per pair); ``budget`` the protocol's sizes
(:class:`xrbench.attacks.ensemble.Budget`: ``iterations``, ``lr``, ``eps_pgd``, ``seed``).
xrbench judges what it returns on the original model itself (L_e and whether the victim's
class is kept), so an attack only proposes images.
"""

from __future__ import annotations

from typing import Any

import torch

from xrbench.attacks.ensemble import Budget
from xrbench.attacks.manipulation import manipulate

__version__ = "0.1.0"

#: multiple of the profile's Adam learning rate
LR_FACTOR = 10.0


def adam_lr10(model: torch.nn.Module, explainer: Any, x_victim: torch.Tensor,
              x_target: torch.Tensor, *, pairs: torch.Tensor, budget: Budget) -> torch.Tensor:
    """The paper's attack, same objective and iterations, Adam at 10x the learning rate."""
    res = manipulate(model, explainer, x_victim, x_target, iterations=budget.iterations,
                     lr=LR_FACTOR * budget.lr, trace_points=())
    assert res.x_adv is not None
    return res.x_adv


adam_lr10.version = __version__  # type: ignore[attr-defined]  (recorded in the entry)
