"""``gaussian_aug``: an example third-party xrbench defense (Gaussian noise augmentation).

Loss: ``CE(f(clamp(x + sigma * n, 0, 1)), y)`` with ``n ~ N(0, I)``, the classic noise
augmentation baseline (e.g. Cohen et al. 2019 train with it before randomized smoothing).
xrbench finds it through the entry point in ``pyproject.toml``; nothing here imports the
registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.defenses.base import Defense, Recipe

__all__ = ["GaussianAug", "GaussianAugRecipe"]


@dataclass(frozen=True)
class GaussianAugRecipe(Recipe):
    """The common trainer (epochs 25, batch 64, Adam lr 1e-3) plus the noise level."""

    sigma: float = 0.1  # std of the Gaussian noise, pixel units (images are in [0, 1])
    clamp: bool = True  # clamp the noisy image back to [0, 1]


class GaussianAug(Defense):
    """Gaussian noise augmentation: cross-entropy on x + N(0, sigma^2), clamped to [0, 1]."""

    Recipe = GaussianAugRecipe
    recipe: GaussianAugRecipe

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S) in [0, 1] plus Gaussian noise from the seeded TrainState generator."""
        n = torch.randn(x.shape, generator=self.state.generator, device=x.device, dtype=x.dtype)
        x_noisy = x + self.recipe.sigma * n
        return x_noisy.clamp(0, 1) if self.recipe.clamp else x_noisy

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar cross-entropy of the model (in training mode) on the noisy batch."""
        return F.cross_entropy(model(self.noisy(x)), y)
