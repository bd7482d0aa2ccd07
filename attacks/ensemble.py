"""The worst-case ensemble of explanation attacks (PROTOCOL.md section 5.8, version 3).

Expl@end (5.2) is what one fixed-budget attack leaves; a defense can look robust because that
attack is weak against it (a sharp landscape that stalls Adam at one learning rate). For every
pair of the manipulation stage the ensemble runs each attack below with the same objective
(the 1e11 map term plus the 1e6 output term, :func:`~xrbench.attacks.manipulation.manipulate`)
and keeps, per pair, the lowest ``L_e(x', x_t)`` among the candidates whose predicted class is
the victim's (:func:`worst_case`):

- ``dombrowski``: the paper's attack, taken from the manipulation stage as it is (not run again);
- ``smoothed``: the same attack differentiating a smoothed copy of the model (every Softplus
  beta divided by :data:`BETA_DIVISOR`), its x' judged on the original model (the explanation
  counterpart of BPDA, Athalye et al. 2018);
- ``signed``: signed steps with a cosine-decaying size from ``alpha0 = eps_pgd / 10``;
- ``restart``: the paper's attack from a random start ``x_v + U[-eps_pgd/4, eps_pgd/4]``,
  clamped to [0, 1], its uniforms keyed by (seed, victim, target) so that a pair's start never
  depends on its chunk or shard (:mod:`xrbench.keyed_random`).

An attack is a function ``attack(model, explainer, x_victim, x_target, *, pairs, budget) ->
x_adv``: (P, C, H, W) images in, the manipulated images (P, C, H, W, pixels in [0, 1]) out
(the built-ins return :func:`manipulate`'s result, which holds x_adv and its final values
measured on the original model exactly as :func:`judge` measures them);
``pairs`` (P, 2) are the pairs' (victim, target) indices in the subset and ``budget`` the
protocol's sizes (:class:`Budget`). The ensemble judges every candidate itself on the original
model (:func:`judge`), so an attack, built in or a plugin (entry-point group
``xrbench.attacks``), only proposes x'. Each registered attack may carry a ``version``
attribute (an int or a string), recorded in the entry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from xrbench.explainers import expl_loss, sum_map
from xrbench.registry import attacks as registry

from .manipulation import ManipulationResult, manipulate, manipulation_variant
from .pgd import eval_mode

#: protocol parameters of the built-in attacks (PROTOCOL 5.8)
BETA_DIVISOR = 3.0        # smoothed: every Softplus beta divided by this
ALPHA0_OVER_EPS = 0.1     # signed: first step alpha_0 = eps_pgd / 10 (pixel units)
RESTART_OVER_EPS = 0.25   # restart: uniform start radius eps_r = eps_pgd / 4 (pixel units)
#: the ensemble's built-in attacks, in the order the entry lists them; ``dombrowski`` is the
#: manipulation stage's own result
BUILTIN = ("dombrowski", "smoothed", "signed", "restart")
#: the keyed-random stream of ``restart``'s starts (:func:`xrbench.keyed_random.stream_keys`)
RESTART_STREAM = 58


@dataclass(frozen=True)
class Budget:
    """The protocol's sizes every ensemble attack runs with (pixel units).

    ``iterations``: the profile's manipulation iterations (5.2, 6); ``lr``: the
    manipulation's Adam learning rate; ``eps_pgd``: the dataset's L-inf PGD radius (5.1),
    which sets ``signed``'s step and ``restart``'s radius; ``seed``: the stage's seed, which
    keys random starts per pair."""

    iterations: int
    lr: float
    eps_pgd: float
    seed: int


class Attack(Protocol):
    """An ensemble attack (see the module docstring)."""

    def __call__(self, model: nn.Module, explainer: Any, x_victim: torch.Tensor,
                 x_target: torch.Tensor, *, pairs: torch.Tensor, budget: Budget
                 ) -> torch.Tensor | ManipulationResult: ...


def smoothed_copy(model: nn.Module, divisor: float = BETA_DIVISOR) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Softplus`` beta divided by ``divisor`` (a
    smoother function: lower curvature, Dombrowski et al. 2019); ``model`` is not changed."""
    smooth = copy.deepcopy(model)
    for m in smooth.modules():
        if isinstance(m, nn.Softplus):
            m.beta = m.beta / divisor
    return smooth


@registry.register("dombrowski", "the paper's attack (PROTOCOL 5.2): Adam from x_v; in the "
                                 "ensemble, the manipulation stage's own result")
def dombrowski(model: nn.Module, explainer: Any, x_victim: torch.Tensor,
               x_target: torch.Tensor, *, pairs: torch.Tensor, budget: Budget
               ) -> ManipulationResult:
    """The manipulation stage's attack (:func:`~xrbench.attacks.manipulation.manipulate`)
    with the budget's iterations and learning rate. The ensemble does not run it again: it
    takes the manipulation stage's result."""
    res = manipulate(model, explainer, x_victim, x_target, iterations=budget.iterations,
                     lr=budget.lr, trace_points=())
    return res


