"""The contract of a protocol stage (what :mod:`xrbench.stages` declares, once each).

A stage is a small object:

- ``name`` and ``version`` (bump the version in the commit that changes what the stage
  computes beyond float rounding: caches written by older code are then not reused);
- ``call(ctx)``: the metric or attack function bound to its protocol arguments (a
  :class:`~xrbench.engine.runtime.ProtocolCall`); ``params(ctx)`` (by default ``call(ctx).params()``)
  are its protocol parameters, read from the code that runs, recorded in the entry and part of
  the cache key;
- ``run(ctx)``: a dict of per-example tensors (per image, or per pair for the manipulation),
  cached, and kept beside the entry in its per-example file;
- ``summarize(ctx, out)``: its part of the entry, metric objects with bootstrap intervals and
  flags;
- ``columns``: one :class:`~xrbench.columns.Column` per metric it reports (where it sits in
  the entry, label, unit, scale, digits, better direction, whether it is a leaderboard
  column and enters the correlations): the summary, every leaderboard format, the plots and
  ``xrbench regress`` read this one declaration;
- ``rows(metrics)``: how the command line prints its metrics (by default one row per number
  of each column);
- shardable stages (``shard_unit`` "images" or "pairs") also have ``run_shard(ctx, lo, hi)``,
  the output over items lo .. hi - 1 (each item's result independent of the others), and
  ``merge(ctx, parts)``, which concatenates shard outputs in item order into exactly what
  ``run`` gives (:mod:`xrbench.engine.sharding`; ``evaluate --shards N``);
- ``applicable(ctx)``: None when the stage can run with this run's model and explainer, else
  the reason it cannot (by default: a stage that differentiates through the explainer's map,
  ``differentiates``, is not applicable to an evaluation-only explainer such as captum's
  ``deeplift``, ``lrp`` or ``gradcam``). :func:`run_stages` skips such a stage and records the
  reason; the entry names it under ``not_applicable`` and holds none of its metrics, and the
  run goes on: an explainer is scored on every stage it can be.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ..columns import Column, instances
from .runtime import ProtocolCall, RunContext

log = logging.getLogger("xrbench.api")  # the per-stage lines the CLI shows in a log


@dataclass(frozen=True)
class Row:
    """One printed summary row: a metric object shown as ``value * scale`` with ``digits``
    decimals, which direction is better (``"higher"``, ``"lower"`` or ``""`` where neither
    is), and what the number means in one line."""

    label: str
    metric: dict[str, Any] | None
    scale: float = 1.0
    digits: int = 2
    better: str = ""
    meaning: str = ""


@dataclass(frozen=True)
class Example:
    """The per-example values behind one metric object: ``values`` (n,) (per image, or per
    pair), the resampling ``groups`` (victims for pair metrics, None for images), the
    ``scale`` the entry reports it in (100 for percentages), and whether it has a median."""

    values: torch.Tensor
    groups: torch.Tensor | None = None
    scale: float = 1.0
    median: bool = False


def metric_tree(ctx: RunContext, examples: dict[tuple[str, ...], Example]) -> dict[str, Any]:
    """Metric objects (:meth:`RunContext.metric`) nested by the keys' parts:
    ``{("rps", "cosine", "8/255"): ...}`` -> ``{"rps": {"cosine": {"8/255": {...}}}}``."""
    tree: dict[str, Any] = {}
    for key, ex in examples.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = ctx.metric(ex.values, ex.groups, scale=ex.scale, median=ex.median)
    return tree


@dataclass
class Summary:
    """A stage's part of the entry: metric objects (``metrics``) and boolean ``flags``."""

    metrics: dict[str, Any]
    flags: dict[str, bool] = field(default_factory=dict)


