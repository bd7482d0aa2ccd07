"""The runtime of one evaluation: the stage cache, the run context every stage reads, the
per-stage random generators, bound protocol calls, and metric objects.

:mod:`xrbench.stages` declares *what* each protocol stage computes; this module is *how* a
stage runs: its output is cached under ``<cache>/stages`` by a hash of everything it depends
on (checkpoint and manifest sha256, explainer, seed, the stage's code version and its
protocol parameters), so an interrupted run resumes where it stopped and a finished one is
not recomputed unless ``force``. The protocol version is not part of the key: a new version
recomputes the stages whose code version it bumped and reuses the others.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..data import Dataset
from ..errors import XRBenchError
from ..explainers import Explainer
from ..protocol import Profile
from ..utils import atomic_write_bytes, cache_dir, file_lock, generator, hash_config, sha256_bytes

log = logging.getLogger(__name__)

#: keyword arguments that are not protocol parameters: they change how fast a computation
#: runs, never its result (batch sizes), carry runtime state (generators, progress hooks),
#: or are the run's inputs passed at call time (indices, dataset card)
RUNTIME_ARGUMENTS = frozenset({
    "generator", "progress", "batch_size", "attack_batch", "max_batch_pixels", "pair_batch",
    "on_chunk", "on_chunk_done", "chunk_store", "keep_x_adv", "indices", "seed", "card",
    "image_ids", "keys", "first_chunk"})


def _jsonable(value: Any) -> Any:
    """Tuples to lists, tensors to lists, recursively; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ProtocolCall:
    """A protocol function with its protocol arguments bound.

    What runs and what the entry records are the same object: :meth:`params` reads the
    function's own signature (its defaults, overridden by ``kwargs``), so a changed default in
    the code that computes a metric can never be recorded wrongly. Arguments named in
    :data:`RUNTIME_ARGUMENTS` (batch sizes, generators, progress hooks) are passed at call
    time and are not parameters.
    """

    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def bind(fn: Callable[..., Any], **kwargs: Any) -> "ProtocolCall":
        params = inspect.signature(fn).parameters
        unknown = [k for k in kwargs if k not in params]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{fn.__qualname__} has no parameter(s) {unknown}")
        return ProtocolCall(fn, dict(kwargs))

    def __call__(self, *args: Any, **runtime: Any) -> Any:
        return self.fn(*args, **self.kwargs, **runtime)

    def params(self) -> dict[str, Any]:
        """The protocol parameters: every keyword-only parameter of ``fn`` (the inputs come
        before the ``*``), with the bound values in place of the defaults, plus any other
        bound argument; JSON-ready."""
        out: dict[str, Any] = {}
        for name, p in inspect.signature(self.fn).parameters.items():
            if name in RUNTIME_ARGUMENTS:
                continue
            if name in self.kwargs:
                out[name] = _jsonable(self.kwargs[name])
            elif p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
                out[name] = _jsonable(p.default)
        return out