@registry.register("smoothed", "the paper's attack on a copy with every Softplus beta / 3, "
                               "judged on the original model")
def smoothed(model: nn.Module, explainer: Any, x_victim: torch.Tensor, x_target: torch.Tensor,
             *, pairs: torch.Tensor, budget: Budget) -> ManipulationResult:
    """The Dombrowski attack taking its steps on :func:`smoothed_copy` (a ReLU model's
    Softplus surrogate schedule divided too); target map, victim probabilities and the
    result's value come from ``model``."""
    beta_range = (10.0 / BETA_DIVISOR, 100.0 / BETA_DIVISOR)
    res = manipulation_variant(model, explainer, x_victim, x_target,
                               iterations=budget.iterations, lr=budget.lr,
                               surrogate=smoothed_copy(model), relu_beta_range=beta_range,
                               trace_points=())
    return res


@registry.register("signed", "signed steps, cosine-decaying from eps_pgd / 10")
def signed(model: nn.Module, explainer: Any, x_victim: torch.Tensor, x_target: torch.Tensor,
           *, pairs: torch.Tensor, budget: Budget) -> ManipulationResult:
    """``x <- clip(x - alpha_i sign(grad))`` on the manipulation's objective, ``alpha_i``
    decaying from ``eps_pgd / 10`` to 0 over the iterations: blind to the gradient's scale."""
    res = manipulation_variant(model, explainer, x_victim, x_target,
                               iterations=budget.iterations, lr=budget.lr, step="signed",
                               alpha0=ALPHA0_OVER_EPS * budget.eps_pgd, trace_points=())
    return res


