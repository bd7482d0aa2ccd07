"""Sharded evaluation (``xrbench evaluate --shards N``): a long stage split into N deterministic
shards of its items (images, or pairs for the manipulation) that run as independent tasks on
an executor (:mod:`xrbench.engine.executors`: in sequence here, or as Ray tasks), then merge into the
very output an unsharded run computes.

Why the merge equals the unsharded output: a shardable stage's per-item results depend on the
item alone, never on the other items of its batch. The manipulation's objective is a sum of
per-pair terms with an elementwise optimiser, and its shards are whole chunks of
``pair_batch`` pairs, the same chunks as an unsharded run; retrieval's random numbers are keyed
by (seed, image index) (:mod:`xrbench.keyed_random`); Insertion and Adv-Insertion are
deterministic per image. ``tests/test_sharding.py`` checks merged metrics against unsharded
ones (relative 1e-6) on a local Ray cluster and in sequence.

Each finished shard is cached (``<stage>-shard`` outputs keyed by the stage's key and the
shard's bounds), so an interrupted sharded run resumes at the missing shards; the merged output
is cached under the stage's own key, where an unsharded run finds it too (and vice versa).
Stages that are cheap or whose random stream is not keyed per item (accuracy, RPS, landscape)
run whole in the driver.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .runtime import RunContext
    from .stage import Stage

log = logging.getLogger(__name__)


def shard_bounds(n_items: int, n_shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` blocks covering ``0 .. n_items - 1`` in order: at most
    ``n_shards`` non-empty blocks of whole ``align``-sized units (the last unit may be short),
    their sizes as equal as whole units allow. Deterministic: the same arguments always give
    the same blocks."""
    if n_shards < 1 or align < 1:
        raise ValueError(f"need n_shards >= 1 and align >= 1 (got {n_shards}, {align})")
    units = -(-n_items // align)  # ceil
    k = min(n_shards, units)
    if k == 0:
        return []
    edges = [round(i * units / k) * align for i in range(k + 1)]
    return [(lo, min(hi, n_items)) for lo, hi in zip(edges[:-1], edges[1:]) if lo < hi]


@dataclass(frozen=True)
class ShardItem:
    """One task: items ``lo .. hi - 1`` of ``stage`` (the stage object itself travels with
    the task: the engine below the stages never looks one up by name)."""

    stage: "Stage"
    lo: int
    hi: int


@dataclass
class ShardPayload:
    """What a shard task needs to rebuild the run's context in another process: the model (on
    the CPU while in transit), the explainer, the subset's images and labels, the dataset
    card, profile, seed, device and cache location. Picklable (Ray uses cloudpickle)."""

    model: torch.nn.Module
    model_name: str
    explainer: Any
    card: Any
    profile: Any
    images: torch.Tensor
    labels: torch.Tensor
    device: str
    seed: int
    base_key: dict[str, Any]
    cache_root: str
    force: bool
    extra_attacks: tuple[str, ...] = ()

    @staticmethod
    def from_context(ctx: "RunContext") -> "ShardPayload":
        import copy

        return ShardPayload(
            model=copy.deepcopy(ctx.model).cpu(), model_name=ctx.model_name,
            explainer=ctx.explainer, card=ctx.card, profile=ctx.profile,
            images=ctx.images.cpu(), labels=ctx.labels.cpu(), device=ctx.device.type,
            seed=ctx.seed, base_key=dict(ctx.base_key),
            cache_root=str(ctx.cache.root.parent), force=ctx.cache.force,
            extra_attacks=tuple(ctx.extra_attacks))

    def context(self) -> "RunContext":
        """The run context in this process. The device is the run's where this process has
        it (CPU otherwise); the cache is the run's when its folder is reachable from here
        (a local cluster: the manipulation's finished chunks are kept there), else a
        temporary one."""
        from .runtime import RunContext, StageCache

        device = torch.device(self.device if self.device != "cuda" or torch.cuda.is_available()
                              else "cpu")
        root = Path(self.cache_root)
        if not root.is_dir():
            root = Path(tempfile.mkdtemp(prefix="xrbench-shard-cache-"))
        return RunContext(
            model=self.model.to(device).eval(), model_name=self.model_name,
            explainer=self.explainer, dataset=types.SimpleNamespace(card=self.card),
            profile=self.profile, images=self.images.to(device),
            labels=self.labels.to(device), device=device, seed=self.seed, progress=False,
            base_key=self.base_key, cache=StageCache(root, force=self.force),
            extra_attacks=self.extra_attacks)


def run_shard_task(payload: ShardPayload, item: ShardItem) -> dict[str, Any]:
    """A shard task (top level, so that it pickles): stage ``item.stage`` on its items."""
    return item.stage.run_shard(payload.context(), item.lo, item.hi)


def run_sharded(ctx: "RunContext", stage: "Stage", params: dict[str, Any]) -> dict[str, Any]:
    """``stage``'s output over all its items, computed as ``ctx.shards`` shards on
    ``ctx.executor`` (cached shards reused) and merged (:meth:`Stage.merge`)."""
    from .executors import LocalExecutor

    bounds = shard_bounds(stage.shard_items(ctx), ctx.shards, stage.shard_align(ctx))
    part_name = f"{stage.name}-shard"
    keys = [ctx.key(part_name, stage.version, params, lo=lo, hi=hi) for lo, hi in bounds]
    parts: dict[int, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        got = ctx.cache.load(part_name, key)
        if got is not None:
            parts[i] = got
    todo = [i for i in range(len(bounds)) if i not in parts]
    executor = ctx.executor or LocalExecutor()
    log.info("%s: %d shards of %s (%d cached), on %s", stage.name, len(bounds),
             stage.shard_unit, len(parts), executor.describe())
    bar = tqdm(total=len(bounds), initial=len(parts), unit="shard",
               desc=f"{stage.name} ({stage.shard_unit} in {len(bounds)} shards)",
               disable=not ctx.progress, dynamic_ncols=True)

    def keep(outcome: Any) -> None:
        if outcome.ok:
            i = todo[outcome.index]
            ctx.cache.save(part_name, keys[i], outcome.value)
            parts[i] = outcome.value
            bar.update(1)

    try:
        payload = ShardPayload.from_context(ctx)
        executor.map(functools.partial(run_shard_task, payload),
                     [ShardItem(stage, *bounds[i]) for i in todo],
                     gpus_per_task=1.0 if ctx.device.type == "cuda" else 0.0, on_done=keep)
    finally:
        bar.close()
    return stage.merge(ctx, [parts[i] for i in range(len(bounds))])
