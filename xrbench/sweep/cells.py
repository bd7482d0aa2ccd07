"""The cells of a sweep (:mod:`xrbench.sweep`): what a user asks for (:class:`SweepSpec`,
parsed from the command line by :func:`split_list`, :func:`parse_seeds` and
:func:`parse_grid`) and its expansion into :class:`Cell` s, every name and recipe field
checked before any work (:func:`expand`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import XRBenchError

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: every combination of the name lists and seeds, at one ``profile``, and for
    each defense every point of its grid.

    ``grid``: ``{"<defense>.<field>": (value, ...)}``, values as ``--set`` takes them
    (strings, converted by the recipe). ``sets``: recipe overrides for every cell
    (``"field"``: every defense must have it) or for one defense (``"<defense>.<field>"``).
    ``out``: the results folder (grid points below ``<out>/grid/``). ``force``, ``replace``,
    ``retrain``, ``device`` and ``data_dir`` are passed to each cell's
    :func:`~xrbench.api.evaluate`; ``force`` also runs cells whose entry is finished.
    """

    defenses: tuple[str, ...] = ("normal",)
    datasets: tuple[str, ...] = ("digits",)
    models: tuple[str, ...] = ("convnet",)
    explainers: tuple[str, ...] = ("grad_x_input",)
    seeds: tuple[int, ...] = (0,)
    profile: str = "quick"
    grid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Mapping[str, str] = field(default_factory=dict)
    out: str | os.PathLike[str] | None = None
    device: str = "auto"
    data_dir: str | None = None
    force: bool = False
    replace: bool = False
    retrain: bool = False


@dataclass(frozen=True)
class Cell:
    """One evaluation of a sweep. ``overrides``: the recipe overrides of this cell as
    ``(field, value)`` pairs (the sweep's ``--set`` and this cell's grid point); ``grid``:
    the grid point alone (empty when the defense has no grid); ``out``: the sweep's results
    folder (absolute)."""

    defense: str
    dataset: str
    model: str
    explainer: str
    seed: int
    profile: str
    out: str
    overrides: tuple[tuple[str, str], ...] = ()
    grid: tuple[tuple[str, str], ...] = ()

    @property
    def point(self) -> str:
        """The grid point as a folder name, ``trades.beta=3`` (fields joined by ``,``); ""
        without a grid. A value outside ``A-Z a-z 0-9 . _ + -`` is made safe
        (:func:`~xrbench.leaderboard.schema.safe_component`)."""
        from ..leaderboard.schema import safe_component

        return ",".join(f"{safe_component(self.defense)}.{k}="
                        f"{v if _SAFE_VALUE.match(v) else safe_component(v)}"
                        for k, v in self.grid)

    @property
    def out_dir(self) -> Path:
        """Where this cell's entry tree goes: ``out``, or ``out/grid/<point>``."""
        return Path(self.out) / "grid" / self.point if self.grid else Path(self.out)

    @property
    def name(self) -> str:
        """``digits/convnet/grad_x_input/smoke/trades-s0`` (``@trades.beta=3`` appended at
        a grid point): the entry's place under the results folder."""
        base = (f"{self.dataset}/{self.model}/{self.explainer}/{self.profile}/"
                f"{self.defense}-s{self.seed}")
        return f"{base} @{self.point}" if self.grid else base

    @property
    def entry_path(self) -> Path:
        """The entry's file: :func:`~xrbench.leaderboard.schema.entry_path` under
        :attr:`out_dir`."""
        from ..leaderboard.schema import entry_path

        return entry_path(self.out_dir, {
            "dataset": {"name": self.dataset}, "model": {"name": self.model},
            "explainer": {"name": self.explainer}, "protocol": {"profile": self.profile},
            "defense": {"name": self.defense}, "seed": self.seed})


def split_list(text: str, what: str) -> tuple[str, ...]:
    """``"a,b"`` as ``("a", "b")``; an empty item or a name listed twice is an
    :class:`XRBenchError` (``what`` names the option)."""
    items = tuple(s.strip() for s in text.split(","))
    if not text.strip() or any(not s for s in items):
        raise XRBenchError(f"{what} expects comma-separated names, got {text!r}")
    twice = sorted({s for s in items if items.count(s) > 1})
    if twice:
        raise XRBenchError(f"{what} lists {', '.join(twice)} more than once")
    return items


