"""``l2_cosd``: gradient-alignment regularisation (Joo et al. 2023, RobustAGA
``project/module/pl_l2_plus_cosd_classifier.py``, values from ``scripts/*.sh``).

Loss (PROTOCOL.md section 7):

    CE(f(x), y) + lambda_l2 * mean_batch ||g - g_r||_2^2
                + lambda_cos * mean_batch (1 - cos(g, g_r)) / 2

``g = d f_y / dz`` at the clean image and ``g_r = d f_y / dz`` at ``x + U[-eps, eps]``, both
taken w.r.t. the **normalised** input ``z = (x - mean) / std`` (the reference's models take
normalised tensors; its ``eps / (255 * std)`` is our pixel-space ``eps`` mapped to z), ``y`` the
true label. As in the reference (``detach_source_grad=True``): ``g`` is detached and comes from
the same forward pass as the CE term; ``g_r`` keeps its graph (double backprop); the perturbed
image is not clamped to [0, 1]; the cosine is over the flattened gradient with eps 1e-8
(``utils/metrics.py`` ``calc_cossim``). Everything runs in the model's current (training) mode,
as the reference's ``training_step`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.data import DatasetCard
from xrbench.explainers import get_explainer, split_model
from xrbench.fastgrad import fast_double_backward
from xrbench.registry import defenses

from .base import Defense, Recipe, TrainState, is_small_model


@dataclass(frozen=True)
class L2CosdRecipe(Recipe):
    """The common trainer plus the two alignment weights and the perturbation radius."""

    lambda_l2: float | None = None  # weight of ||g - g_r||^2; None -> 0.01 (RobustAGA scripts)
    lambda_cos: float | None = None  # weight of cosd; None -> 1.0 convnet/lenet, 0.1 otherwise
    eps: float = 4 / 255  # half-width of the uniform perturbation, pixels (RobustAGA --eps 4)

    def resolve(self, card: DatasetCard, model_name: str) -> "L2CosdRecipe":
        """(lambda_l2, lambda_cos) = (0.01, 1.0) for convnet/lenet (``cifar_lenet.sh``),
        (0.01, 0.1) for the ResNet family and any other model (``cifar_resnet.sh``)."""
        small = is_small_model(model_name)
        return dataclasses.replace(
            self,
            lambda_l2=0.01 if self.lambda_l2 is None else self.lambda_l2,
            lambda_cos=(1.0 if small else 0.1) if self.lambda_cos is None else self.lambda_cos)


@defenses.register("l2_cosd", "CE + L2 and cosine distance between input gradients at x and "
                   "at a uniformly perturbed x (RobustAGA)")
class L2Cosd(Defense):
    """Cross-entropy plus alignment of the input gradient under random perturbation."""

    Recipe = L2CosdRecipe
    recipe: L2CosdRecipe

    def __init__(self, recipe: L2CosdRecipe, state: TrainState) -> None:
        super().__init__(recipe, state)
        self.gradient = get_explainer("gradient")

    def perturbed(self, x: torch.Tensor) -> torch.Tensor:
        """``x + U[-eps, eps]`` (B, C, S, S), pixels, not clamped; from the TrainState generator."""
        u = torch.rand(x.shape, generator=self.state.generator, device=x.device, dtype=x.dtype)
        return x.detach() + (2 * u - 1) * self.recipe.eps

    def ce_and_source_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE scalar, g detached (B, C, S, S) = d f_y / dz) from one forward pass."""
        net, mean, std = split_model(model)
        z = ((x.detach() - mean) / std).requires_grad_(True)
        with torch.enable_grad():
            logits = net(z)
            (g,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), z,
                                       retain_graph=True)
        return F.cross_entropy(logits, y), g.detach()

    @staticmethod
    def l2_term(g: torch.Tensor, g_r: torch.Tensor) -> torch.Tensor:
        """mean_batch ||g - g_r||_2^2 over all input dimensions; (B, ...) -> scalar >= 0."""
        return (g - g_r).flatten(1).pow(2).sum(dim=1).mean()

    @staticmethod
    def cosd_term(g: torch.Tensor, g_r: torch.Tensor) -> torch.Tensor:
        """mean_batch (1 - cos(g, g_r)) / 2, flattened per image; scalar in [0, 1]."""
        return ((1 - F.cosine_similarity(g.flatten(1), g_r.flatten(1), dim=1, eps=1e-8)) / 2).mean()

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(l2, cosd) scalars for the batch; ``g`` defaults to the detached source gradient."""
        if g is None:
            _, g = self.ce_and_source_grad(model, x, y)
        x_r = self.perturbed(x)
        with fast_double_backward(model):
            g_r = self.gradient(model, x_r, y, create_graph=True)
        return self.l2_term(g, g_r), self.cosd_term(g, g_r)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar CE + lambda_l2 * l2 + lambda_cos * cosd for one batch."""
        r = self.recipe
        assert r.lambda_l2 is not None and r.lambda_cos is not None, "resolve() the recipe first"
        ce, g = self.ce_and_source_grad(model, x, y)
        l2, cosd = self.regulariser(model, x, y, g)
        return ce + r.lambda_l2 * l2 + r.lambda_cos * cosd
