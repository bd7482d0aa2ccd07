"""Sweeps: one :func:`xrbench.api.evaluate` per cell of defenses x datasets x models x
explainers x seeds x recipe grid, each cell writing its own entry (PROTOCOL 8).

    spec = SweepSpec(defenses=("normal", "trades"), grid={"trades.beta": ("1", "3", "6", "9")},
                     profile="quick", out="results")
    report = run_sweep(spec, executor="ray")      # or "local" (the default)
    report.failed                                  # the cells that raised, with their error

A grid key is ``<defense>.<field>`` and applies only to the cells of that defense; each grid
point writes under its own folder, ``<out>/grid/<defense>.<field>=<value>/...``, so the
points of one defense never share an entry path (:func:`Cell.out_dir`). Cells whose entry is
already there for the same configuration (:func:`cell_state`) are skipped without loading data
or training, so a rerun resumes an interrupted sweep. A cell that fails is reported with its
error and does not stop the others. Cells run through :mod:`xrbench.executors` (in this
process, or as Ray tasks); xrbench schedules nothing itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import XRBenchError

log = logging.getLogger(__name__)

#: the environment variables that tell xrbench where its cache and data are (and whether to
#: stay offline); a cell's task sets the sweeping process's values in its worker
ENV_VARS = ("XRBENCH_CACHE", "XRBENCH_DATA", "XRBENCH_OFFLINE", "HF_DATASETS_OFFLINE",
            "XRBENCH_DISABLE_PLUGIN_AUTOLOAD")

#: a cell's state before the sweep (:func:`cell_state`): what a dry run prints
DONE, CONFLICT, INVALID = "done", "conflict", "invalid"
CHECKPOINT, PARTIAL, NOTHING = "checkpoint cached", "checkpoint partly trained", "nothing cached"

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")


# --- what a user asks for -----------------------------------------------------------------

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
        from .leaderboard.schema import safe_component

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
        from .leaderboard.schema import entry_path

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


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or a range ``"0-4"`` (both ends included) as seeds."""
    out: list[int] = []
    for part in split_list(text, "--seeds"):
        lo, dash, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise XRBenchError(f"--seeds expects integers >= 0 such as 0,1,2 or 0-4, got "
                               f"{part!r}") from None
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
    from .registry import defenses

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
    from .api import default_results_dir
    from .protocol import check_seed
    from .protocol import get_profile
    from .registry import datasets, defenses, explainers, models

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


# --- what is there already ----------------------------------------------------------------

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
    from .models import DEFAULT_BETA
    from .protocol import PROTOCOL_VERSION
    from .stages import STAGES

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
    from .checkpoints import partial_path
    from .data import dataset_card
    from .leaderboard.schema import read_entry
    from .protocol import get_profile
    from .train import checkpoint_key

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


# --- running ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellTask:
    """What a worker needs to run one cell: the cell, the sweep's evaluate options and the
    sweeping process's :data:`ENV_VARS` (a Ray worker on another machine has its own
    environment)."""

    cell: Cell
    device: str = "auto"
    data_dir: str | None = None
    force: bool = False
    replace: bool = False
    retrain: bool = False
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CellRun:
    """What one cell's evaluate gave back (small, to travel from a Ray worker): the entry's
    ``path``, whether it was ``written``, the stages taken from the cache and the seconds
    per step (:attr:`xrbench.api.Result.seconds`)."""

    path: str
    written: bool
    reused_stages: tuple[str, ...]
    seconds: Mapping[str, float]


def run_cell(task: CellTask) -> CellRun:
    """Evaluate one cell (the task a sweep submits; top level so that it pickles). Sets the
    sweep's environment variables first, then calls :func:`xrbench.api.evaluate` without
    progress bars (the sweep shows one bar over cells)."""
    from . import api

    for key, value in task.env:
        os.environ[key] = value
    c = task.cell
    res = api.evaluate(defense=c.defense, dataset=c.dataset, model=c.model,
                       explainer=c.explainer, profile=c.profile, seed=c.seed, out=c.out_dir,
                       overrides=dict(c.overrides), device=task.device,
                       data_dir=task.data_dir, retrain=task.retrain, force=task.force,
                       replace=task.replace, progress=False)
    return CellRun(str(res.path), res.written, tuple(res.reused_stages), dict(res.seconds))


#: a cell's status after the sweep
RAN, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class CellResult:
    """One cell after the sweep: ``status`` :data:`RAN` (evaluated now), :data:`SKIPPED`
    (its entry was finished) or :data:`FAILED` (``error``: one line; ``trace``: the
    traceback when it raised); ``seconds``: wall time of its task (0 when skipped or not
    run); ``path``: its entry file; ``state``: what was there before."""

    cell: Cell
    status: str
    state: CellState
    path: Path
    seconds: float = 0.0
    error: str | None = None
    trace: str | None = None
    run: CellRun | None = None


