"""``sep_pos`` / ``sep_neg``: Separate Explanation robustness with PGD (SEP paper, eq. 1-2,
Algorithm 1; PROTOCOL.md section 7).

Loss: the base adversarial loss (``mat`` by default, ``trades`` allowed, the paper's 5.5) plus

    w(epoch) * lambda * L_f,
    L_f = mean_batch mean_pixels (sum_map(a(x + zeta)) - sum_map(a(x)))^2

the same form as the explanation loss L_e (PROTOCOL 0 and 7, version 2: the paper writes both
as ``||I(.) - I(.)||``; read as an L2 norm, L_f is ~1e4 times larger at MNIST geometry and
the paper's lambdas destroy the classifier), 
with ``zeta ~ N(0, sigma^2 I)`` in pixel units, ``a`` a differentiable explainer for the true
label (``grad_x_input``, taken w.r.t. the normalised input, PROTOCOL section 0) and the map
differentiated through (``create_graph=True``) so the gradient reaches the parameters by
double backprop. ``lambda > 0`` (``sep_pos``) flattens the explanation loss landscape,
``lambda < 0`` (``sep_neg``) sharpens it. ``w`` is 0 for the first ``reg_warmup_fraction`` of
the recipe's epochs, then ramps linearly to 1 over the next ``reg_ramp_fraction`` (PROTOCOL 7's
5 + 5 of 25 epochs; as fractions, a short recipe switches the term on too).

Lambda: the paper's 50000 / -3000 on its five datasets (SEP paper 5.1 and appendix A);
elsewhere the value ``xrbench calibrate`` chose (:mod:`xrbench.calibrate`), shipped with the
package (digits) or found in the user's cache. ``lambda_source`` records which.

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
from xrbench.explainers import expl_loss, get_explainer, sum_map
from xrbench.fastgrad import fast_double_backward
from xrbench.registry import defenses

from .base import Defense, TrainState
from .mat import Mat, MatRecipe
from .trades import BETA_GREY, BETA_RGB, Trades

# (sep_pos, sep_neg) lambda on the paper's datasets: SEP paper 5.1 ("lambda = 50000 for SEP_pos
# and -3000 for SEP_neg"), which trains on these five (its appendix A; PROTOCOL 7, version 2).
# Other datasets (digits, imagefolder:...) take a calibrated value (xrbench calibrate).
SEP_LAMBDA: dict[str, tuple[float, float]] = {
    "mnist": (50000.0, -3000.0),
    "fashion_mnist": (50000.0, -3000.0),
    "cifar10": (50000.0, -3000.0),
    "cifar100": (50000.0, -3000.0),
    "tinyimagenet": (50000.0, -3000.0),
}
PAPER_SOURCE = "SEP paper 5.1 (paper dataset)"
BASES = {"mat": Mat, "trades": Trades}


@dataclass(frozen=True)
class SepRecipe(MatRecipe):
    """MAT's (or TRADES') recipe plus the SEP regulariser. ``sign`` picks the lambda column."""

    sign: ClassVar[int] = 1

    base: str = "mat"  # base adversarial loss: "mat" or "trades" (SEP paper 5.5)
    lambda_: float | None = None  # weight of L_f; None -> paper's (5 datasets) or calibrated
    lambda_source: str | None = None  # where lambda_ came from (filled by resolve)
    explainer: str = "grad_x_input"  # differentiable explainer a (SEP paper: Gradient x Input)
    sigma: float = 0.1  # std of zeta, pixel units; not given by the paper (PROTOCOL 7 default)
    clamp_noisy: bool = False  # clamp x + zeta to [0, 1]; eq. 1 does not (see module doc)
    reg_warmup_fraction: float = 0.2  # share of the epochs with w = 0 (PROTOCOL 7: 5 of 25)
    reg_ramp_fraction: float = 0.2  # share of the epochs ramping w from 0 to 1 (5 of 25)
    beta: float | None = None  # TRADES KL weight, used only if base = "trades"; 6 RGB / 1 grey
    start_std: float = 0.001  # TRADES attack start noise, pixels; used only if base = "trades"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reg_warmup_fraction >= 1:
            raise XRBenchError(
                f"recipe field 'reg_warmup_fraction' = {self.reg_warmup_fraction!r} would "
                "never switch the SEP regulariser on (that is MAT); it must be < 1 (a share "
                "of the epochs)")

    @property
    def defense_name(self) -> str:
        return "sep_pos" if self.sign > 0 else "sep_neg"

    def wants_calibration(self, card: DatasetCard) -> bool:
        """lambda_ comes from a calibration off the paper's datasets (SEP_LAMBDA)."""
        return self.lambda_ is None and card.name not in SEP_LAMBDA

    def with_calibration(self, value: float, source: str) -> "SepRecipe":
        return dataclasses.replace(self, lambda_=float(value), lambda_source=source)

    def resolve(self, card: DatasetCard, model_name: str) -> "SepRecipe":
        """Fill eps (card.eps_pgd), beta (1 grey / 6 RGB), lambda_ and lambda_source: the
        paper's value on its datasets (SEP_LAMBDA), else the calibration handed over by the
        caller (:meth:`with_calibration`; :func:`xrbench.train.build_recipe` reads it),
        else an error."""
        if self.base not in BASES:
            raise XRBenchError(f"SEP base {self.base!r} is not supported; use "
                               f"{' or '.join(BASES)} (--set base=trades)")
        lam, source = self.lambda_, self.lambda_source
        if lam is None:
            if card.name not in SEP_LAMBDA:
                raise XRBenchError(
                    f"{self.defense_name} has no lambda for dataset {card.name!r} (the paper "
                    "gives none): resolve the recipe with xrbench.train.build_recipe, which "
                    "reads calibrations, or set one (--set lambda_=...)")
            lam, source = SEP_LAMBDA[card.name][0 if self.sign > 0 else 1], PAPER_SOURCE
        elif source is None:
            source = "set by the user (--set lambda_)"
        beta = self.beta if self.beta is not None else (BETA_GREY if card.grey else BETA_RGB)
        eps = self.eps if self.eps is not None else card.eps_pgd
        return dataclasses.replace(self, lambda_=lam, lambda_source=source, beta=beta, eps=eps)


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
        """w(epoch) in [0, 1]: 0 during the warm-up, then a linear ramp (fractional epochs,
        the warm-up and the ramp being shares of ``recipe.epochs``)."""
        r = self.recipe
        past = self.state.epoch - r.reg_warmup_fraction * r.epochs
        ramp = r.reg_ramp_fraction * r.epochs
        if past <= 0:
            return 0.0
        return 1.0 if ramp <= 0 else min(1.0, past / ramp)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x + zeta``, zeta ~ N(0, sigma^2 I) (B, C, S, S) from the TrainState generator."""
        zeta = torch.randn(x.shape, generator=self.state.generator, device=x.device,
                           dtype=x.dtype)
        x_noisy = x + self.recipe.sigma * zeta
        return x_noisy.clamp(0, 1) if self.recipe.clamp_noisy else x_noisy

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar L_f (eq. 1 in L_e's form): the batch mean of ``expl_loss`` (mean over pixels
        of squared differences) between ``sum_map`` of the explanation of ``x + zeta`` and of
        ``x``, both for the true label ``y`` (B,). Dimensionless; differentiable w.r.t. the
        parameters (create_graph)."""
        n = x.shape[0]
        xx = torch.cat([x.detach(), self.noisy(x.detach())])
        with eval_mode(model), fast_double_backward(model):
            maps = sum_map(self.explain(model, xx, torch.cat([y, y]), create_graph=True))
        return expl_loss(maps[n:], maps[:n]).mean()

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
    """SEP_pos (SEP paper): lambda 50000 on paper datasets, calibrated elsewhere."""

    Recipe = SepPosRecipe


@defenses.register("sep_neg", "SEP with lambda < 0: MAT + noise-sharpened explanations")
class SepNeg(Sep):
    """SEP_neg (SEP paper): lambda -3000 on paper datasets, calibrated elsewhere."""

    Recipe = SepNegRecipe
