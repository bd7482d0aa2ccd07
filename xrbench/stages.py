"""The protocol's stages (PROTOCOL.md section 5), each declared once, in the order they run
(:data:`STAGES`); :mod:`xrbench.stage` says what a stage is.

Adding a metric: write the metric function (``metrics/<name>.py``), declare its stage here and
add it to :data:`STAGES`, and describe its entry keys in ``leaderboard/schema.json``
(docs/adding-a-metric.md walks through an example).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch

from .columns import MIDDLE, TABLE_EPS, WILDCARD, Column
from .runtime import ProtocolCall, RunContext, require_differentiable, stage_seed
from .stage import Example, Row, Stage, Summary, eps_key, metric_tree

log = logging.getLogger(__name__)

__all__ = ["STAGES", "Row", "Stage", "Summary", "eps_key", "ProtocolCall", "RunContext"]


# --- 5.1 clean and PGD accuracy ----------------------------------------------------------------

class Accuracy(Stage):
    """Clean and PGD accuracy on the test split (capped by the profile)."""

    name = "accuracy"
    version = 2
    summary_rank = 0

    def call(self, ctx: RunContext) -> ProtocolCall:
        from .attacks.pgd import pgd_step_size
        from .metrics import accuracy as acc

        eps, steps = ctx.card.eps_pgd, ctx.profile.pgd_steps
        return ProtocolCall.bind(acc.accuracy_under_pgd, eps=eps, steps=steps,
                                 step_size=pgd_step_size(eps, steps))

    def n_images(self, ctx: RunContext) -> int:
        cap, n = ctx.profile.pgd_max_images, len(ctx.dataset.test)
        return n if cap is None else min(cap, n)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        return {**self.call(ctx).params(), "n_images": self.n_images(ctx)}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        out = self.call(ctx)(ctx.model, ctx.dataset.test,
                             indices=torch.arange(self.n_images(ctx)),
                             generator=ctx.generator(self.name), progress=ctx.progress)
        return {"clean_correct": out["clean_correct"].cpu(),
                "pgd_correct": out["pgd_correct"].cpu()}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("clean_acc",): Example(out["clean_correct"].float(), scale=100.0),
                ("pgd_acc",): Example(out["pgd_correct"].float(), scale=100.0)}

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        metrics = metric_tree(ctx, self.examples(out, ctx.card.grey))
        chance = 100.0 / ctx.card.num_classes
        return Summary(metrics,
                       {"degenerate": (metrics["clean_acc"]["value"] or 0.0) < 2 * chance})

    columns = (
        Column("clean_acc", ("clean_acc",), "clean acc (%)", "percent", "accuracy",
               digits=2, better="higher", summary="clean accuracy (%)", interval_digits=2,
               order=10, meaning="test images classified correctly"),
        Column("pgd_acc", ("pgd_acc",), "PGD acc (%)", "percent", "accuracy", digits=2,
               better="higher", summary="PGD accuracy (%)", interval_digits=2, order=20,
               meaning="still correct under an L-inf PGD attack (prediction robustness)"),
    )


# --- 5.3 RPS ----------------------------------------------------------------------------------

class RPS(Stage):
    """Random perturbation similarity of the explainer's maps."""

    name = "rps"
    version = 2

    def call(self, ctx: RunContext) -> ProtocolCall:
        from .metrics import rps

        return ProtocolCall.bind(rps.rps, eps=tuple(ctx.card.rps_eps),
                                 draws=ctx.profile.rps_draws)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        # the noise is drawn on the CPU: then batch size and device never change a number
        values = self.call(ctx)(ctx.model, ctx.explainer, ctx.images, ctx.labels,
                                generator=ctx.generator(self.name, device="cpu"))
        return {sim: {eps_key(e, False): v.cpu() for e, v in per.items()}
                for sim, per in values.items()}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("rps", sim, e): Example(v) for sim, per in out.items()
                if not sim.startswith("_") for e, v in per.items()}

    columns = (
        Column("rps_cosine", ("rps", WILDCARD, WILDCARD), "RPS cos", "similarity", "rps",
               digits=3, better="higher", summary="RPS {0} @ {1}", short="RPS cos",
               pick=("cosine", TABLE_EPS), correlated=True, order=60,
               meaning="map similarity under uniform noise of radius eps"),
    )


# --- 5.4 Insertion and Adv-Insertion -----------------------------------------------------------

