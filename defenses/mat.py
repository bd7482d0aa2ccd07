"""``mat``: Madry adversarial training (Madry et al. 2018; PROTOCOL.md section 7).

Loss: ``CE(f(x_adv), y)`` with ``x_adv`` from L-inf PGD inside the eps-ball around x:
``eps = eps_pgd`` of the dataset card, 10 steps of ``2.5 * eps / 10``, uniform random start
(SEP paper section 5.1: eps 0.3 grey / 8/255 RGB, 10 steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.attacks.pgd import pgd
from xrbench.data import DatasetCard
from xrbench.registry import defenses

from .base import Defense, Recipe


@dataclass(frozen=True)
class MatRecipe(Recipe):
    """The common trainer plus the PGD that makes the training examples."""

    eps: float | None = None  # L-inf radius, pixel units; None -> card.eps_pgd (SEP paper 5.1)
    pgd_steps: int = 10  # PGD iterations per batch (SEP paper 5.1)
    pgd_step_factor: float = 2.5  # step size = pgd_step_factor * eps / pgd_steps (PROTOCOL 7)
    random_start: bool = True  # start uniformly in the eps-ball (Madry et al. 2018)

    def resolve(self, card: DatasetCard, model_name: str) -> "MatRecipe":
        """Fill ``eps`` with the dataset's ``eps_pgd`` (0.3 grey, 8/255 RGB)."""
        return self if self.eps is not None else dataclasses.replace(self, eps=card.eps_pgd)


@defenses.register("mat", "Madry adversarial training: cross-entropy on L-inf PGD examples")
class Mat(Defense):
    """``CE(f(x_adv), y)``, ``x_adv = PGD(x)`` (Madry et al. 2018, eq. 2.1)."""

    Recipe = MatRecipe
    recipe: MatRecipe

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv (B, C, S, S) in [0, 1], ``|x_adv - x|_inf <= eps``; detached. PGD runs the
        model in eval mode (``attacks.pgd``) and draws its start from the TrainState
        generator."""
        r = self.recipe
        assert r.eps is not None, "resolve() the recipe first"
        return pgd(model, x, y, eps=r.eps, steps=r.pgd_steps,
                   step_size=r.pgd_step_factor * r.eps / max(1, r.pgd_steps),
                   random_start=r.random_start, generator=self.state.generator)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar CE on the adversarial batch, model in its current (training) mode."""
        return F.cross_entropy(model(self.adversarial(model, x, y)), y)