class Stage:
    """Base of the protocol stages; see the module docstring for the contract."""

    name: ClassVar[str]
    version: ClassVar[int]
    #: where its rows go in the printed summary (lower first); stages run in STAGES order
    summary_rank: ClassVar[int] = 50
    #: what the stage differentiates through the explainer's map (``create_graph``), in a
    #: few words ("the Adv-Insertion frame attack"); "" when it only evaluates maps
    differentiates: ClassVar[str] = ""
    #: what a shard of the stage covers ("images", "pairs"); "" = the stage runs whole
    shard_unit: ClassVar[str] = ""
    #: the metrics it reports, declared once (:mod:`xrbench.columns`)
    columns: ClassVar[tuple[Column, ...]] = ()

    def applicable(self, ctx: RunContext) -> str | None:
        """None when the stage can run in ``ctx``; else the reason it cannot, one sentence for
        the entry's ``not_applicable`` and the leaderboard's footnote. By default a stage
        that :attr:`differentiates` through the map needs a differentiable explainer."""
        if self.differentiates and not ctx.explainer.differentiable:
            return (f"explainer {ctx.explainer.name!r} is evaluation-only (not differentiable);"
                    f" {self.differentiates} differentiates through its map")
        return None

    def call(self, ctx: RunContext) -> ProtocolCall:
        """The stage's metric or attack function with its protocol arguments bound."""
        raise NotImplementedError

    def params(self, ctx: RunContext) -> dict[str, Any]:
        """The protocol parameters, by default those of :meth:`call`."""
        return self.call(ctx).params()

    def run(self, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        """The per-example values behind each of the stage's metric objects, by entry key
        path, read from its output ``out`` (``grey``: the dataset's images are grey; it
        decides how eps values are written). Summaries and paired comparisons of two
        entries (:mod:`xrbench.compare`) both read this one mapping."""
        return {}

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        """By default the metric objects of :meth:`examples`, and no flags."""
        return Summary(metric_tree(ctx, self.examples(out, ctx.card.grey)))

    def rows(self, metrics: dict[str, Any]) -> list[Row]:
        """The summary's rows: per column, one row per number of it in ``metrics`` (a plain
        column always has its row, missing or not; a family one per member)."""
        return column_rows(self.columns, metrics)

    def execute(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        """``run(ctx)``, or its cached output for the same inputs and parameters."""
        return ctx.cached(self.name, ctx.key(self.name, self.version, params),
                          lambda: self.run(ctx))

    # --- sharding (only for stages with a shard_unit) ---------------------------------------

    def shard_items(self, ctx: RunContext) -> int:
        """How many items the stage's shards divide (by default the subset's images)."""
        return int(ctx.images.shape[0])

    def shard_align(self, ctx: RunContext) -> int:
        """Shard edges fall on multiples of this many items (the manipulation's chunks)."""
        return 1

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        """The stage's output over items ``lo .. hi - 1`` (what :meth:`merge` takes)."""
        raise NotImplementedError(f"stage {self.name!r} cannot be sharded")

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Shard outputs, in item order, into the output :meth:`run` gives."""
        raise NotImplementedError(f"stage {self.name!r} cannot be sharded")

    def execute_sharded(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        """Like :meth:`execute`, the output computed in ``ctx.shards`` shards when it is not
        cached (:func:`xrbench.engine.sharding.run_sharded`); cached under the same key."""
        from .sharding import run_sharded

        return ctx.cached(self.name, ctx.key(self.name, self.version, params),
                          lambda: run_sharded(ctx, self, params))


def eps_key(eps: float, decimal: bool) -> str:
    """Label of an eps value as entries write it: ``"8/255"`` for grey-level radii, the
    decimal (``"0.1"``) when ``decimal`` (the grey datasets' retrieval radii)."""
    k = eps * 255
    if not decimal and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


def column_rows(columns: Sequence[Column], metrics: dict[str, Any]) -> list[Row]:
    """The summary rows of ``columns`` over an entry's ``metrics`` (:meth:`Stage.rows`)."""
    rows = []
    for c in columns:
        found = instances(metrics, c)
        if not found and not c.family:
            found = [(c.path, (), None)]
        for _path, parts, obj in found:
            metric = {"value": obj, "ci": None} if c.number else obj
            rows.append(Row(c.summary_label(parts), metric, c.scale, c.digits, c.better,
                            c.meaning_of(parts)))
    return rows


@dataclass
class Outcome:
    """What :func:`run_stages` gives back: per stage its ``params``, per-example ``outputs``
    and wall ``seconds`` spent now, the entry's ``metrics`` and ``flags``, and the stages
    that did not run with the reason (``not_applicable``, :meth:`Stage.applicable`)."""

    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)


def run_stages(ctx: RunContext, stages: Sequence[Stage]) -> Outcome:
    """Run (or take from the cache) each applicable stage in order and summarise it; a stage
    that is not applicable (:meth:`Stage.applicable`) is skipped, its reason recorded."""
    done = Outcome()
    for stage in stages:
        reason = stage.applicable(ctx)
        if reason is not None:
            done.not_applicable[stage.name] = reason
            log.info("%s: not applicable (%s)", stage.name, reason)
            continue
        done.params[stage.name] = stage.params(ctx)
        t0 = time.perf_counter()
        if ctx.shards > 1 and stage.shard_unit:
            done.outputs[stage.name] = stage.execute_sharded(ctx, done.params[stage.name])
        else:
            done.outputs[stage.name] = stage.execute(ctx, done.params[stage.name])
        done.seconds[stage.name] = round(time.perf_counter() - t0, 3)
        ctx.outputs[stage.name] = done.outputs[stage.name]
        if stage.name in ctx.reused_stages:
            log.info("%s: reused from the cache (it took %.1f s when computed)", stage.name,
                     ctx.timing[stage.name])
        else:
            log.info("%s: computed in %.1f s", stage.name, ctx.timing[stage.name])
        summary = stage.summarize(ctx, done.outputs[stage.name])
        done.metrics.update(summary.metrics)
        done.flags.update(summary.flags)
    return done