#: the most seeds one sweep lists (each is at least one training run), and the largest seed
MAX_SEEDS = 10_000
MAX_SEED = 2 ** 62


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or a range ``"0-4"`` (both ends included) as seeds; at most
    :data:`MAX_SEEDS` of them, each at most :data:`MAX_SEED` (checked before any list is
    made, so a huge range is a one-line error, not a MemoryError)."""
    out: list[int] = []
    for part in split_list(text, "--seeds"):
        lo, dash, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if dash and lo else (int(part), int(part))
        except ValueError:
            raise XRBenchError(f"--seeds expects integers >= 0 such as 0,1,2 or 0-4, got "
                               f"{part!r}") from None
        if max(a, b) > MAX_SEED or b - a + 1 + len(out) > MAX_SEEDS:
            raise XRBenchError(f"--seeds {part!r}: a sweep takes at most {MAX_SEEDS} seeds, "
                               f"each at most 2**62")
        out += list(range(a, b + 1))
    if any(s < 0 for s in out) or len(set(out)) != len(out) or not out:
        raise XRBenchError(f"--seeds expects distinct integers >= 0, got {text!r}")
    return tuple(out)


def parse_grid(items: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``["trades.beta=1,3,6,9", ...]`` (``--grid``, repeatable) as
    ``{"trades.beta": ("1", "3", "6", "9")}``."""
    grid: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not values.strip():
            raise XRBenchError(f"--grid expects DEFENSE.FIELD=V1,V2,... (e.g. "
                               f"--grid trades.beta=1,3,6,9), got {item!r}")
        if key in grid:
            raise XRBenchError(f"--grid {key} is given twice; list all its values once")
        grid[key] = split_list(values, f"--grid {key}")
    return grid


def _recipe_field(defense: str, key: str, what: str) -> str:
    """The recipe field of ``defense`` that ``key`` names (``lambda`` finds ``lambda_``, as
    ``--set`` does); an :class:`XRBenchError` naming the fields when there is none."""
    from ..registry import defenses

    cls = defenses.get(defense).Recipe
    names = [f.name for f in dataclasses.fields(cls)]
    stem = key.rstrip("_")
    for name in (stem + "_", stem):
        if name in names:
            return name
    raise XRBenchError(f"{what}: the recipe of {defense} has no field {key!r}; its fields: "
                       f"{', '.join(names)} (see `xrbench recipe {defense}`)")


def _per_defense(spec: SweepSpec) -> tuple[dict[str, dict[str, str]],
                                           dict[str, list[tuple[str, tuple[str, ...]]]]]:
    """(``--set`` overrides by defense, grid axes by defense), every field checked against
    the defense's recipe."""
    sets: dict[str, dict[str, str]] = {d: {} for d in spec.defenses}
    for key, value in spec.sets.items():
        defense, dot, fld = key.rpartition(".")
        if dot and defense not in spec.defenses:
            raise XRBenchError(f"--set {key}={value}: {defense!r} is not among --defenses "
                               f"({', '.join(spec.defenses)})")
        if dot:
            sets[defense][_recipe_field(defense, fld, f"--set {key}={value}")] = value
            continue
        for d in spec.defenses:
            try:
                sets[d][_recipe_field(d, key, f"--set {key}={value} (every defense)")] = value
            except XRBenchError as exc:
                raise XRBenchError(f"{exc}; to set it for one defense write --set "
                                   f"DEFENSE.{key}={value}") from None
    axes: dict[str, list[tuple[str, tuple[str, ...]]]] = {d: [] for d in spec.defenses}
    for key, values in spec.grid.items():
        defense, _, fld = key.rpartition(".")
        if defense not in spec.defenses:
            raise XRBenchError(f"--grid {key}: {defense!r} is not among --defenses "
                               f"({', '.join(spec.defenses)})")
        name = _recipe_field(defense, fld, f"--grid {key}")
        if name in sets[defense]:
            raise XRBenchError(f"--grid {key} and --set both set {defense}'s {name}; keep one")
        if any(name == n for n, _ in axes[defense]):
            raise XRBenchError(f"--grid names {defense}'s {name} twice")
        axes[defense].append((name, values))
    return sets, axes


def expand(spec: SweepSpec) -> list[Cell]:
    """The sweep's cells, in the order dataset, model, defense, grid point, seed,
    explainer. Every name and field is checked first: an unknown dataset, model, explainer
    or defense, a profile, or a ``--grid``/``--set`` field that the defense's recipe lacks is
    an :class:`XRBenchError` before any work. Recipe values are not checked here: a value the
    recipe rejects makes its cell fail (:func:`cell_state`), not the sweep."""
    from ..api import default_results_dir
    from ..protocol import check_seed
    from ..protocol import get_profile
    from ..registry import datasets, defenses, explainers, models

    get_profile(spec.profile)
    for registry, names in ((datasets, spec.datasets), (models, spec.models),
                            (explainers, spec.explainers), (defenses, spec.defenses)):
        if not names:
            raise XRBenchError(f"the sweep lists no {registry.kind}")
        for name in names:
            registry.get_entry(name)
    if not spec.seeds:
        raise XRBenchError("the sweep lists no seeds")
    for seed in spec.seeds:
        check_seed(seed)
    sets, axes = _per_defense(spec)
    out = Path(spec.out).expanduser() if spec.out is not None else default_results_dir()
    out_s = str(out.absolute())
    cells = []
    for dataset, model, defense in itertools.product(spec.datasets, spec.models, spec.defenses):
        fields = [name for name, _ in axes[defense]]
        for values in itertools.product(*(v for _, v in axes[defense])):
            point = tuple(zip(fields, values))
            overrides = tuple(sets[defense].items()) + point
            for seed, explainer in itertools.product(spec.seeds, spec.explainers):
                cells.append(Cell(defense, dataset, model, explainer, seed, spec.profile,
                                  out_s, overrides, point))
    return cells