def merge_insertion(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Insertion outputs of consecutive shards of images, as one output."""
    return {"scores": torch.cat([p["scores"] for p in parts]),
            "curve": torch.cat([p["curve"] for p in parts], dim=1),
            "ratios": parts[0]["ratios"]}


def insertion_output(curves: torch.Tensor, ratios: Any) -> dict[str, Any]:
    """An Insertion stage's output from the per-image curves (N, R) in [0, 1]: ``scores``
    (N,) in percent, ``100 * mean_r`` (PROTOCOL 5.4; the metric), ``curve`` (R, N), the
    probability of the true label at each ratio, and ``ratios`` (R,) (for the figures)."""
    return {"scores": (100 * curves.mean(1)).cpu(), "curve": curves.t().contiguous().cpu(),
            "ratios": torch.tensor([float(r) for r in ratios], dtype=torch.float64)}


class Insertion(Stage):
    """Insertion score of the explainer's ranking of pixels."""

    name = "insertion"
    version = 3  # 2: the reference's 20 ratios (protocol v2); 3: keeps the curves
    shard_unit = "images"

    def call(self, ctx: RunContext) -> ProtocolCall:
        from .metrics import insertion

        return ProtocolCall.bind(insertion.insertion_curves)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.run_shard(ctx, 0, ctx.images.shape[0])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        call = self.call(ctx)
        return insertion_output(call(ctx.model, ctx.explainer, ctx.images[lo:hi],
                                     ctx.labels[lo:hi]), call.params()["ratios"])

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_insertion(parts)

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("insertion",): Example(out["scores"])}

    columns = (
        Column("insertion", ("insertion",), "Insertion (%)", "percent", "insertion",
               digits=2, better="higher", short="Insertion", correlated=True,
               interval_digits=2, order=70,
               meaning="class probability as the map's top pixels are put back "
                       "(faithfulness)"),
    )


class AdvInsertion(Stage):
    """Insertion in the order of the map of a frame-target manipulated image."""

    name = "adv_insertion"
    version = 4  # 3: the reference's 20 ratios (protocol v2); 4: keeps the curves
    differentiates = "the Adv-Insertion frame attack (PROTOCOL 5.4)"
    shard_unit = "images"

    def call(self, ctx: RunContext) -> ProtocolCall:
        from .attacks.frame import adv_insertion_eps, frame_lr
        from .metrics import insertion

        eps = adv_insertion_eps(ctx.model_name)
        iterations = ctx.profile.adv_insertion_iterations
        return ProtocolCall.bind(insertion.adv_insertion_curves, eps=eps,
                                 iterations=iterations, lr=frame_lr(eps, iterations))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.run_shard(ctx, 0, ctx.images.shape[0])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        require_differentiable(ctx.explainer, "Adv-Insertion frame attack")
        call = self.call(ctx)
        return insertion_output(call(ctx.model, ctx.explainer, ctx.images[lo:hi],
                                     ctx.labels[lo:hi]), call.params()["ratios"])

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_insertion(parts)

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("adv_insertion",): Example(out["scores"])}

    columns = (
        Column("adv_insertion", ("adv_insertion",), "Adv-Ins. (%)", "percent",
               "adv_insertion", digits=2, better="higher", summary="Adv-Insertion (%)",
               short="Adv-Ins.", correlated=True, order=80,
               meaning="Insertion in the order of a map pushed to a frame by a small "
                       "attack"),
    )


# --- 5.5 class retrieval -----------------------------------------------------------------------

RETRIEVAL_KINDS = ("relex_adv_mask", "relex_clean_mask", "explainer_adv_mask",
                   "explainer_clean_mask")
RETRIEVAL_MEANINGS = {
    "relex_adv_mask": "clean class recovered from x_adv through the RelEx mask of x_adv "
                      "(explaining the clean class)",
    "relex_clean_mask": "clean class recovered from x_adv through the RelEx mask of x",
    "explainer_adv_mask": "the same with the explainer's own map of x_adv as the mask",
    "explainer_clean_mask": "the same with the explainer's own map of x as the mask",
}