@dataclass
class SweepReport:
    """Every cell's :class:`CellResult` in cell order, the executor used and the wall
    seconds of the whole sweep."""

    results: list[CellResult]
    executor: str
    seconds: float

    def with_status(self, status: str) -> list[CellResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[CellResult]:
        return self.with_status(FAILED)

    @property
    def ok(self) -> bool:
        return not self.failed


def plan(spec: SweepSpec, cache_root: Path | None = None) -> list[tuple[Cell, CellState]]:
    """Every cell of ``spec`` with its :class:`CellState` (what a dry run prints); nothing
    is computed."""
    return [(c, cell_state(c, data_dir=spec.data_dir, cache_root=cache_root))
            for c in expand(spec)]


def _before_run(state: CellState, spec: SweepSpec) -> tuple[str | None, str | None]:
    """(status decided without running, its error): finished cells are skipped (unless
    ``force``), invalid ones fail, and so does an entry file holding another run unless
    ``replace`` or ``force`` may overwrite it."""
    if state.kind == DONE and not spec.force:
        return SKIPPED, None
    if state.kind == INVALID:
        return FAILED, f"XRBenchError: {state.detail}"
    if state.kind == CONFLICT and not (spec.force or spec.replace):
        return FAILED, (f"XRBenchError: the entry file holds another run ({state.detail}); "
                        "pass --replace to overwrite it, or another --out")
    return None, None


def _submission_order(todo: list[int], states: Sequence[CellState]) -> list[int]:
    """Cells sharing a checkpoint not yet trained (e.g. two explainers of one defense and
    seed): the first of each goes first, the others after every first one, so that on a
    cluster they start after that training rather than waiting on its lock beside it."""
    first, later, seen = [], [], set()
    for i in todo:
        key = states[i].checkpoint
        if states[i].kind == CHECKPOINT or key not in seen:
            first.append(i)
        else:
            later.append(i)
        seen.add(key)
    return first + later


def _check_local_resources(cpus: float, gpus: float) -> None:
    """A task asking for more than the local Ray cluster has would wait forever: say so."""
    import torch

    have_cpus = os.cpu_count() or 1
    have_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cpus <= 0 or cpus > have_cpus:
        raise XRBenchError(f"--cpus-per-cell {cpus:g}: this machine has {have_cpus} CPUs; "
                           f"use a value in (0, {have_cpus}]")
    if gpus < 0 or gpus > have_gpus:
        raise XRBenchError(f"--gpus-per-cell {gpus:g} (1 by default with --device cuda): this "
                           f"machine has {have_gpus} GPUs, and a local Ray cluster would wait "
                           "for them forever; use --device cpu, or a cluster with GPUs "
                           "(--ray-address)")


def run_sweep(spec: SweepSpec, *, executor: str = "local", address: str | None = None,
              cpus_per_cell: float = 1.0, gpus_per_cell: float | None = None,
              progress: bool = True, cache_root: Path | None = None,
              planned: list[tuple[Cell, CellState]] | None = None,
              on_start: Callable[[int, int, str], None] | None = None,
              on_result: Callable[[CellResult], None] | None = None) -> SweepReport:
    """Run every cell of ``spec`` that is not finished, through ``executor`` (``local`` or
    ``ray``; ``address`` an existing Ray cluster, else a local one is started), and return
    the report. A failing cell is caught and reported; the others go on.

    ``cpus_per_cell`` and ``gpus_per_cell`` are the resources Ray reserves per cell
    (``gpus_per_cell`` default: 1 with ``device`` ``cuda``, else 0); ``progress``: a bar over
    cells; ``planned``: the output of :func:`plan` when the caller has it already;
    ``on_start``: called once every check has passed, before any cell runs, with (cells,
    cells to run, the executor's description); ``on_result``: called with each cell's result
    as it is known (skipped and failed-before-running cells first).

    Before any cell runs: Ray is importable (``executor="ray"``), a local cluster has the
    resources asked per cell (else a task would wait forever), every name and field is
    known (:func:`expand`), and the results folder is writable."""
    from tqdm.auto import tqdm

    from .executors import get_executor

    from .api import check_output_folder

    t0 = time.perf_counter()
    ex = get_executor(executor, address)  # Ray missing: one line before any work
    if gpus_per_cell is None:
        gpus_per_cell = 1.0 if spec.device.startswith("cuda") else 0.0
    if executor == "ray" and address is None:
        _check_local_resources(cpus_per_cell, gpus_per_cell)
    planned = plan(spec, cache_root) if planned is None else planned
    for out in sorted({c.out for c, _ in planned}):  # before any work, not after
        check_output_folder(Path(out))
    results: list[CellResult | None] = [None] * len(planned)
    todo: list[int] = []
    for i, (cell, state) in enumerate(planned):
        status, error = _before_run(state, spec)
        if status is None:
            todo.append(i)
        else:
            results[i] = CellResult(cell, status, state, cell.entry_path, error=error)
    env = tuple((k, os.environ[k]) for k in ENV_VARS if k in os.environ)
    order = _submission_order(todo, [s for _, s in planned])
    tasks = [CellTask(planned[i][0], spec.device, spec.data_dir, spec.force, spec.replace,
                      spec.retrain, env) for i in order]
    if on_start is not None:
        on_start(len(planned), len(tasks), ex.describe())
    bar = tqdm(total=len(planned), disable=not progress, unit="cell", desc="sweep",
               dynamic_ncols=True)
    for r in results:
        if r is not None:
            bar.update(1)
            if on_result is not None:
                on_result(r)

    def done(outcome: Any) -> None:
        i = order[outcome.index]
        cell, state = planned[i]
        run: CellRun | None = outcome.value
        results[i] = CellResult(cell, RAN if outcome.ok else FAILED, state,
                                Path(run.path) if run is not None else cell.entry_path,
                                outcome.seconds, outcome.error, outcome.trace, run)
        if not outcome.ok:
            log.warning("cell %s failed: %s", cell.name, outcome.error)
        bar.update(1)
        bar.set_postfix(failed=sum(r is not None and r.status == FAILED for r in results))
        if on_result is not None:
            on_result(results[i])  # type: ignore[arg-type]

    try:
        with ex:  # a local Ray cluster starts only when a cell is submitted
            if tasks:
                ex.map(run_cell, tasks, catch=True, on_done=done, cpus_per_task=cpus_per_cell,
                       gpus_per_task=gpus_per_cell)
    finally:
        bar.close()
    final = [r for r in results if r is not None]
    assert len(final) == len(planned)
    return SweepReport(final, ex.describe(), time.perf_counter() - t0)
