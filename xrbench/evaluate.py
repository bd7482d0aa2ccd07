"""The fixed protocol run for one entry (PROTOCOL.md sections 4-8).

Stages run in order and each one's output is cached under ``<cache>/stages`` by a hash of
everything it depends on (checkpoint sha256, manifest sha256, explainer, profile values,
seed, protocol version), so an interrupted run resumes where it stopped (the manipulation
stage even chunk by chunk) and a finished one is not recomputed unless ``force``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import __version__
from .data import Dataset
from .errors import XRBenchError
from .explainers import Explainer
from .protocol import PROTOCOL_VERSION, Profile
from .utils import atomic_write_bytes, cache_dir, generator, hash_config

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class StageCache:
    """Stage outputs as torch files (dicts of tensors and plain values), loaded with
    ``weights_only=True``."""

    def __init__(self, root: Path | None = None, force: bool = False) -> None:
        self.root = (root or cache_dir()) / "stages"
        self.force = force

    def path(self, stage: str, key: dict[str, Any]) -> Path:
        return self.root / f"{stage}-{hash_config(key, 16)}.pt"

    def load(self, path: Path) -> dict[str, Any] | None:
        if self.force or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed
            log.warning("ignoring unreadable stage cache %s", path)
            return None

    def save(self, path: Path, value: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        torch.save(value, buf)
        atomic_write_bytes(path, buf.getvalue())

    def run(self, stage: str, key: dict[str, Any], fn: Callable[[], dict[str, Any]]
            ) -> tuple[dict[str, Any], float, bool]:
        """(output, seconds, from_cache)."""
        path = self.path(stage, key)
        hit = self.load(path)
        if hit is not None:
            return hit, float(hit.get("_seconds", 0.0)), True
        t0 = time.perf_counter()
        out = fn()
        out["_seconds"] = time.perf_counter() - t0
        self.save(path, out)
        return out, out["_seconds"], False


@dataclass
class EvalContext:
    """What every stage needs."""

    model: torch.nn.Module
    model_name: str
    explainer: Explainer
    dataset: Dataset
    profile: Profile
    images: torch.Tensor  # (N, C, S, S) subset images, pixels in [0, 1], on device
    labels: torch.Tensor  # (N,) true labels, on device
    device: torch.device
    seed: int
    progress: bool
    base_key: dict[str, Any]
    cache: StageCache
    timing: dict[str, float] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)
    code_versions: dict[str, int] = field(default_factory=dict)  # stage -> version of its code

    def key(self, stage: str, **extra: Any) -> dict[str, Any]:
        """Cache key of ``stage``: every input, plus the version of the stage's code, so that
        outputs of older code are recomputed rather than reused after a fix."""
        return {**self.base_key, "stage": stage, "code": self.code_versions.get(stage, 0),
                **extra}

    def run(self, stage: str, fn: Callable[[], dict[str, Any]], **key: Any) -> dict[str, Any]:
        out, seconds, hit = self.cache.run(stage, self.key(stage, **key), fn)
        self.timing[stage] = round(seconds, 3)
        if hit:
            self.cached_stages.append(stage)
        return out


def git_commit() -> str | None:
    """The commit of the xrbench source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def metric(values: torch.Tensor, n_resamples: int, seed: int, groups: torch.Tensor | None = None,
           scale: float = 1.0, median: bool = False) -> dict[str, Any]:
    """A metric object: mean ``value``, 95% bootstrap ``ci``, ``n`` (and ``median``)."""
    from .metrics.stats import summarize

    v = values.detach().double().cpu() * scale
    s = summarize(v, n_resamples=n_resamples, seed=seed, groups=groups)

    def num(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    out: dict[str, Any] = {"value": num(s["mean"]), "ci": None, "n": int(s["n"])}
    if num(s["lo"]) is not None and num(s["hi"]) is not None:
        out["ci"] = [num(s["lo"]), num(s["hi"])]
    if median:
        out["median"] = num(float(v.median())) if v.numel() else None
    return out


def environment(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def build_entry(*, ctx: EvalContext, metrics: dict[str, Any], flags: dict[str, bool],
                manifest: dict[str, Any], defense: dict[str, Any], checkpoint: dict[str, Any],
                model_info: dict[str, Any]) -> dict[str, Any]:
    """The section-8 record; validated by :mod:`xrbench.leaderboard.schema` on write."""
    card = ctx.dataset.card
    return {
        "schema_version": SCHEMA_VERSION,
        "protocol": {"version": PROTOCOL_VERSION, "profile": ctx.profile.name,
                     "parameters": ctx.profile.parameters(card)},
        "xrbench": {"version": __version__, "git_commit": git_commit()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {**dataclasses.asdict(card), "mean": list(card.mean), "std": list(card.std),
                    "rps_eps": list(card.rps_eps), "retrieval_eps": list(card.retrieval_eps)},
        "subset": {"manifest_sha256": manifest["sha256"], "n_images": len(manifest["indices"]),
                   "n_pairs": len(manifest["indices"]) * (len(manifest["indices"]) - 1)},
        "model": model_info,
        "defense": defense,
        "checkpoint": checkpoint,
        "explainer": ctx.explainer.describe(),
        "seed": ctx.seed,
        "metrics": metrics,
        "flags": flags,
        "timing": ctx.timing,
        "environment": environment(ctx.device),
    }


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True)


def require_differentiable(explainer: Explainer, what: str) -> None:
    if not explainer.differentiable:
        raise XRBenchError(f"explainer {explainer.name!r} is evaluation-only and cannot drive "
                           f"the {what}; pick a differentiable one")


def seeded(ctx: EvalContext, offset: int) -> torch.Generator:
    """A generator for one stage, seeded from the entry's seed."""
    return generator(ctx.seed * 1000 + offset, ctx.device)
