"""The result record of one evaluation (PROTOCOL.md section 8), built from what ran.

:func:`build_entry` assembles it; :mod:`xrbench.leaderboard.schema` validates and writes it,
and :mod:`xrbench.leaderboard.examples` keeps its per-example values beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..errors import XRBenchError
from ..leaderboard.schema import SCHEMA_VERSION
from ..protocol import CLUSTERS, PROTOCOL_VERSION
from .runtime import RunContext

__all__ = ["SCHEMA_VERSION", "build_entry", "recipe_reference", "environment", "git_commit"]


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


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), so that a recipe read from a
    checkpoint's sidecar and one built now compare equal."""
    return json.loads(json.dumps(value, default=str))


def recipe_reference(defense: str, card: Any, model: str, recipe: Mapping[str, Any]
                     ) -> dict[str, Any]:
    """Whether ``recipe`` (a resolved recipe as a dict, the entry's ``defense.recipe``) is the
    reference recipe of ``defense`` on (dataset ``card``, ``model``): the defense's
    ``Recipe()`` with no overrides, resolved for them (PROTOCOL 7; issue 12 item 6).

    Returns the entry's ``defense`` fields: ``{"reference": True}``; or ``{"reference":
    False, "recipe_diff": {field: {"value": v, "reference": r}}}`` naming every field that
    differs (``--set``, ``--epochs``, a profile's short training); or, where the defense has
    no reference recipe there (e.g. SEP on a dataset without a reference lambda and no
    calibration), ``{"reference": False, "reference_note": why}``."""
    from ..train import build_recipe

    try:
        ref = _plain(build_recipe(defense, card, model).to_dict())
    except XRBenchError as exc:
        return {"reference": False,
                "reference_note": "no reference recipe for this dataset and model: "
                                  + " ".join(str(exc).split())}
    got = _plain(dict(recipe))
    diff = {k: {"value": got.get(k), "reference": ref.get(k)}
            for k in sorted(set(ref) | set(got)) if got.get(k) != ref.get(k)}
    return {"reference": True} if not diff else {"reference": False, "recipe_diff": diff}


def _card_fields(card: Any) -> dict[str, Any]:
    """The card as the entry records it; ``content_sha256`` only where the loader computed
    one (entries of other data sets keep the fields they always had)."""
    fields = dataclasses.asdict(card)
    if fields.get("content_sha256") is None:
        fields.pop("content_sha256", None)
    return fields


def build_entry(*, ctx: RunContext, stage_params: dict[str, dict[str, Any]],
                metrics: dict[str, Any], flags: dict[str, bool], manifest: dict[str, Any],
                defense: dict[str, Any], checkpoint: dict[str, Any],
                model_info: dict[str, Any], explainer_info: Mapping[str, Any] | None = None,
                not_applicable: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The section-8 record. ``stage_params`` are the protocol parameters each stage read
    from the code it ran (:meth:`xrbench.stages.Stage.params`); ``explainer_info`` is added
    to the explainer's own description (its provenance, ``Entry.provenance``);
    ``not_applicable`` names the stages that did not run with the reason
    (:meth:`xrbench.engine.stage.Stage.applicable`): their metrics are absent."""
    card = ctx.dataset.card
    n = len(manifest["indices"])
    p = ctx.profile
    parameters = {"subset": {"clusters": CLUSTERS, "per_cluster": p.per_cluster,
                             "n_images": n, "pairs": n * (n - 1)},
                  "bootstrap_resamples": p.bootstrap_resamples,
                  "pair_batch": p.pair_batch, **stage_params}
    return {
        "schema_version": SCHEMA_VERSION,
        "reported": None,  # measured by this run (not copied from a paper)
        "protocol": {"version": PROTOCOL_VERSION, "profile": p.name, "parameters": parameters},
        "xrbench": {"version": __version__, "git_commit": git_commit()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {**_card_fields(card), "mean": list(card.mean), "std": list(card.std),
                    "rps_eps": list(card.rps_eps), "retrieval_eps": list(card.retrieval_eps)},
        "subset": {"manifest_sha256": manifest["sha256"], "n_images": n,
                   "n_pairs": n * (n - 1)},
        "model": model_info,
        "defense": defense,
        "checkpoint": checkpoint,
        "explainer": {**ctx.explainer.describe(), **(explainer_info or {})},
        "seed": ctx.seed,
        "metrics": metrics,
        "flags": flags,
        "not_applicable": dict(not_applicable or {}),
        "timing": ctx.timing,
        "environment": environment(ctx.device),
    }
