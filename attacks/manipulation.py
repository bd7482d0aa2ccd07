"""Targeted explanation manipulation (Dombrowski et al. 2019), PROTOCOL.md section 5.2.

For each ordered pair (victim v, target t) the attack starts at ``x' = x_v`` and minimises

    map_prefactor * L_e(x', x_t) + output_prefactor * mean_classes((softmax f(x') - softmax f(x_v))^2)

with ``L_e(x', x_t) = mean_pixels((sum_map(a(x')) - sum_map(a(x_t)))^2)`` (PROTOCOL section 0),
by Adam on x' in pixel space, clamping x' to [0, 1] after each step (and projecting it to an
optional L-inf ball around x_v). The class explained for x' is the prediction on x_v; the
target map is x_t's explanation for x_t's own prediction. Reference:
``pankessel/adv_explanation_ref`` ``src/run_attack.py`` (prefactors 1e11 and 1e6, Adam).

The objective is the SUM of per-pair terms and Adam is elementwise, so each pair's trajectory
does not depend on which other pairs share its batch: batched and one-pair-at-a-time runs agree
(up to floating-point reduction order). Explainers whose noise depends on the batch shape
(``smoothgrad``) are the exception.

The attack differentiates a frozen copy of the model with BatchNorm folded into the preceding
convolutions (:func:`xrbench.inference.frozen_inference_copy`). ReLU models have zero second
derivatives, so in that copy every ``nn.ReLU`` is replaced by ``nn.Softplus(beta)``, beta
growing GEOMETRICALLY from 10 to 100 over the iterations,
``beta_i = 10 * 10 ** (i / iterations)`` for ``i = 0 .. iterations - 1`` (the reference's
``get_beta``). Start map, target map, victim probabilities and all final values
(``expl_end``, ``pred_adv``) come from the ORIGINAL model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xrbench.chunking import chunk_slices
from xrbench.explainers import expl_loss, sum_map
from xrbench.inference import DoubleBackwardSoftplus, frozen_inference_copy

from .pgd import eval_mode

log = logging.getLogger(__name__)

Explain = Callable[..., torch.Tensor]  # explain(model, x, target, create_graph=False)


@dataclass
class ManipulationResult:
    """Per-pair outcome of :func:`manipulate`; P pairs, tensors detached, on the attack device.

    ``expl_start``/``expl_end``/``expl_trace``: raw L_e (no 1e7 leaderboard factor).
    ``loss_trace`` (K, P): the full objective (prefactors included) at x' after
    ``round(f * iterations)`` Adam steps for each f in ``trace_points``, evaluated with the
    model the attack differentiates (the Softplus surrogate at its last beta for ReLU models).
    ``x_adv`` is None where it was not kept (:func:`manipulate_pairs` with ``keep_x_adv=False``
    or a result read back from a cache).
    """

    x_adv: torch.Tensor | None     # (P, C, H, W) pixels in [0, 1]
    expl_start: torch.Tensor       # (P,) L_e(x_v, x_t), original model
    expl_end: torch.Tensor         # (P,) L_e(x_adv, x_t), original model
    pred_victim: torch.Tensor      # (P,) int64, prediction on x_v (the explained class)
    pred_target: torch.Tensor      # (P,) int64, prediction on x_t (class of the target map)
    pred_adv: torch.Tensor         # (P,) int64, prediction on x_adv, original model
    class_changed: torch.Tensor    # (P,) bool, pred_adv != pred_victim
    loss_trace: torch.Tensor       # (K, P) objective at each trace point
    expl_trace: torch.Tensor       # (K, P) L_e part of the objective at each trace point
    trace_points: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)
    pairs: torch.Tensor | None = None  # (P, 2) int64 (victim, target) image indices if known

    #: the per-pair fields (trace fields are (K, P)), as :meth:`per_pair` returns them
    PER_PAIR: ClassVar[tuple[str, ...]] = (
        "expl_start", "expl_end", "pred_victim", "pred_target", "pred_adv", "class_changed",
        "loss_trace", "expl_trace", "pairs")

    def __len__(self) -> int:
        return int(self.expl_end.shape[0])

    def per_pair(self) -> dict[str, Any]:
        """The per-pair tensors on the CPU (no x_adv) and ``trace_points``: what a cache or
        an entry's per-example file keeps; :meth:`from_per_pair` reads it back."""
        out: dict[str, Any] = {f: getattr(self, f).detach().cpu() for f in self.PER_PAIR
                               if getattr(self, f) is not None}
        out["trace_points"] = list(self.trace_points)
        return out

    @staticmethod
    def from_per_pair(d: dict[str, Any], params: dict[str, Any] | None = None
                      ) -> "ManipulationResult":
        return ManipulationResult(
            x_adv=None, trace_points=tuple(float(f) for f in d["trace_points"]),
            params=dict(params or {}), **{f: d.get(f) for f in ManipulationResult.PER_PAIR})

    @staticmethod
    def cat(results: list["ManipulationResult"]) -> "ManipulationResult":
        """Concatenate chunk results along the pair axis (trace tensors along dim 1)."""
        if not results:
            raise ValueError("no results to concatenate")
        out: dict[str, Any] = {}
        for f in fields(ManipulationResult):
            vals = [getattr(r, f.name) for r in results]
            if f.name in ("trace_points", "params"):
                out[f.name] = vals[0]
            elif f.name in ("pairs", "x_adv"):
                out[f.name] = None if any(v is None for v in vals) else torch.cat(vals)
            else:
                out[f.name] = torch.cat(vals, dim=1 if f.name.endswith("_trace") else 0)
        return ManipulationResult(**out)


