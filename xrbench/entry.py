"""The result record of one evaluation (PROTOCOL.md section 8), built from what ran.

:func:`build_entry` assembles it; :mod:`xrbench.leaderboard.schema` validates and writes it,
and :mod:`xrbench.leaderboard.examples` keeps its per-example values beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .protocol import CLUSTERS, PROTOCOL_VERSION
from .runtime import RunContext

SCHEMA_VERSION = 1


def git_commit() -> str | None:
    """The commit of the xrbench source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def environment(device: torch.device) -> dict[str, Any]:
    """torch version, device (and its name), thread count, Python version."""
    return {"torch": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def build_entry(*, ctx: RunContext, stage_params: dict[str, dict[str, Any]],
                metrics: dict[str, Any], flags: dict[str, bool], manifest: dict[str, Any],
                defense: dict[str, Any], checkpoint: dict[str, Any],
                model_info: dict[str, Any]) -> dict[str, Any]:
    """The section-8 record. ``stage_params`` are the protocol parameters each stage read
    from the code it ran (:meth:`xrbench.stages.Stage.params`)."""
    card = ctx.dataset.card
    n = len(manifest["indices"])
    p = ctx.profile
    parameters = {"subset": {"clusters": CLUSTERS, "per_cluster": p.per_cluster,
                             "n_images": n, "pairs": n * (n - 1)},
                  "bootstrap_resamples": p.bootstrap_resamples,
                  "pair_batch": p.pair_batch, **stage_params}
    return {
        "schema_version": SCHEMA_VERSION,
        "protocol": {"version": PROTOCOL_VERSION, "profile": p.name, "parameters": parameters},
        "xrbench": {"version": __version__, "git_commit": git_commit()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {**dataclasses.asdict(card), "mean": list(card.mean), "std": list(card.std),
                    "rps_eps": list(card.rps_eps), "retrieval_eps": list(card.retrieval_eps)},
        "subset": {"manifest_sha256": manifest["sha256"], "n_images": n,
                   "n_pairs": n * (n - 1)},
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