class Retrieval(Stage):
    """Class retrieval through RelEx masks and the explainer's own masks."""

    name = "retrieval"
    shard_unit = "images"
    version = 4  # 3: masks of x_adv explain the clean prediction (protocol v2); 4: keyed
    # random numbers per image (batched RelEx, shards), so other PGD starts and RelEx noise

    def calls(self, ctx: RunContext) -> tuple[ProtocolCall, ProtocolCall]:
        from .metrics import retrieval

        p = ctx.profile
        relex = ProtocolCall.bind(retrieval.relex_mask, iterations=p.relex_iterations,
                                  samples=p.relex_samples)
        return (ProtocolCall.bind(retrieval.retrieval, eps_list=tuple(ctx.card.retrieval_eps),
                                  pgd_steps=p.retrieval_pgd_steps, relex=dict(relex.kwargs)),
                relex)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        from .attacks.pgd import pgd_step_size

        call, relex = self.calls(ctx)
        p = call.params()
        p["pgd_step_size"] = [pgd_step_size(e, p["pgd_steps"]) for e in p["eps_list"]]
        p["relex"] = relex.params()  # every RelEx setting, not only the overridden ones
        return p

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.run_shard(ctx, 0, ctx.images.shape[0])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        # random numbers keyed by (stage seed, subset index): a shard's hits are the
        # whole run's hits of its images
        call, _ = self.calls(ctx)
        out = call(ctx.model, ctx.explainer, ctx.images[lo:hi], card=ctx.card,
                   seed=stage_seed(ctx.seed, self.name), image_ids=torch.arange(lo, hi),
                   progress=ctx.progress)
        return {"eps": [float(e) for e in out["eps"]],
                "hits": {k: out["hits"][k].cpu() for k in RETRIEVAL_KINDS}}

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eps": parts[0]["eps"],
                "hits": {k: torch.cat([p["hits"][k] for p in parts], dim=-1)
                         for k in RETRIEVAL_KINDS}}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("retrieval", kind, eps_key(float(e), grey)):
                Example(out["hits"][kind][i].float())
                for kind in RETRIEVAL_KINDS for i, e in enumerate(out["eps"])}

    columns = (
        Column("retrieval", ("retrieval", WILDCARD, WILDCARD), "Retrieval (%)", "share",
               "retrieval", scale=100.0, digits=1, better="higher",
               summary="retrieval {0} @ {1} (%)", short="Retrieval",
               pick=("relex_adv_mask", MIDDLE), correlated=True, order=90,
               meaning=RETRIEVAL_MEANINGS),
    )


# --- 5.6 loss landscape ------------------------------------------------------------------------

class Landscape(Stage):
    """Explanation-loss and cross-entropy landscapes along random directions (SEP eq. 5)."""

    name = "landscape"
    version = 2

    def gammas(self, ctx: RunContext) -> torch.Tensor:
        p = ctx.profile
        return torch.linspace(0, p.landscape_gamma_max_eps * ctx.card.eps_pgd,
                              p.landscape_points)

    def calls(self, ctx: RunContext) -> tuple[ProtocolCall, ProtocolCall]:
        from .metrics import landscape

        gammas = self.gammas(ctx)
        return (ProtocolCall.bind(landscape.explanation_landscape_pairs, gammas=gammas),
                ProtocolCall.bind(landscape.ce_landscape_per_image, gammas=gammas))

    def params(self, ctx: RunContext) -> dict[str, Any]:
        expl, ce = self.calls(ctx)
        return {"pairs": ctx.profile.landscape_pairs,
                "explanation": expl.params(), "cross_entropy": ce.params()}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from .attacks.manipulation import ordered_pairs

        # only evaluates maps at points (no create_graph): evaluation-only explainers run it
        expl, ce = self.calls(ctx)
        pairs = ordered_pairs(ctx.images.shape[0])
        g = ctx.generator(self.name)  # one stream: the pair sample, then both directions
        order = torch.randperm(len(pairs), generator=g, device=g.device).cpu()
        pick = pairs[order[:ctx.profile.landscape_pairs]]
        return {"gammas": self.gammas(ctx), "pairs": pick,
                "explanation": expl(ctx.model, ctx.explainer, ctx.images, pick,
                                    generator=g).cpu(),
                "cross_entropy": ce(ctx.model, ctx.images, ctx.labels, generator=g).cpu()}

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        # L_e is undefined (NaN) for a pair whose map is all zero (sum_map divides by its
        # sum; Grad-CAM's ReLU gives such maps): each gamma's mean is over the pairs where it
        # is defined (null where none is), and the entry counts the others
        expl = out["explanation"]
        defined = torch.isfinite(expl)
        n = defined.sum(dim=1)
        mean = (expl.mean(dim=1) if bool(defined.all()) else
                torch.where(defined, expl, torch.zeros_like(expl)).sum(dim=1) / n.clamp_min(1))
        land: dict[str, Any] = {
            "gammas": [float(v) for v in out["gammas"]],
            "explanation": [float(m) if k > 0 else None for m, k in zip(mean, n)],
            "cross_entropy": [float(v) for v in out["cross_entropy"].mean(dim=1)]}
        if not bool(defined.all()):
            land["explanation_undefined_pairs"] = [int(v) for v in (~defined).sum(dim=1)]
        return Summary({"landscape": land})


