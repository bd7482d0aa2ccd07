"""``sep_pos`` / ``sep_neg``: Separate Explanation robustness with PGD (SEP paper, eq. 1-2,
Algorithm 1; PROTOCOL.md section 7).

Loss: the base adversarial loss (``mat`` by default, ``trades`` allowed, the paper's 5.5) plus

    w(epoch) * lambda * L_f,   L_f = mean_batch || sum_map(a(x + zeta)) - sum_map(a(x)) ||_2

with ``zeta ~ N(0, sigma^2 I)`` in pixel units, ``a`` a differentiable explainer for the true
label (``grad_x_input``, taken w.r.t. the normalised input, PROTOCOL section 0) and the map
differentiated through (``create_graph=True``) so the gradient reaches the parameters by
double backprop. ``lambda > 0`` (``sep_pos``) flattens the explanation loss landscape,
``lambda < 0`` (``sep_neg``) sharpens it. ``w`` is 0 for ``reg_warmup_epochs``, then ramps
linearly to 1 over ``reg_ramp_epochs`` (PROTOCOL 7: without it digits training collapsed).

Choices where the paper is silent (recorded as recipe fields or documented here):

- ``x + zeta`` is *not* clamped to [0, 1] (``clamp_noisy=False``): eq. 1 adds Gaussian noise
  with no clipping, and clamping would make the noise one-sided on the black backgrounds of
  MNIST-like images, so the regulariser would no longer see isotropic noise.
- The explanations are computed with the model in **eval mode**: the maps the regulariser
  shapes are then exactly the maps the evaluation measures, each image's map depends on that
  image alone (train-mode BatchNorm would mix the batch into every gradient) and the noisy
  copies do not enter the BatchNorm running statistics; the warm-up gives those statistics
  5 epochs to settle before the term switches on. Double backprop works in either mode.
- Clean and noisy copies go through the explainer as one batch of 2B images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from xrbench.attacks.pgd import eval_mode
from xrbench.data import DatasetCard
from xrbench.errors import XRBenchError
from xrbench.explainers import get_explainer, sum_map
from xrbench.registry import defenses

from .base import Defense, TrainState
from .mat import Mat, MatRecipe
from .trades import BETA_GREY, BETA_RGB, Trades

# |lambda| per dataset: paper datasets from the SEP paper 5.1 ("lambda = 50000 for SEP_pos and
# -3000 for SEP_neg"); digits from PROTOCOL 7 "SEP on other datasets" (measured: 10 / -1).
SEP_LAMBDA: dict[str, tuple[float, float]] = {
    "mnist": (50000.0, -3000.0),
    "cifar10": (50000.0, -3000.0),
    "tinyimagenet": (50000.0, -3000.0),
    "digits": (10.0, -1.0),
}
BASES = {"mat": Mat, "trades": Trades}


@dataclass(frozen=True)
class SepRecipe(MatRecipe):
    """MAT's (or TRADES') recipe plus the SEP regulariser. ``sign`` picks the lambda column."""

    sign: ClassVar[int] = 1

    base: str = "mat"  # base adversarial loss: "mat" or "trades" (SEP paper 5.5)
    lambda_: float | None = None  # weight of L_f, dimensionless; None -> SEP_LAMBDA (paper 5.1)
    explainer: str = "grad_x_input"  # differentiable explainer a (SEP paper: Gradient x Input)
    sigma: float = 0.1  # std of zeta, pixel units; not given by the paper (PROTOCOL 7 default)
    clamp_noisy: bool = False  # clamp x + zeta to [0, 1]; eq. 1 does not (see module doc)
    reg_warmup_epochs: float = 5.0  # epochs with w = 0 (PROTOCOL 7)
    reg_ramp_epochs: float = 5.0  # epochs of the linear ramp of w from 0 to 1 (PROTOCOL 7)
    beta: float | None = None  # TRADES KL weight, used only if base = "trades"; 6 RGB / 1 grey
    start_std: float = 0.001  # TRADES attack start noise, pixels; used only if base = "trades"

    def resolve(self, card: DatasetCard, model_name: str) -> "SepRecipe":
        """Fill eps (card.eps_pgd), beta (1 grey / 6 RGB) and lambda_ (SEP_LAMBDA)."""
        if self.base not in BASES:
            raise XRBenchError(f"SEP base {self.base!r} is not supported; use "
                               f"{' or '.join(BASES)} (--set base=trades)")
        lam = self.lambda_
        if lam is None:
            if card.name not in SEP_LAMBDA:
                raise XRBenchError(
                    f"SEP has no reference lambda for dataset {card.name!r} (lambda does not "
                    f"transfer across image sizes, PROTOCOL section 7); pass one with "
                    f"--set lambda_=... (known: {', '.join(SEP_LAMBDA)})")
            lam = SEP_LAMBDA[card.name][0 if self.sign > 0 else 1]
        beta = self.beta if self.beta is not None else (BETA_GREY if card.grey else BETA_RGB)
        eps = self.eps if self.eps is not None else card.eps_pgd
        return dataclasses.replace(self, lambda_=lam, beta=beta, eps=eps)


@dataclass(frozen=True)
class SepPosRecipe(SepRecipe):
    """SEP_pos: positive lambda (flatter explanation landscape, less robust explanations)."""

    sign: ClassVar[int] = 1


@dataclass(frozen=True)
class SepNegRecipe(SepRecipe):
    """SEP_neg: negative lambda (sharper explanation landscape, more robust explanations)."""

    sign: ClassVar[int] = -1


class Sep(Defense):
    """Base loss + ``w(epoch) * lambda * L_f`` (SEP paper eq. 2, Algorithm 1)."""

    Recipe = SepRecipe
    recipe: SepRecipe

    def __init__(self, recipe: SepRecipe, state: TrainState) -> None:
        super().__init__(recipe, state)
        base_cls = BASES[recipe.base]
        names = [f.name for f in dataclasses.fields(base_cls.Recipe)]
        self.base: Defense = base_cls(base_cls.Recipe(**{k: getattr(recipe, k) for k in names}),
                                      state)
        self.explain = get_explainer(recipe.explainer)
        if not self.explain.differentiable:
            raise XRBenchError(f"SEP needs a differentiable explainer; {recipe.explainer!r} is "
                               "evaluation-only (use gradient, grad_x_input, ...)")

    def weight(self) -> float:
        """w(epoch) in [0, 1]: 0 during the warm-up, then a linear ramp (fractional epochs)."""
        r = self.recipe
        past = self.state.epoch - r.reg_warmup_epochs
        if past <= 0:
            return 0.0
        return 1.0 if r.reg_ramp_epochs <= 0 else min(1.0, past / r.reg_ramp_epochs)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x + zeta``, zeta ~ N(0, sigma^2 I) (B, C, S, S) from the TrainState generator."""
        zeta = torch.randn(x.shape, generator=self.state.generator, device=x.device,
                           dtype=x.dtype)
        x_noisy = x + self.recipe.sigma * zeta
        return x_noisy.clamp(0, 1) if self.recipe.clamp_noisy else x_noisy

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar L_f (eq. 1): mean over the batch of the per-image L2 distance (over pixels)
        between ``sum_map`` of the explanation of ``x + zeta`` and of ``x``, both for the
        true label ``y`` (B,). Differentiable w.r.t. the parameters (create_graph)."""
        n = x.shape[0]
        xx = torch.cat([x.detach(), self.noisy(x.detach())])
        with eval_mode(model):
            maps = sum_map(self.explain(model, xx, torch.cat([y, y]), create_graph=True))
        return (maps[n:] - maps[:n]).flatten(1).norm(dim=1).mean()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar base loss + w * lambda * L_f; L_f is skipped while ``w * lambda == 0``."""
        assert self.recipe.lambda_ is not None, "resolve() the recipe first"
        loss = self.base.loss(model, x, y)  # before L_f: it updates BatchNorm statistics
        scale = self.weight() * self.recipe.lambda_
        if scale == 0.0:
            return loss
        return loss + scale * self.regulariser(model, x, y)


@defenses.register("sep_pos", "SEP with lambda > 0: MAT + noise-flattened explanations")
class SepPos(Sep):
    """SEP_pos (SEP paper): lambda 50000 on paper datasets, 10 on digits."""

    Recipe = SepPosRecipe


@defenses.register("sep_neg", "SEP with lambda < 0: MAT + noise-sharpened explanations")
class SepNeg(Sep):
    """SEP_neg (SEP paper): lambda -3000 on paper datasets, -1 on digits."""

    Recipe = SepNegRecipe
