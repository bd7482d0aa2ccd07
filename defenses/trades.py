"""``trades``: TRADES (Zhang et al. 2019; reference ``yaodongyu/TRADES`` ``trades.py``).

Loss (PROTOCOL.md section 7; the SEP paper's eq. 3 calls beta "alpha"):

    CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))     (batch mean)

``x_adv`` maximises that KL by L-inf PGD started at ``x + start_std * N(0, 1)``; the attack
runs the model in eval mode, the loss in training mode, and the gradient flows through both
f(x) and f(x_adv), all as in the reference. The reference's own step sizes (0.007 for CIFAR)
are replaced by the protocol's PGD-inside-training step ``2.5 * eps / steps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrbench.attacks.pgd import eval_mode, pgd
from xrbench.data import DatasetCard
from xrbench.registry import defenses

from .base import Defense, Recipe

BETA_RGB = 6.0  # TRADES reference train_trades_cifar10.py --beta default; PROTOCOL 7
BETA_GREY = 1.0  # TRADES reference train_trades_mnist.py --beta default; PROTOCOL 7


def kl_per_example(logits_adv: torch.Tensor, p_nat: torch.Tensor) -> torch.Tensor:
    """KL(p_nat || softmax(logits_adv)) per example: logits (B, K), probabilities (B, K) ->
    (B,) in nats. The reference's ``KLDivLoss(log_softmax(adv), softmax(nat))`` row sums."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_nat, reduction="none").sum(dim=1)


@dataclass(frozen=True)
class TradesRecipe(Recipe):
    """The common trainer plus TRADES' trade-off weight and KL attack."""

    beta: float | None = None  # KL weight, dimensionless; None -> 6 RGB / 1 grey (PROTOCOL 7)
    eps: float | None = None  # L-inf radius, pixel units; None -> card.eps_pgd (SEP paper 5.1)
    pgd_steps: int = 10  # KL-attack iterations (SEP paper 5.1; TRADES reference: 10)
    pgd_step_factor: float = 2.5  # step size = pgd_step_factor * eps / pgd_steps (PROTOCOL 7)
    start_std: float = 0.001  # attack start x + start_std * N(0, 1), pixels (trades.py)

    def resolve(self, card: DatasetCard, model_name: str) -> "TradesRecipe":
        """Fill ``eps`` with ``card.eps_pgd`` and ``beta`` with 1 (grey) or 6 (RGB)."""
        beta = self.beta if self.beta is not None else (BETA_GREY if card.grey else BETA_RGB)
        eps = self.eps if self.eps is not None else card.eps_pgd
        return dataclasses.replace(self, beta=beta, eps=eps)


@defenses.register("trades", "TRADES: clean cross-entropy + beta * KL to a KL-maximising "
                   "PGD example")
class Trades(Defense):
    """TRADES (Zhang et al. 2019, eq. 5 with the reference's batch-mean KL)."""

    Recipe = TradesRecipe
    recipe: TradesRecipe

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The attack's start ``x + start_std * N(0, 1)`` (B, C, S, S), from the generator."""
        noise = torch.randn(x.shape, generator=self.state.generator, device=x.device,
                            dtype=x.dtype)
        return x.detach() + self.recipe.start_std * noise

    def adversarial(self, model: nn.Module, x: torch.Tensor,
                    x_init: torch.Tensor | None = None) -> torch.Tensor:
        """x_adv maximising ``KL(f(x) || f(x_adv))`` in the eps-ball, eval mode; detached.
        ``x_init`` defaults to :meth:`start`."""
        r = self.recipe
        assert r.eps is not None, "resolve() the recipe first"
        with eval_mode(model), torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        return pgd(model, x, p_nat, eps=r.eps, steps=r.pgd_steps,
                   step_size=r.pgd_step_factor * r.eps / max(1, r.pgd_steps),
                   loss_fn=kl_per_example, x_init=self.start(x) if x_init is None else x_init)

    def kl_term(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                logits_nat: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar ``mean_batch KL(softmax f(x) || softmax f(x_adv))`` (the reference's
        ``KLDivLoss(sum) / batch_size``), differentiable through both terms."""
        if logits_nat is None:
            logits_nat = model(x)
        return kl_per_example(model(x_adv), F.softmax(logits_nat, dim=1)).mean()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar ``CE(f(x), y) + beta * KL`` for one batch; model in training mode."""
        x_adv = self.adversarial(model, x)
        logits_nat = model(x)
        assert self.recipe.beta is not None, "resolve() the recipe first"
        return (F.cross_entropy(logits_nat, y)
                + self.recipe.beta * self.kl_term(model, x, x_adv, logits_nat))
