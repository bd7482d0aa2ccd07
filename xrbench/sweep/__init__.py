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
error and does not stop the others. Cells run through :mod:`xrbench.engine.executors` (in this
process, or as Ray tasks); xrbench schedules nothing itself.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import XRBenchError
from .cells import Cell, SweepSpec, expand, parse_grid, parse_seeds, split_list
from .state import (CHECKPOINT, CONFLICT, DONE, INVALID, NOTHING, PARTIAL, CellState,
                          cell_overrides, cell_state, plan)

__all__ = ["CHECKPOINT", "CONFLICT", "DONE", "ENV_VARS", "FAILED", "INVALID", "NOTHING",
           "PARTIAL", "RAN", "SKIPPED", "Cell", "CellResult", "CellRun", "CellState",
           "CellTask", "SweepReport", "SweepSpec", "cell_overrides", "cell_state",
           "expand", "parse_grid", "parse_seeds", "plan", "run_cell", "run_sweep",
           "split_list"]

log = logging.getLogger(__name__)

#: the environment variables that tell xrbench where its cache and data are (and whether to
#: stay offline); a cell's task sets the sweeping process's values in its worker
ENV_VARS = ("XRBENCH_CACHE", "XRBENCH_DATA", "XRBENCH_OFFLINE", "HF_DATASETS_OFFLINE",
            "XRBENCH_DISABLE_PLUGIN_AUTOLOAD")


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
    from .. import api

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

    from ..engine.executors import get_executor

    from ..api import check_output_folder

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