class ChunkStore(Protocol):
    """Where :func:`manipulate_pairs` keeps finished chunks (a cache, for resuming)."""

    def load(self, chunk: int, pairs: torch.Tensor) -> ManipulationResult | None:
        """The stored result of chunk ``chunk`` (rows ``pairs``), or None."""

    def save(self, chunk: int, result: ManipulationResult) -> None:
        """Keep the result of a finished chunk."""


def ordered_pairs(n: int) -> torch.Tensor:
    """All ordered pairs (v, t), v != t, of n images, victim-major: (n*(n-1), 2) int64.

    150 images give 22,350 pairs (PROTOCOL section 4).
    """
    v, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = v != t
    return torch.stack([v[keep], t[keep]], dim=1)


def beta_schedule(i: int, iterations: int, beta_range: tuple[float, float] = (10.0, 100.0)
                  ) -> float:
    """Softplus beta at iteration i (0-based): geometric growth from ``beta_range[0]`` toward
    ``beta_range[1]`` (reached in the limit i = iterations), as ``get_beta`` in the
    Dombrowski reference ``src/run_attack.py``."""
    b0, b1 = beta_range
    return b0 * (b1 / b0) ** (i / max(iterations, 1))


def attack_copy(model: nn.Module, beta: float) -> tuple[nn.Module, list[nn.Softplus]]:
    """The model an input attack differentiates: :func:`~xrbench.inference.frozen_inference_copy`
    of ``model`` (BatchNorm folded, cheap double backward, parameters frozen; the same
    function up to float32 rounding), with every ``nn.ReLU`` replaced by a Softplus of
    ``beta``. Returns (copy, the new Softplus modules, empty for a Softplus model)."""
    copy_ = frozen_inference_copy(model)
    return copy_, _swap_relu(copy_, beta)


def adam_attack(
    x_init: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
    project: Callable[[torch.Tensor], torch.Tensor],
    *,
    iterations: int,
    lr: float,
    softplus: list[nn.Softplus] | None = None,
    relu_beta_range: tuple[float, float] = (10.0, 100.0),
) -> torch.Tensor:
    """The attack loop both input attacks share (the Dombrowski manipulation and the frame
    attack of Adv-Insertion): Adam on the input, ``iterations`` steps of learning rate
    ``lr`` on ``sum(loss_fn(x, i))`` (a per-example loss (P,), so each example's trajectory
    is independent of its batch), then ``x <- project(x)`` after each step (budget and
    [0, 1] box). ``softplus`` (from :func:`attack_copy`) get the geometric beta schedule.
    Returns the detached result, shaped like ``x_init``.
    """
    x_adv = x_init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x_adv], lr=lr)
    with torch.enable_grad():
        for i in range(iterations):
            for sp in softplus or ():
                sp.beta = beta_schedule(i, iterations, relu_beta_range)
            (x_adv.grad,) = torch.autograd.grad(loss_fn(x_adv, i).sum(), x_adv)
            opt.step()
            with torch.no_grad():
                x_adv.copy_(project(x_adv))
    return x_adv.detach()


