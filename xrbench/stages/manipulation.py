"""The protocol's targeted explanation manipulation stage (PROTOCOL.md 5.2; it runs last but
for the gallery: the longest) with its chunk cache, and the saliency gallery that re-runs its
attack on a few pairs for the figures; :data:`xrbench.stages.STAGES` lists them in the order
they run, :mod:`xrbench.engine.stage` says what a stage is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch

from ..columns import Column
from ..engine.runtime import ProtocolCall, RunContext, require_differentiable
from ..engine.stage import Example, Row, Stage, Summary, metric_tree

log = logging.getLogger("xrbench.stages")  # the logger's name from before the split


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
        from ..attacks import manipulation

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
        from ..attacks.manipulation import manipulate_pairs, ordered_pairs

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
        from ..attacks.manipulation import ManipulationResult

        return ManipulationResult.cat([ManipulationResult.from_per_pair(p)
                                       for p in parts]).per_pair()

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        from ..metrics.manipulation import mean_loss_at, second_half_fall
        from ..protocol import CONVERGENCE_TOLERANCE

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
        from ..attacks.manipulation import ManipulationResult

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
    from ..protocol import CLUSTERS

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
        from ..attacks.pgd import eval_mode
        from ..explainers import sum_map

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
