"""Checkpoints: cached by (dataset, model, defense, recipe, seed), written atomically with a
sidecar JSON, loaded with ``weights_only=True`` only after their sha256 matches.

Layout under ``<cache>/checkpoints/<dataset>/<model>/``::

    <defense>-<key>-s<seed>.pt            final weights (a state dict)
    <defense>-<key>-s<seed>.json          sidecar: key fields, recipe, metrics, sha256
    <defense>-<key>-s<seed>.partial.pt    last good epoch while training (resume, NaN)
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import XRBenchError
from .utils import (atomic_write_bytes, cache_dir, hash_config, read_json_object, sha256_bytes,
                    sha256_file, write_json)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


@dataclass(frozen=True)
class CheckpointKey:
    """Everything that determines a trained checkpoint."""

    dataset: str
    model: dict[str, Any]  # {"name": ..., "beta": ..., "activation": ...}
    defense: str
    recipe: dict[str, Any]
    seed: int
    #: ways of training that move the weights by float rounding (``fast_double_backward``,
    #: :mod:`xrbench.fastgrad`); empty by default, so default keys are unchanged and such
    #: a checkpoint is never served to a default run, nor the other way round
    variant: tuple[str, ...] = ()

    def digest(self) -> str:
        config: dict[str, Any] = {"format": FORMAT_VERSION, "dataset": self.dataset,
                                  "model": self.model, "defense": self.defense,
                                  "recipe": self.recipe, "seed": self.seed}
        if self.variant:
            config["variant"] = list(self.variant)
        return hash_config(config)

    def path(self, root: Path | None = None) -> Path:
        root = (root or cache_dir()) / "checkpoints"
        name = f"{_safe(self.defense)}-{self.digest()}-s{self.seed}.pt"
        return root / _safe(self.dataset) / _safe(self.model["name"]) / name


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def partial_path(path: Path) -> Path:
    return path.with_suffix(".partial.pt")


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> str:
    """Write the model's state dict (on CPU) and its sidecar atomically; returns the sha256."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    data = _to_bytes(state)
    digest = sha256_bytes(data)
    atomic_write_bytes(path, data)
    write_json(sidecar_path(path), {**meta, "sha256": digest, "file": path.name})
    return digest


def verified_load(path: str | os.PathLike[str], expected_sha256: str | None = None,
                  map_location: str | torch.device = "cpu") -> tuple[Any, str]:
    """Load a torch file with ``weights_only=True`` after checking its sha256.

    The expected digest is ``expected_sha256``, else the sidecar's; a mismatch, a missing
    file or an unreadable one is an :class:`XRBenchError`. Returns (object, sha256).
    """
    path = Path(path)
    if path.is_dir():
        raise XRBenchError(f"checkpoint {path} is a folder; pass the weights file itself")
    if not path.is_file():
        raise XRBenchError(f"checkpoint not found: {path}")
    digest = sha256_file(path)
    given = expected_sha256 is not None
    if not given and sidecar_path(path).is_file():
        expected_sha256 = read_json_object(sidecar_path(path), "checkpoint sidecar").get("sha256")
    if expected_sha256 is not None and digest != expected_sha256:
        where = "the sha256 you gave" if given else f"its sidecar {sidecar_path(path).name}"
        advice = ("check that you passed the right file and digest" if given else
                  "if xrbench trained it, delete it and retrain (--retrain); if it is your "
                  "own file, fix or remove the sidecar")
        raise XRBenchError(
            f"checkpoint {path} is corrupt or was changed: its sha256 {digest[:12]}... does "
            f"not match {where} ({str(expected_sha256)[:12]}...); {advice}"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncated zip, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise XRBenchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); "
                           "it may be truncated, not a torch file, or hold objects other than "
                           "tensors (xrbench loads with weights_only=True and never runs code "
                           "from a file)") from exc
    return obj, digest


def load_weights(model: nn.Module, path: str | os.PathLike[str],
                 expected_sha256: str | None = None) -> str:
    """Load verified weights into ``model`` (strict); returns the file's sha256."""
    state, digest = verified_load(path, expected_sha256)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise XRBenchError(f"checkpoint {path} does not hold a state dict")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise XRBenchError(f"checkpoint {path} holds NaN or infinite weights ({', '.join(bad[:3])}"
                           f"{' ...' if len(bad) > 3 else ''}): a diverged training; nothing "
                           "it scores would mean anything")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail.split(":", 1)[-1].strip() if detail.startswith("Error(s)") else detail
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise XRBenchError(f"checkpoint {path} does not fit this model ({detail}); check "
                           "--model and --dataset") from exc
    return digest


def read_sidecar(path: Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    return read_json_object(side, "checkpoint sidecar") if side.is_file() else None


def save_partial(path: Path, payload: dict[str, Any]) -> None:
    """Training state after a finished epoch (model, optimizer, RNG states, epoch). A cache
    that cannot take it (full disk, read-only) costs only the resume: a warning, and the
    training goes on."""
    try:
        atomic_write_bytes(partial_path(path), _to_bytes(payload))
    except OSError as exc:
        log.warning("could not save the training state to %s (%s); training goes on, but an "
                    "interruption now restarts it", partial_path(path), exc.strerror or exc)


def load_partial(path: Path) -> dict[str, Any] | None:
    p = partial_path(path)
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable partial is ignored and retrained
        return None