# --- 5.2 targeted explanation manipulation (last: the longest) -----------------------------------

def legacy_loss_fall(entry: dict[str, Any]) -> float | None:
    """The manipulation's loss fall over its second half for entries written before
    ``manipulation_loss.second_half_fall`` was recorded: ``(at_50 - at_100) / at_50``."""
    loss = (entry.get("metrics") or {}).get("manipulation_loss")
    if not isinstance(loss, dict):
        return None
    half, full = loss.get("at_50"), loss.get("at_100")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (half, full)):
        return None
    return (half - full) / half if half > 0 else 0.0


class Manipulation(Stage):
    """The Dombrowski et al. attack on every ordered pair, resumable chunk by chunk."""

    name = "manipulation"
    version = 1
    summary_rank = 10
    differentiates = "the targeted manipulation attack (PROTOCOL 5.2)"
    chunk_version: ClassVar[int] = 1
    shard_unit = "pairs"

    def call(self, ctx: RunContext) -> ProtocolCall:
        from .attacks import manipulation

        p = ctx.profile
        return ProtocolCall.bind(manipulation.manipulate, iterations=p.manipulation_iterations,
                                 lr=p.lr_for(ctx.card))

    def execute(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        return ctx.cached(self.name, ctx.key(self.name, self.version, params),
                          lambda: self.run(ctx, params))

    def run(self, ctx: RunContext, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.run_shard(ctx, 0, self.shard_items(ctx), params)

    def shard_items(self, ctx: RunContext) -> int:
        n = int(ctx.images.shape[0])
        return n * (n - 1)

    def shard_align(self, ctx: RunContext) -> int:
        return ctx.profile.pair_batch  # shards of whole chunks: the unsharded run's chunks

    def run_shard(self, ctx: RunContext, lo: int, hi: int,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Pairs ``lo .. hi - 1`` of ``ordered_pairs``; ``lo`` a multiple of ``pair_batch``
        (their chunks are the unsharded run's, found in and kept in its chunk cache)."""
        from .attacks.manipulation import manipulate_pairs, ordered_pairs

        require_differentiable(ctx.explainer, "explanation manipulation")
        params = self.params(ctx) if params is None else params
        size = ctx.profile.pair_batch
        if lo % size:
            raise ValueError(f"manipulation shard starts at pair {lo}, not a chunk boundary")
        pairs = ordered_pairs(ctx.images.shape[0])
        store = _ChunkCache(ctx, params, size, len(pairs))
        res = manipulate_pairs(ctx.model, ctx.explainer, ctx.images, pairs[lo:hi],
                               pair_batch=size, progress=ctx.progress, chunk_store=store,
                               first_chunk=lo // size, keep_x_adv=False,
                               **self.call(ctx).kwargs)
        return res.per_pair()

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        from .attacks.manipulation import ManipulationResult

        return ManipulationResult.cat([ManipulationResult.from_per_pair(p)
                                       for p in parts]).per_pair()

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        from .metrics.manipulation import mean_loss_at, second_half_fall
        from .protocol import CONVERGENCE_TOLERANCE

        fall = second_half_fall(out["loss_trace"], out["trace_points"])
        not_converged = fall > CONVERGENCE_TOLERANCE
        if not_converged:  # expected at the protocol's fixed budget: a note, not a warning
            log.info("manipulation: mean loss fell %.1f%% over the last half of the "
                     "iterations (flag not_converged above %.0f%%)", 100 * fall,
                     100 * CONVERGENCE_TOLERANCE)
        metrics = metric_tree(ctx, self.examples(out, ctx.card.grey))
        # the fall itself, as a number (PROTOCOL 6), beside the flag it decides
        metrics["manipulation_loss"] = {
            **mean_loss_at(out["loss_trace"], out["trace_points"]),
            "second_half_fall": float(fall) if math.isfinite(fall) else None,
            "tolerance": CONVERGENCE_TOLERANCE}
        return Summary(metrics, {"not_converged": bool(not_converged)})

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        victims = out["pairs"][:, 0]  # the bootstrap resamples victims with all their pairs
        return {("expl_start",): Example(out["expl_start"], victims, median=True),
                ("expl_end",): Example(out["expl_end"], victims, median=True),
                ("class_changed",): Example(out["class_changed"].float(), victims)}

    columns = (
        Column("expl_start", ("expl_start",), "Expl@start (x1e-7)", "L_e", "manipulation",
               scale=1e7, digits=1, style="expl", interval_digits=0, short="Expl@start",
               correlated=True, order=30,
               meaning="L_e between victim and target maps before the attack"),
        Column("expl_end", ("expl_end",), "Expl@end (x1e-7)", "L_e", "manipulation",
               scale=1e7, digits=1, better="higher", style="expl", interval_digits=0,
               short="Expl@end", correlated=True, order=40,
               meaning="L_e left after the targeted manipulation (explanation robustness)"),
        Column("class_changed", ("class_changed",), "pairs with changed class (%)", "share",
               "manipulation", scale=100.0, digits=1, board=False,
               meaning="the manipulation changed the prediction (it should not)"),
        Column("loss_fall_2nd_half", ("manipulation_loss", "second_half_fall"),
               "Loss fall 2nd half (%)", "share", "manipulation", scale=100.0, digits=1,
               summary="loss fall, 2nd half (%)", number=True, fallback=legacy_loss_fall,
               order=50, meaning="how much the attack's mean loss still fell over its last "
                                 "half"),
    )

    def rows(self, metrics: dict[str, Any]) -> list[Row]:
        tol = (metrics.get("manipulation_loss") or {}).get("tolerance")
        rows = super().rows(metrics)
        if tol is not None:  # the threshold the entry records
            rows[-1] = dataclasses.replace(
                rows[-1], meaning=f"{rows[-1].meaning} (not_converged above {100 * tol:g}%)")
        return rows


class _ChunkCache:
    """A :class:`~xrbench.attacks.manipulation.ChunkStore` in the stage cache: every finished
    chunk of pairs is kept, so an interrupted manipulation resumes at the next chunk."""

    def __init__(self, ctx: RunContext, params: dict[str, Any], size: int, n_pairs: int
                 ) -> None:
        self.ctx, self.params, self.size, self.n_pairs = ctx, params, size, n_pairs

    def _key(self, chunk: int) -> dict[str, Any]:
        return self.ctx.key("manipulation-chunk", Manipulation.chunk_version, self.params,
                            chunk=chunk, size=self.size, pairs=self.n_pairs)

    def load(self, chunk: int, pairs: torch.Tensor) -> Any:
        from .attacks.manipulation import ManipulationResult

        done = self.ctx.cache.load("manipulation-chunk", self._key(chunk))
        if done is None or not torch.equal(done.get("pairs", torch.empty(0)), pairs):
            return None
        return ManipulationResult.from_per_pair(done)

    def save(self, chunk: int, result: Any) -> None:
        self.ctx.cache.save("manipulation-chunk", self._key(chunk), result.per_pair())


# --- the saliency gallery (figures; re-runs the 5.2 attack on a few pairs) -------------------

#: pairs the gallery keeps maps of (PROTOCOL 5.2's attack re-run on them; docs/figures.md)
GALLERY_PAIRS = 4


def gallery_pairs(n_images: int, count: int = GALLERY_PAIRS) -> torch.Tensor:
    """The gallery's (victim, target) pairs, (count, 2) int64 indices into the subset.

    The subset manifest lists its images cluster by cluster, nearest the centroid first
    (PROTOCOL 4.3), ``n_images / CLUSTERS`` per cluster. Pair j (j = 0 .. count-1) takes the
    most central image of cluster j as the victim and the most central image of cluster
    ``(j + CLUSTERS/2) mod CLUSTERS`` as the target, so victims and targets are distinct,
    typical images of different clusters, the same for every defense on the same manifest.
    """
    from .protocol import CLUSTERS

    if not 1 <= count <= CLUSTERS or n_images < CLUSTERS:
        raise ValueError(f"{count} gallery pairs need 1 <= count <= {CLUSTERS} and at least "
                         f"{CLUSTERS} images (got {n_images})")
    step = n_images // CLUSTERS
    j = torch.arange(count)
    return torch.stack([j * step, ((j + CLUSTERS // 2) % CLUSTERS) * step], dim=1)


def pair_index(pairs: torch.Tensor, n_images: int) -> torch.Tensor:
    """Row of each (victim, target) pair (P, 2) in ``ordered_pairs(n_images)`` (victim-major,
    v != t): ``v * (n - 1) + t - (t > v)``, (P,) int64."""
    v, t = pairs[:, 0].long(), pairs[:, 1].long()
    return v * (n_images - 1) + t - (t > v).long()


class Gallery(Stage):
    """Saliency maps of a few manipulated pairs, for the figures (``xrbench plot gallery``).

    Re-runs the manipulation stage's attack (the same function with the same protocol
    arguments, :meth:`Manipulation.call`) on the :data:`GALLERY_PAIRS` pairs of
    :func:`gallery_pairs`, and keeps per pair the victim, target and manipulated images and
    the three sum-normalised maps (PROTOCOL 0). The attack is per-pair deterministic, so its
    ``expl_end`` equals the manipulation stage's for the same pairs, up to float32
    reduction order. No metric: the entry records only its parameters and time.
    """

    name = "gallery"
    version = 1
    summary_rank = 90
    differentiates = "the gallery's re-run of the targeted manipulation attack (PROTOCOL 5.2)"

    def applicable(self, ctx: RunContext) -> str | None:
        """Exactly where the manipulation is (it re-runs its attack)."""
        reason = Manipulation().applicable(ctx)
        if reason is None:
            return None
        return super().applicable(ctx) or f"the manipulation is not applicable: {reason}"

    def call(self, ctx: RunContext) -> ProtocolCall:
        return Manipulation().call(ctx)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        return {"pairs": GALLERY_PAIRS, "attack": self.call(ctx).params()}

    def execute(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        # the manipulation's code version is part of what the gallery computes
        key = ctx.key(self.name, self.version, params, manipulation=Manipulation.version)
        return ctx.cached(self.name, key, lambda: self.run(ctx))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from .attacks.pgd import eval_mode
        from .explainers import sum_map

        require_differentiable(ctx.explainer, "explanation manipulation")
        n = ctx.images.shape[0]
        pairs = gallery_pairs(n)
        x_v = ctx.images[pairs[:, 0].to(ctx.images.device)]
        x_t = ctx.images[pairs[:, 1].to(ctx.images.device)]
        res = self.call(ctx)(ctx.model, ctx.explainer, x_v, x_t)
        assert res.x_adv is not None
        with eval_mode(ctx.model):  # the maps L_e compares, on the original model
            maps = [sum_map(ctx.explainer(ctx.model, x, c)).detach().float().cpu()
                    for x, c in ((x_v, res.pred_victim), (x_t, res.pred_target),
                                 (res.x_adv, res.pred_victim))]
        return {"pairs": pairs, "pair_index": pair_index(pairs, n),
                # images in float16 (1/2048 steps: enough for a figure, half the bytes)
                "x_victim": x_v.detach().half().cpu(), "x_target": x_t.detach().half().cpu(),
                "x_adv": res.x_adv.half().cpu(),
                "map_victim": maps[0], "map_target": maps[1], "map_adv": maps[2],
                "expl_start": res.expl_start.cpu(), "expl_end": res.expl_end.cpu(),
                "pred_victim": res.pred_victim.cpu(), "pred_target": res.pred_target.cpu(),
                "pred_adv": res.pred_adv.cpu()}


#: every stage, in the order it runs (the long pair attack last but for the gallery's few
#: pairs, so that every other number is cached early)
STAGES: tuple[Stage, ...] = (Accuracy(), RPS(), Insertion(), AdvInsertion(), Retrieval(),
                             Landscape(), Manipulation(), Gallery())


def all_columns() -> tuple[Column, ...]:
    """Every column the protocol's stages declare (:attr:`Stage.columns`), in stage order:
    the one list every report iterates (:mod:`xrbench.columns`)."""
    return tuple(c for s in STAGES for c in s.columns)
