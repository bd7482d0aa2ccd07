"""``normal``: plain cross-entropy training."""

from __future__ import annotations

import torch.nn.functional as F

from xrbench.registry import defenses

from .base import Defense, Recipe


@defenses.register("normal", "standard training, cross-entropy on clean images")
class Normal(Defense):
    """CE(f(x), y)."""

    Recipe = Recipe

    def loss(self, model, x, y):
        return F.cross_entropy(model(x), y)