def signed_attack(
    x_init: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
    project: Callable[[torch.Tensor], torch.Tensor],
    *,
    iterations: int,
    alpha0: float,
    softplus: list[nn.Softplus] | None = None,
    relu_beta_range: tuple[float, float] = (10.0, 100.0),
) -> torch.Tensor:
    """Signed gradient descent on the input (PROTOCOL 5.8, ``signed``): step i (0-based) is
    ``x <- project(x - alpha_i * sign(grad))`` with the cosine-decaying step
    ``alpha_i = alpha0 * (1 + cos(pi * i / iterations)) / 2``, from ``alpha0`` toward 0 (pixel
    units). Blind to the gradient's scale, which Adam at one learning rate is not; otherwise
    as :func:`adam_attack` (per-example loss (P,), the same beta schedule). Returns the
    detached result, shaped like ``x_init``."""
    x_adv = x_init.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        for i in range(iterations):
            for sp in softplus or ():
                sp.beta = beta_schedule(i, iterations, relu_beta_range)
            (grad,) = torch.autograd.grad(loss_fn(x_adv, i).sum(), x_adv)
            alpha = alpha0 * 0.5 * (1.0 + math.cos(math.pi * i / iterations))
            with torch.no_grad():
                x_adv.copy_(project(x_adv - alpha * grad.sign()))
    return x_adv.detach()


def _swap_relu(module: nn.Module, beta: float) -> list[nn.Softplus]:
    """Replace every ``nn.ReLU`` inside ``module`` (in place) by ``nn.Softplus(beta)``."""
    new: list[nn.Softplus] = []
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            sp = DoubleBackwardSoftplus(beta=beta)
            setattr(module, name, sp)
            new.append(sp)
        else:
            new += _swap_relu(child, beta)
    return new


