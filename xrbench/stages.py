"""The protocol's stages, each ``stage(ctx) -> dict`` of per-example tensors, and the
summaries that turn them into an entry's metric objects (with bootstrap intervals)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .evaluate import EvalContext, metric, progress_bar, require_differentiable, seeded

log = logging.getLogger(__name__)

# the long pair attack runs last, so every other number is in the cache early
STAGES = ("accuracy", "rps", "insertion", "adv_insertion", "retrieval", "landscape",
          "manipulation")

# Part of every stage's cache key: bump a stage's number in the commit that changes what it
# computes (beyond float rounding), so caches written by older code are not reused.
CODE_VERSIONS = {"accuracy": 1, "rps": 1, "insertion": 1, "adv_insertion": 1, "retrieval": 1,
                 "landscape": 1, "manipulation": 1, "manipulation-chunk": 1}


def eps_key(eps: float, decimal: bool) -> str:
    """Label of an eps value as entries write it: ``"8/255"`` for grey-level radii, the
    decimal (``"0.1"``) when ``decimal`` (the grey datasets' retrieval radii)."""
    k = eps * 255
    if not decimal and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


# --- 5.1 accuracy -------------------------------------------------------------------------------

def stage_accuracy(ctx: EvalContext) -> dict[str, Any]:
    from .metrics.accuracy import accuracy_under_pgd

    test = ctx.dataset.test
    cap = ctx.profile.pgd_max_images
    n = len(test) if cap is None else min(cap, len(test))
    out = accuracy_under_pgd(ctx.model, test, eps=ctx.dataset.card.eps_pgd,
                             steps=ctx.profile.pgd_steps, indices=torch.arange(n),
                             generator=seeded(ctx, 1), progress=ctx.progress)
    return {"clean_correct": out["clean_correct"].cpu(), "pgd_correct": out["pgd_correct"].cpu()}


# --- 5.2 manipulation (chunk-level resume) -----------------------------------------------------

MANIPULATION_FIELDS = ("expl_start", "expl_end", "pred_victim", "pred_target", "pred_adv",
                       "class_changed", "loss_trace", "expl_trace", "pairs")


def stage_manipulation(ctx: EvalContext) -> dict[str, Any]:
    """All ordered pairs of the subset, in chunks of ``profile.pair_batch``; every finished
    chunk is cached on its own so an interrupted run resumes at the next chunk."""
    from .attacks.manipulation import manipulate, ordered_pairs

    require_differentiable(ctx.explainer, "explanation manipulation")
    p = ctx.profile
    lr = p.lr_for(ctx.dataset.card)
    pairs = ordered_pairs(ctx.images.shape[0])
    chunks: list[dict[str, Any]] = []
    bar = progress_bar(len(pairs), "manipulation", ctx.progress, unit="pair")
    for k, start in enumerate(range(0, len(pairs), p.pair_batch)):
        idx = pairs[start:start + p.pair_batch]
        key = ctx.key("manipulation-chunk", chunk=k, size=p.pair_batch, pairs=len(pairs),
                      iterations=p.manipulation_iterations, lr=lr)
        path = ctx.cache.path("manipulation-chunk", key)
        done = ctx.cache.load(path)
        if done is None:
            res = manipulate(ctx.model, ctx.explainer, ctx.images[idx[:, 0]],
                             ctx.images[idx[:, 1]], iterations=p.manipulation_iterations, lr=lr)
            res.pairs = idx
            done = {f: getattr(res, f).detach().cpu() for f in MANIPULATION_FIELDS}
            done["trace_points"] = list(res.trace_points)
            ctx.cache.save(path, done)
        chunks.append(done)
        bar.update(len(idx))
    bar.close()
    out: dict[str, Any] = {f: torch.cat([c[f] for c in chunks], dim=1 if f.endswith("_trace")
                                        else 0) for f in MANIPULATION_FIELDS}
    out["trace_points"] = chunks[0]["trace_points"]
    return out


def summarize_manipulation(ctx: EvalContext, out: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    from .attacks.manipulation import ManipulationResult
    from .metrics.manipulation import manipulation_metrics

    res = ManipulationResult(x_adv=torch.empty(0), trace_points=tuple(out["trace_points"]),
                             params={}, **{f: out[f] for f in MANIPULATION_FIELDS})
    m = manipulation_metrics(res)
    victims = out["pairs"][:, 0]
    b = ctx.profile.bootstrap_resamples
    metrics = {
        "expl_start": metric(out["expl_start"], b, ctx.seed, victims, median=True),
        "expl_end": metric(out["expl_end"], b, ctx.seed, victims, median=True),
        "class_changed": metric(out["class_changed"].float(), b, ctx.seed, victims),
        "manipulation_loss": {f"at_{round(100 * f)}": float(out["loss_trace"][k].double().mean())
                              for k, f in enumerate(out["trace_points"])},
    }
    return metrics, bool(m["not_converged"])


# --- 5.3 RPS ----------------------------------------------------------------------------------

def stage_rps(ctx: EvalContext) -> dict[str, Any]:
    from .metrics.rps import rps

    card = ctx.dataset.card
    values = rps(ctx.model, ctx.explainer, ctx.images, ctx.labels, eps=card.rps_eps,
                 draws=ctx.profile.rps_draws, seed=ctx.seed)
    return {"values": {sim: {eps_key(e, False): v.cpu() for e, v in per.items()}
                       for sim, per in values.items()}}


# --- 5.4 Insertion / Adv-Insertion -----------------------------------------------------------

def stage_insertion(ctx: EvalContext) -> dict[str, Any]:
    from .metrics.insertion import insertion

    return {"scores": insertion(ctx.model, ctx.explainer, ctx.images, ctx.labels).cpu()}


def stage_adv_insertion(ctx: EvalContext) -> dict[str, Any]:
    from .attacks.frame import adv_insertion_eps
    from .metrics.insertion import adv_insertion

    require_differentiable(ctx.explainer, "Adv-Insertion frame attack")
    scores = adv_insertion(ctx.model, ctx.explainer, ctx.images, ctx.labels,
                           eps=adv_insertion_eps(ctx.model_name),
                           iterations=ctx.profile.adv_insertion_iterations)
    return {"scores": scores.cpu()}


# --- 5.5 retrieval ------------------------------------------------------------------------------

RETRIEVAL_KINDS = ("relex_adv_mask", "relex_clean_mask", "explainer_adv_mask",
                   "explainer_clean_mask")


def stage_retrieval(ctx: EvalContext) -> dict[str, Any]:
    from .metrics.retrieval import retrieval

    p = ctx.profile
    out = retrieval(ctx.model, ctx.explainer, ctx.images, card=ctx.dataset.card,
                    generator=seeded(ctx, 5), pgd_steps=p.retrieval_pgd_steps,
                    relex={"iterations": p.relex_iterations, "samples": p.relex_samples},
                    progress=ctx.progress)
    return {"eps": [float(e) for e in out["eps"]],
            "hits": {k: out["hits"][k].cpu() for k in RETRIEVAL_KINDS}}


# --- 5.6 landscape ------------------------------------------------------------------------------

def stage_landscape(ctx: EvalContext) -> dict[str, Any]:
    from .attacks.manipulation import ordered_pairs
    from .metrics.landscape import ce_landscape, explanation_landscape

    require_differentiable(ctx.explainer, "loss landscape")
    p = ctx.profile
    gammas = torch.linspace(0, p.landscape_gamma_max_eps * ctx.dataset.card.eps_pgd,
                            p.landscape_points)
    pairs = ordered_pairs(ctx.images.shape[0])
    g = torch.Generator().manual_seed(ctx.seed)
    pick = pairs[torch.randperm(len(pairs), generator=g)[:p.landscape_pairs]]
    expl = explanation_landscape(ctx.model, ctx.explainer, ctx.images, pick, gammas,
                                 generator=seeded(ctx, 6))
    ce = ce_landscape(ctx.model, ctx.images, ctx.labels, gammas, generator=seeded(ctx, 7))
    return {"gammas": gammas, "explanation": torch.as_tensor(expl).cpu(),
            "cross_entropy": torch.as_tensor(ce).cpu()}