def restart_start(x_victim: torch.Tensor, pairs: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``clamp(x_v + U[-eps_r, eps_r], 0, 1)`` with ``eps_r = eps_pgd / 4``, the uniforms keyed
    by (seed, victim, target): (P, C, H, W), the same for a pair in any chunk or shard."""
    from xrbench.keyed_random import stream_keys, uniform

    pairs = pairs.to(x_victim.device).long()
    keys = stream_keys(budget.seed, RESTART_STREAM, pairs[:, 0], pairs[:, 1])
    u = uniform(keys, x_victim[0].numel(), dtype=x_victim.dtype).view_as(x_victim)
    eps_r = RESTART_OVER_EPS * budget.eps_pgd
    return (x_victim + eps_r * (2.0 * u - 1.0)).clamp(0.0, 1.0)


@registry.register("restart", "the paper's attack from a random start in eps_pgd / 4")
def restart(model: nn.Module, explainer: Any, x_victim: torch.Tensor, x_target: torch.Tensor,
            *, pairs: torch.Tensor, budget: Budget) -> ManipulationResult:
    """The Dombrowski attack started at :func:`restart_start` instead of x_v."""
    res = manipulation_variant(model, explainer, x_victim, x_target,
                               iterations=budget.iterations, lr=budget.lr,
                               x_start=restart_start(x_victim, pairs, budget), trace_points=())
    return res


#: the built-in attacks: they return :func:`manipulate`'s result, whose final values are
#: measured on the original model as :func:`judge` measures them (so not measured twice)
_OWN = frozenset({dombrowski, smoothed, signed, restart})


def judge(model: nn.Module, explainer: Any, x_victim: torch.Tensor, x_target: torch.Tensor,
          x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score candidate manipulations on the original model, as the manipulation scores its
    own: ``L_e(x_adv, x_t)`` (P,) between x_adv's map for the victim's predicted class and
    x_t's map for its own predicted class, and whether x_adv keeps the victim's class (P,)
    bool. All (P, C, H, W)."""
    with eval_mode(model):
        with torch.no_grad():
            pred_victim = model(x_victim).argmax(dim=1)
            pred_target = model(x_target).argmax(dim=1)
            pred_adv = model(x_adv).argmax(dim=1)
        target_map = sum_map(explainer(model, x_target, pred_target))
        adv_map = sum_map(explainer(model, x_adv, pred_victim))
        return expl_loss(adv_map, target_map).detach(), pred_adv == pred_victim


def worst_case(expl_end: torch.Tensor, kept: torch.Tensor, expl_start: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the lowest L_e among the candidates that keep the victim's class.

    ``expl_end`` (A, P): each attack's L_e; ``kept`` (A, P) bool: its candidate kept the
    victim's class; ``expl_start`` (P,): L_e at x' = x_v, every attack's starting point, which
    keeps the class by definition and is the value of a pair no attack manipulated.
    Returns (worst (P,), winner (P,) int64: the index of the attack that gave it, -1 where
    none kept the class). A candidate that changes the class is never counted; where two
    attacks tie, the first in order wins."""
    masked = torch.where(kept, expl_end, torch.full_like(expl_end, float("inf")))
    best, winner = masked.min(dim=0)
    none = ~kept.any(dim=0)
    return torch.where(none, expl_start, best), torch.where(none, -1, winner)


def resolve(names: list[str] | tuple[str, ...]) -> list[tuple[str, Callable[..., Any]]]:
    """The attacks to run besides ``dombrowski`` (the built-ins, then ``names``, plugin or
    built-in, each once), as (name, function)."""
    out, seen = [], set()
    for name in [*BUILTIN[1:], *names]:
        if name == "dombrowski" or name in seen:
            continue
        seen.add(name)
        out.append((name, registry.get(name)))
    return out


def attack_version(name: str) -> str:
    """The recorded version of attack ``name``: its ``version`` attribute, or its
    distribution's version for a plugin without one (built-ins: the protocol's)."""
    entry = registry.get_entry(name)
    v = getattr(entry.obj, "version", None)
    if v is not None:
        return str(v)
    from xrbench.registry import distribution_version

    return str(distribution_version(entry.distribution))


class CandidateStore(Protocol):
    """Where :func:`attack_pairs` keeps finished chunks (a cache, for resuming)."""

    def load(self, chunk: int, pairs: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The stored ``{"expl_end", "kept", "pairs"}`` of chunk ``chunk``, or None."""

    def save(self, chunk: int, result: dict[str, torch.Tensor]) -> None:
        """Keep a finished chunk."""


def attack_pairs(model: nn.Module, explainer: Any, images: torch.Tensor, pairs: torch.Tensor,
                 attack: Callable[..., Any], budget: Budget, *,
                 pair_batch: int = 512, store: CandidateStore | None = None,
                 first_chunk: int = 0, progress: bool = False, desc: str = "attack"
                 ) -> dict[str, torch.Tensor]:
    """Run ``attack`` on ``pairs`` (P, 2) of (victim, target) rows into ``images`` (N, C, H,
    W), ``pair_batch`` pairs at a time (the manipulation's chunks), and judge each candidate
    on ``model`` (:func:`judge`). Returns ``{"expl_end": (P,), "kept": (P,) bool, "pairs":
    (P, 2)}`` on the CPU, in ``pairs`` order. ``store`` is asked for each chunk first and
    given each computed one (``first_chunk``: the index of the first chunk in the store, for a
    shard of a longer list), so an interrupted run resumes at the first missing chunk."""
    from tqdm.auto import tqdm

    from xrbench.chunking import chunk_slices

    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    pairs = pairs.long()
    parts: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=len(pairs), unit="pair", desc=desc, disable=not progress,
               dynamic_ncols=True)
    try:
        for k, chunk in enumerate(chunk_slices(len(pairs), pair_batch), start=first_chunk):
            idx = pairs[chunk]
            got = store.load(k, idx) if store is not None else None
            if got is None:
                x_v, x_t = images[idx[:, 0]].to(device), images[idx[:, 1]].to(device)
                res = attack(model, explainer, x_v, x_t, pairs=idx, budget=budget)
                if isinstance(res, ManipulationResult) and attack in _OWN:
                    # xrbench's own attacks end by judging x' exactly as judge() does
                    expl, kept = res.expl_end, ~res.class_changed
                else:
                    x_adv = res.x_adv if isinstance(res, ManipulationResult) else res
                    check_candidates(x_adv, x_v)
                    expl, kept = judge(model, explainer, x_v, x_t, x_adv)
                got = {"expl_end": expl.cpu(), "kept": kept.cpu(), "pairs": idx.cpu()}
                if store is not None:
                    store.save(k, got)
            parts.append(got)
            bar.update(len(idx))
    finally:
        bar.close()
    if not parts:
        return {"expl_end": torch.empty(0), "kept": torch.empty(0, dtype=torch.bool),
                "pairs": torch.empty(0, 2, dtype=torch.long)}
    return {k: torch.cat([p[k] for p in parts]) for k in ("expl_end", "kept", "pairs")}


def check_candidates(x_adv: Any, x_victim: torch.Tensor) -> None:
    """Refuse what is not a batch of manipulated images like ``x_victim``: another shape, not
    a floating tensor, NaN or values outside [0, 1] (an attack's bug, or a plugin's, must not
    become a number)."""
    from xrbench.errors import XRBenchError

    if not isinstance(x_adv, torch.Tensor) or not x_adv.is_floating_point():
        raise XRBenchError(f"an attack returned {type(x_adv).__name__}, not a float tensor of "
                           f"manipulated images shaped {tuple(x_victim.shape)}")
    if x_adv.shape != x_victim.shape:
        raise XRBenchError(f"an attack returned images shaped {tuple(x_adv.shape)}, not "
                           f"{tuple(x_victim.shape)} (one per pair, like the victims)")
    if bool(torch.isnan(x_adv).any()) or bool((x_adv < 0).any()) or bool((x_adv > 1).any()):
        raise XRBenchError("an attack returned images with NaN or values outside [0, 1]")