def _objective(model: nn.Module, explainer: Explain, x: torch.Tensor, cls: torch.Tensor,
               target_map: torch.Tensor, prob_victim: torch.Tensor, map_prefactor: float,
               output_prefactor: float, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair (objective (P,), L_e (P,)) at x (P, C, H, W)."""
    both = getattr(explainer, "attribute_and_logits", None)
    if both is not None:  # one forward pass serves the map and the output term
        a, logits = both(model, x, cls, create_graph=create_graph)
    else:
        a, logits = explainer(model, x, cls, create_graph=create_graph), model(x)
    expl = expl_loss(sum_map(a), target_map)
    out = ((F.softmax(logits, dim=1) - prob_victim) ** 2).mean(dim=1)
    return map_prefactor * expl + output_prefactor * out, expl


def manipulate(
    model: nn.Module,
    explainer: Explain,
    x_victim: torch.Tensor,
    x_target: torch.Tensor,
    *,
    iterations: int,
    lr: float,
    eps: float | None = None,
    map_prefactor: float = 1e11,
    output_prefactor: float = 1e6,
    trace_points: tuple[float, ...] = (0.1, 0.5, 1.0),
    relu_beta_range: tuple[float, float] = (10.0, 100.0),
) -> ManipulationResult:
    """Run the targeted manipulation for P pairs at once (PROTOCOL 5.2).

    x_victim, x_target: (P, C, H, W) pixels in [0, 1], row p is pair p. ``lr``: Adam learning
    rate in pixel units (the reference's normalised-space 2e-4 is ``2e-4 * std`` here). ``eps``:
    optional L-inf budget in pixel units around x_victim (None: only the [0, 1] box, as in the
    reference). The model runs in eval mode (restored afterwards); gradients are taken with
    respect to x' only, so model parameters never receive ``.grad``. Its keyword arguments
    are the stage's protocol parameters (recorded in the entry); the worst-case ensemble's
    variants of it are :func:`manipulation_variant`.
    """
    return manipulation_variant(
        model, explainer, x_victim, x_target, iterations=iterations, lr=lr, eps=eps,
        map_prefactor=map_prefactor, output_prefactor=output_prefactor,
        trace_points=trace_points, relu_beta_range=relu_beta_range)


def manipulation_variant(
    model: nn.Module,
    explainer: Explain,
    x_victim: torch.Tensor,
    x_target: torch.Tensor,
    *,
    iterations: int,
    lr: float,
    eps: float | None = None,
    map_prefactor: float = 1e11,
    output_prefactor: float = 1e6,
    trace_points: tuple[float, ...] = (0.1, 0.5, 1.0),
    relu_beta_range: tuple[float, float] = (10.0, 100.0),
    surrogate: nn.Module | None = None,
    x_start: torch.Tensor | None = None,
    step: str = "adam",
    alpha0: float | None = None,
) -> ManipulationResult:
    """:func:`manipulate` with one thing changed, for the worst-case ensemble (PROTOCOL 5.8).

    The variants of the worst-case ensemble (:mod:`xrbench.attacks.ensemble`) change one
    thing each, everything else (objective, target map, victim probabilities, final values on
    ``model``) staying as in :func:`manipulate`: ``surrogate``, a model the attack
    differentiates in place of ``model`` (its smoothed copy); ``x_start`` (P, C, H, W), where
    the descent starts in place of x_victim (a random start; the budget stays around
    x_victim); ``step="signed"`` with ``alpha0``: signed steps (:func:`signed_attack`) in
    place of Adam (``lr`` is then unused).
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    if step not in ("adam", "signed"):
        raise ValueError(f"step must be 'adam' or 'signed', not {step!r}")
    if step == "signed" and (alpha0 is None or not alpha0 > 0):
        raise ValueError("step='signed' needs alpha0 > 0 (pixel units)")
    x_victim, x_target = x_victim.detach(), x_target.detach()
    steps_at = [round(f * iterations) for f in trace_points]
    with eval_mode(model):
        # fixed quantities, all from the original model
        with torch.no_grad():
            prob_victim = F.softmax(model(x_victim), dim=1)
            pred_victim = prob_victim.argmax(dim=1)
            pred_target = model(x_target).argmax(dim=1)
        target_map = sum_map(explainer(model, x_target, pred_target))
        start_map = sum_map(explainer(model, x_victim, pred_victim))
        expl_start = expl_loss(start_map, target_map)

        # the attack differentiates a frozen copy built for cheap double backward (the same
        # function up to float32 rounding; xrbench.inference)
        attack_model, softplus = attack_copy(model if surrogate is None else surrogate,
                                             relu_beta_range[0])
        if softplus:
            log.info("ReLU model: attacking a Softplus surrogate, beta %g -> %g (geometric)",
                     *relu_beta_range)

        loss_trace = x_victim.new_zeros(len(trace_points), x_victim.shape[0])
        expl_trace = torch.zeros_like(loss_trace)

        def record(step: int, loss: torch.Tensor, expl: torch.Tensor) -> None:
            for k, s in enumerate(steps_at):
                if s == step:
                    loss_trace[k], expl_trace[k] = loss.detach(), expl.detach()

        def loss_fn(x: torch.Tensor, i: int) -> torch.Tensor:
            loss, expl = _objective(attack_model, explainer, x, pred_victim, target_map,
                                    prob_victim, map_prefactor, output_prefactor, True)
            record(i, loss, expl)
            return loss

        def project(x: torch.Tensor) -> torch.Tensor:
            if eps is not None:
                x = torch.min(torch.max(x, x_victim - eps), x_victim + eps)
            return x.clamp(0.0, 1.0)

        x0 = x_victim if x_start is None else x_start.detach()
        if step == "signed":
            assert alpha0 is not None
            x_adv = signed_attack(x0, loss_fn, project, iterations=iterations, alpha0=alpha0,
                                  softplus=softplus, relu_beta_range=relu_beta_range)
        else:
            x_adv = adam_attack(x0, loss_fn, project, iterations=iterations, lr=lr,
                                softplus=softplus, relu_beta_range=relu_beta_range)
        if iterations in steps_at:
            loss, expl = _objective(attack_model, explainer, x_adv, pred_victim, target_map,
                                    prob_victim, map_prefactor, output_prefactor, False)
            record(iterations, loss, expl)

        # final values on the original model
        end_map = sum_map(explainer(model, x_adv, pred_victim))
        expl_end = expl_loss(end_map, target_map)
        with torch.no_grad():
            pred_adv = model(x_adv).argmax(dim=1)

    params = {"iterations": iterations, "lr": lr, "eps": eps, "map_prefactor": map_prefactor,
              "output_prefactor": output_prefactor, "optimizer": "adam",
              "relu_surrogate": bool(softplus), "attack_model": "frozen_inference_copy",
              "relu_beta_range": list(relu_beta_range), "relu_beta_growth": "geometric"}
    if step == "signed":  # the ensemble's variants say what they changed
        params.update(optimizer="signed", alpha0=alpha0, step_decay="cosine")
    if surrogate is not None:
        params["surrogate"] = True
    if x_start is not None:
        params["start"] = "given"
    return ManipulationResult(
        x_adv=x_adv, expl_start=expl_start.detach(), expl_end=expl_end.detach(),
        pred_victim=pred_victim, pred_target=pred_target, pred_adv=pred_adv,
        class_changed=pred_adv != pred_victim, loss_trace=loss_trace, expl_trace=expl_trace,
        trace_points=tuple(trace_points), params=params)


def manipulate_pairs(
    model: nn.Module,
    explainer: Explain,
    images: torch.Tensor,
    pairs: torch.Tensor,
    *,
    pair_batch: int = 512,
    progress: bool = False,
    chunk_store: ChunkStore | None = None,
    first_chunk: int = 0,
    keep_x_adv: bool = True,
    **attack: Any,
) -> ManipulationResult:
    """:func:`manipulate` over ``pairs`` (P, 2) of (victim, target) rows into ``images``
    (N, C, H, W), ``pair_batch`` pairs at a time; results concatenated in ``pairs`` order.

    The one chunker of the pair attack: the evaluate stage and the Python API both use it.
    ``attack`` holds :func:`manipulate`'s keyword arguments (``iterations``, ``lr``, ...).
    Because the objective is a per-pair sum, the result does not depend on ``pair_batch``.
    ``chunk_store`` (a :class:`ChunkStore`) is asked for each chunk before it is computed and
    is given each computed chunk, so an interrupted run resumes at the first missing chunk.
    ``first_chunk``: the index the store knows the first chunk by (a shard of a longer list
    of pairs starting at chunk ``first_chunk``, :mod:`xrbench.engine.sharding`).
    ``keep_x_adv=False`` drops the manipulated images (memory flat in the number of pairs).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    pairs = pairs.long()
    chunks: list[ManipulationResult] = []
    bar = tqdm(total=len(pairs), unit="pair", desc="manipulation", disable=not progress,
               dynamic_ncols=True)
    try:
        for k, chunk in enumerate(chunk_slices(len(pairs), pair_batch), start=first_chunk):
            idx = pairs[chunk]
            res = chunk_store.load(k, idx) if chunk_store is not None else None
            if res is None:
                res = manipulate(model, explainer, images[idx[:, 0]].to(device),
                                 images[idx[:, 1]].to(device), **attack)
                res.pairs = idx
                if chunk_store is not None:
                    chunk_store.save(k, res)
            if not keep_x_adv:
                res.x_adv = None
            chunks.append(res)
            bar.update(len(idx))
    finally:
        bar.close()
    out = ManipulationResult.cat(chunks)
    out.params = {**out.params, "pair_batch": pair_batch}
    return out