class StageCache:
    """Stage outputs as torch files (dicts of tensors and plain values) under
    ``<root>/stages``, each named ``<stage>-<key hash>.<sha256 of its bytes>.pt``.

    A file is written atomically (so a killed run never leaves a half file under a final
    name) and verified against the sha256 in its name before it is loaded (with
    ``weights_only=True``): a flipped bit, a truncated copy or an edited file is never served;
    it is removed with a warning naming it, and the stage is computed again.
    """

    def __init__(self, root: Path | None = None, force: bool = False) -> None:
        self.root = (root or cache_dir()) / "stages"
        self.force = force

    def name(self, stage: str, key: Mapping[str, Any]) -> str:
        return f"{stage}-{hash_config(key, 16)}"

    def lock(self, stage: str, key: Mapping[str, Any]) -> Any:
        """A lock for computing this output (a second run of the same key waits)."""
        return file_lock(self.root.parent / "locks" / f"stage-{self.name(stage, key)}.lock")

    def load(self, stage: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached output, if one is there and intact; else None."""
        if self.force or not self.root.is_dir():
            return None
        for path in sorted(self.root.glob(f"{self.name(stage, key)}.*.pt")):
            digest = path.name.rsplit(".", 2)[-2]
            data = path.read_bytes()
            if sha256_bytes(data) != digest:
                log.warning("stage cache file %s does not match its sha256 (corrupt or "
                            "changed); removed, the stage is computed again", path)
                path.unlink(missing_ok=True)
                continue
            try:
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed
                log.warning("ignoring unreadable stage cache %s", path)
        return None

    def save(self, stage: str, key: Mapping[str, Any], value: Mapping[str, Any]) -> Path:
        buf = io.BytesIO()
        torch.save(dict(value), buf)
        data = buf.getvalue()
        path = self.root / f"{self.name(stage, key)}.{sha256_bytes(data)}.pt"
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:  # full disk, read-only cache: the run goes on uncached
            log.warning("could not cache the %s stage's output in %s (%s); the run goes on, "
                        "and an interrupted run would compute it again", stage, self.root,
                        exc.strerror or exc)
        return path


def stage_seed(seed: int, stage: str) -> int:
    """The seed of ``stage``'s random stream: the first 8 bytes of sha256("<seed>/<stage>")
    as an integer below 2**63, so every stage has its own stream, fixed by the entry's seed
    and the stage's name alone (adding or reordering stages moves no number)."""
    digest = hashlib.sha256(f"{int(seed)}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class RunContext:
    """What every stage reads: the model and explainer under test, the subset, the profile,
    the device, the entry's seed, the cache, and how to shard the long stages."""

    model: torch.nn.Module  # eval mode, on ``device``
    model_name: str
    explainer: Explainer
    dataset: Dataset
    profile: Profile
    images: torch.Tensor  # (N, C, S, S) subset images, pixels in [0, 1], on device
    labels: torch.Tensor  # (N,) true labels, on device
    device: torch.device
    seed: int
    progress: bool
    base_key: dict[str, Any]  # what every stage output depends on (checkpoint, manifest...)
    cache: StageCache
    timing: dict[str, float] = field(default_factory=dict)
    reused_stages: list[str] = field(default_factory=list)
    #: shards of each shardable stage (:mod:`xrbench.engine.sharding`; 1 = run whole) and the
    #: executor they run on (:mod:`xrbench.engine.executors`; None = in sequence, here)
    shards: int = 1
    executor: Any = None
    #: attacks added to the worst-case ensemble by name (``evaluate --attacks``; PROTOCOL 5.8)
    extra_attacks: tuple[str, ...] = ()
    #: the outputs of the stages run so far in this run, by stage name (a later stage reads
    #: an earlier one's, as the ensemble reads the manipulation's)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def card(self) -> Any:
        return self.dataset.card

    def generator(self, stage: str, device: torch.device | str | None = None
                  ) -> torch.Generator:
        """A fresh generator for ``stage``, seeded by :func:`stage_seed` (the entry's seed and
        the stage's name), on the run's device unless ``device`` says otherwise."""
        return generator(stage_seed(self.seed, stage), device or self.device)

    def key(self, stage: str, version: int, params: Mapping[str, Any], **extra: Any
            ) -> dict[str, Any]:
        """Cache key of a stage output: every input of the run, the stage's code version
        (bumped when what it computes changes) and its protocol parameters."""
        return {**self.base_key, "stage": stage, "code": version, "params": dict(params),
                **extra}

    def cached(self, stage: str, key: Mapping[str, Any], fn: Callable[[], dict[str, Any]]
               ) -> dict[str, Any]:
        """``fn()``'s output, from the cache when present; records time and reuse."""
        with self.cache.lock(stage, key):  # a second run of the same key waits, then reuses
            out = self.cache.load(stage, key)
            if out is not None:
                self.reused_stages.append(stage)
            else:
                t0 = time.perf_counter()
                out = fn()
                out["_seconds"] = time.perf_counter() - t0
                self.cache.save(stage, key, out)
        self.timing[stage] = round(float(out.get("_seconds", 0.0)), 3)
        return out

    def metric(self, values: torch.Tensor, groups: torch.Tensor | None = None,
               scale: float = 1.0, median: bool = False) -> dict[str, Any]:
        """A metric object over per-example ``values``, resampled with this run's profile
        and seed (:func:`metric`)."""
        return metric(values, self.profile.bootstrap_resamples, self.seed, groups=groups,
                      scale=scale, median=median)


def metric(values: torch.Tensor, n_resamples: int, seed: int, groups: torch.Tensor | None = None,
           scale: float = 1.0, median: bool = False) -> dict[str, Any]:
    """A metric object: mean ``value``, 95% bootstrap ``ci`` (resampling examples, or
    ``groups`` such as victims, PROTOCOL 5.7), ``n`` (and ``median``); values times ``scale``.
    A value that cannot be computed is None, never NaN."""
    from ..metrics.stats import summarize

    v = values.detach().double().cpu() * scale
    s = summarize(v, n_resamples=n_resamples, seed=seed, groups=groups)

    def num(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    out: dict[str, Any] = {"value": num(s["mean"]), "ci": None, "n": int(s["n"])}
    if num(s["lo"]) is not None and num(s["hi"]) is not None:
        out["ci"] = [num(s["lo"]), num(s["hi"])]
    if median:
        out["median"] = num(float(v.median())) if v.numel() else None
    return out


def require_differentiable(explainer: Explainer, what: str) -> None:
    if not explainer.differentiable:
        raise XRBenchError(f"explainer {explainer.name!r} is evaluation-only and cannot drive "
                           f"the {what}; pick a differentiable one")
