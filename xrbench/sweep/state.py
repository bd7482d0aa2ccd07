"""What is there already for a sweep's cells (:mod:`xrbench.sweep`), read without loading
data or training: a cell's finished entry of the same configuration, else its checkpoint in
the cache (:func:`cell_state`, a :class:`CellState`); :func:`plan` gives every cell with its
state (what a dry run prints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import XRBenchError
from .cells import Cell, SweepSpec, expand

#: a cell's state before the sweep (:func:`cell_state`): what a dry run prints
DONE, CONFLICT, INVALID = "done", "conflict", "invalid"
CHECKPOINT, PARTIAL, NOTHING = "checkpoint cached", "checkpoint partly trained", "nothing cached"


@dataclass(frozen=True)
class CellState:
    """What is on disk for a cell before it runs. ``kind``: :data:`DONE` (its entry is there
    for this configuration), :data:`CONFLICT` (the entry's file holds another run),
    :data:`INVALID` (its recipe cannot be built: ``detail`` says why), or, for a cell that
    will compute, :data:`CHECKPOINT`, :data:`PARTIAL` or :data:`NOTHING`. ``recipe_hash``
    and ``checkpoint``: the recipe hash and checkpoint key (digest) the cell trains with."""

    kind: str
    detail: str = ""
    recipe_hash: str | None = None
    checkpoint: str | None = None

    def describe(self, path: Path) -> str:
        """One line for a dry run."""
        if self.kind == DONE:
            return f"done (entry {path})"
        if self.kind == CONFLICT:
            return f"conflict ({path} holds another run: {self.detail})"
        if self.kind == INVALID:
            return f"invalid ({self.detail})"
        return self.kind + (f" ({self.detail})" if self.detail else "")


def cell_overrides(cell: Cell, profile_epochs: int | None) -> dict[str, str]:
    """The recipe overrides :func:`~xrbench.api.evaluate` trains the cell with: a profile's
    short training (``smoke``: 3 epochs) unless the cell sets ``epochs`` itself, then the
    cell's own overrides (the rule of ``api.evaluate``)."""
    own = dict(cell.overrides)
    return {"epochs": str(profile_epochs), **own} if profile_epochs is not None else own


def _entry_difference(entry: Mapping[str, Any], cell: Cell, recipe_hash: str) -> str | None:
    """What makes ``entry`` another configuration than ``cell``'s (one phrase), or None.
    Compared: protocol version and profile, dataset, model (and its Softplus beta),
    explainer, defense and recipe hash, seed, weights trained by xrbench (not a user's
    checkpoint), and every stage of this xrbench present (run or recorded as not
    applicable)."""
    from ..models import DEFAULT_BETA
    from ..protocol import PROTOCOL_VERSION
    from ..stages import STAGES

    want = [("protocol version", ("protocol", "version"), PROTOCOL_VERSION),
            ("profile", ("protocol", "profile"), cell.profile),
            ("dataset", ("dataset", "name"), cell.dataset),
            ("model", ("model", "name"), cell.model),
            ("model beta", ("model", "beta"), DEFAULT_BETA),
            ("explainer", ("explainer", "name"), cell.explainer),
            ("defense", ("defense", "name"), cell.defense),
            ("recipe hash", ("defense", "recipe_hash"), recipe_hash),
            ("seed", ("seed",), cell.seed)]
    for what, keys, value in want:
        got: Any = entry
        for k in keys:
            got = got.get(k) if isinstance(got, Mapping) else None
        if got != value:
            return f"its {what} is {got!r}, this cell's {value!r}"
    if entry.get("checkpoint", {}).get("origin") == "user":
        return "it scored user-supplied weights"
    ran = set(entry.get("protocol", {}).get("parameters", {})) | set(
        entry.get("not_applicable") or {})
    missing = [s.name for s in STAGES if s.name not in ran]
    if missing:
        return f"it lacks the stage(s) {', '.join(missing)} (an older xrbench wrote it)"
    return None


def cell_state(cell: Cell, *, data_dir: str | None = None,
               cache_root: Path | None = None) -> CellState:
    """What is there for ``cell`` already, read without loading data or training: its entry
    (same configuration, :func:`_entry_difference`), else its checkpoint in the cache
    (``cache_root``, default ``$XRBENCH_CACHE``). The recipe is resolved as training would
    resolve it (:func:`xrbench.train.checkpoint_key`); a recipe that cannot be built (a
    value out of range, no reference value for the dataset) gives :data:`INVALID`."""
    from ..checkpoints import partial_path
    from ..data import dataset_card
    from ..leaderboard.schema import read_entry
    from ..protocol import get_profile
    from ..train import checkpoint_key

    try:
        card = dataset_card(cell.dataset, data_dir)
        key, recipe = checkpoint_key(card, cell.model, cell.defense,
                                     cell_overrides(cell, get_profile(cell.profile).train_epochs),
                                     cell.seed)
    except XRBenchError as exc:
        return CellState(INVALID, " ".join(str(exc).split()))
    recipe_hash, digest = recipe.hash(), key.digest()
    path = cell.entry_path
    if path.exists():
        try:
            why = _entry_difference(read_entry(path), cell, recipe_hash)
        except XRBenchError as exc:
            why = f"not a valid entry: {' '.join(str(exc).split())}"
        if why is None:
            return CellState(DONE, "", recipe_hash, digest)
        return CellState(CONFLICT, why, recipe_hash, digest)
    ckpt = key.path(cache_root)
    if ckpt.is_file():
        return CellState(CHECKPOINT, str(ckpt), recipe_hash, digest)
    if partial_path(ckpt).is_file():
        return CellState(PARTIAL, str(partial_path(ckpt)), recipe_hash, digest)
    return CellState(NOTHING, "", recipe_hash, digest)


def plan(spec: SweepSpec, cache_root: Path | None = None) -> list[tuple[Cell, CellState]]:
    """Every cell of ``spec`` with its :class:`CellState` (what a dry run prints); nothing
    is computed."""
    return [(c, cell_state(c, data_dir=spec.data_dir, cache_root=cache_root))
            for c in expand(spec)]
