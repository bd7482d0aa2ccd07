"""``hessian``: input-Hessian norm regularisation (Joo et al. 2023, RobustAGA
``project/module/pl_hessian_classifier.py``, lambda from ``scripts/*.sh``).

Loss (PROTOCOL.md section 7):

    CE(f(x), y) + lambda * mean_batch ||H v||_2^2,    v ~ N(0, I),   H = d^2 f_y / dz^2

with ``f_y`` the true-label logit and ``z = (x - mean) / std`` the normalised input (the
reference's models take normalised tensors, so its Hessian and its lambda live in z space).
``E_v ||H v||^2 = tr(H^T H) = ||H||_F^2`` (Hutchinson's estimator), one sample per image per
step, computed as a Hessian-vector product by double backprop: ``H v = d <v, d f_y/dz> / dz``.
As in the reference, one forward pass serves the CE and the Hessian, in the model's current
(training) mode, and v is drawn in z space.

The parameter gradient of ``||H v||^2`` is a third derivative, which PyTorch's fused
``batch_norm`` does not provide; during this loss every BatchNorm layer runs as the same
formula written in elementary ops (:func:`elementary_batchnorm`), running statistics included.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.data import DatasetCard
from xrbench.explainers import split_model
from xrbench.fastgrad import fast_double_backward
from xrbench.registry import defenses

from .base import Defense, Recipe, is_small_model


def _bn_forward(bn: nn.modules.batchnorm._BatchNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    """BatchNorm's forward (train: batch statistics + running-statistics update; eval: running
    statistics) in elementary, arbitrarily differentiable ops."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        tracked = bn.track_running_stats and bn.running_mean is not None
        if bn.training or not tracked:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            if bn.training and tracked:
                with torch.no_grad():
                    bn.num_batches_tracked += 1  # type: ignore[operator]
                    m = bn.momentum if bn.momentum is not None else 1 / float(
                        bn.num_batches_tracked)  # type: ignore[arg-type]
                    n = x.numel() / x.shape[1]
                    bn.running_mean.mul_(1 - m).add_(m * mean)  # type: ignore[union-attr]
                    bn.running_var.mul_(1 - m).add_(  # type: ignore[union-attr]
                        m * var * n / max(n - 1, 1))
        else:
            mean, var = bn.running_mean, bn.running_var
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        return out

    return forward


@contextmanager
def elementary_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm layer of ``model`` computes its usual output with
    elementary ops, so third derivatives exist; restored afterwards."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = _bn_forward(bn)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for bn in bns:
            del bn.forward


def hvp_norm_sq(z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                v: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """||H_i v_i||^2 per image (B,), H_i the Hessian of ``logits[i, y_i]`` w.r.t. ``z[i]``.

    ``logits`` (B, K) must have been computed from the leaf ``z`` (B, C, S, S); ``v`` is
    shaped like ``z``. With ``create_graph`` the result is differentiable w.r.t. parameters.
    """
    (g,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), z, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), z, create_graph=create_graph)
    return hv.flatten(1).pow(2).sum(dim=1)


@dataclass(frozen=True)
class HessianRecipe(Recipe):
    """The common trainer plus the Hessian penalty weight."""

    lambda_: float | None = None  # weight of ||Hv||^2; None -> 1e-3 convnet/lenet, 1e-4 others

    def resolve(self, card: DatasetCard, model_name: str) -> "HessianRecipe":
        """lambda 1e-3 for convnet/lenet (``cifar_lenet.sh``), 1e-4 for the ResNet family and
        any other model (``cifar_resnet.sh``)."""
        if self.lambda_ is not None:
            return self
        return dataclasses.replace(self, lambda_=1e-3 if is_small_model(model_name) else 1e-4)


@defenses.register("hessian", "CE + input-Hessian Frobenius norm of the true logit "
                   "(Hutchinson, one sample; RobustAGA)")
class Hessian(Defense):
    """Cross-entropy plus a one-sample Hutchinson estimate of ||d^2 f_y / dz^2||_F^2."""

    Recipe = HessianRecipe
    recipe: HessianRecipe

    def probe(self, z: torch.Tensor) -> torch.Tensor:
        """v ~ N(0, I) shaped like z, from the TrainState generator."""
        return torch.randn(z.shape, generator=self.state.generator, device=z.device,
                           dtype=z.dtype)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE, mean_batch ||H v||^2) scalars from one forward pass; x pixels (B, C, S, S)."""
        net, mean, std = split_model(model)
        z = ((x.detach() - mean) / std).requires_grad_(True)
        with torch.enable_grad(), elementary_batchnorm(net), fast_double_backward(net):
            logits = net(z)
            reg = hvp_norm_sq(z, logits, y, self.probe(z)).mean()
        return F.cross_entropy(logits, y), reg

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar mean_batch ||H v||^2 (one Hutchinson sample per image)."""
        return self.terms(model, x, y)[1]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar CE + lambda * mean ||H v||^2 for one batch."""
        assert self.recipe.lambda_ is not None, "resolve() the recipe first"
        ce, reg = self.terms(model, x, y)
        return ce + self.recipe.lambda_ * reg
