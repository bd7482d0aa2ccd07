"""The numbers the regression guard compares (:mod:`xrbench.leaderboard.regress`): every
number of an entry's metrics (:func:`metric_leaves`), what each metric's column declares
(:func:`declarations`), the per-example values behind a metric (:func:`example_values`), and
one loaded entry (:class:`Side`). Pure functions of entry dicts and their arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xrbench.columns import number as _num

log = logging.getLogger("xrbench.leaderboard.regress")  # the name it always had


@dataclass
class Leaf:
    """One number of an entry's metrics: a metric object's ``value`` with its ``ci``,
    ``median`` and ``n`` (``obj`` is the object itself), or a plain number (a landscape point,
    the manipulation's loss trace) with ``obj`` None."""

    value: float | None
    ci: tuple[float, float] | None = None
    median: float | None = None
    n: int | None = None
    obj: Any = None


def metric_leaves(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Leaf]:
    """Every number of an entry's ``metrics``, by name: metric objects (dicts with ``value``)
    under their path (``"expl_end"``, ``"rps/cosine/8/255"``), lists of numbers index by
    index (``"landscape/explanation/2"``), and other numbers under their path
    (``"manipulation_loss/second_half_fall"``). Booleans and strings are not metrics."""
    out: dict[str, Leaf] = {}
    for key, v in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(v, Mapping) and "value" in v:
            ci = v.get("ci")
            ci_t = (float(ci[0]), float(ci[1])) if (isinstance(ci, (list, tuple)) and len(ci) == 2
                                                    and None not in ci) else None
            out[name] = Leaf(_num(v.get("value")), ci_t, _num(v.get("median")),
                             v.get("n") if isinstance(v.get("n"), int) else None, v)
        elif isinstance(v, Mapping):
            out.update(metric_leaves(v, name + "/"))
        elif isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                if item is None or (isinstance(item, (int, float)) and not isinstance(item, bool)):
                    out[f"{name}/{i}"] = Leaf(_num(item))
        elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[name] = Leaf(_num(v))
    return out


@dataclass(frozen=True)
class Declared:
    """What a metric's column declares (:class:`xrbench.columns.Column`): its printed
    ``label`` and which direction is ``better`` ("higher", "lower" or "")."""

    label: str
    better: str


def declarations(entry: Mapping[str, Any]) -> dict[str, Declared]:
    """Per metric name of this entry (``"rps/cosine/8/255"``), what its column declares
    (:mod:`xrbench.columns`, listed by each stage): one declaration of direction, reused."""
    from xrbench.columns import declared_metrics
    from xrbench.stages import all_columns

    return {name: Declared(c.summary_label(parts), c.better)
            for name, (c, parts) in declared_metrics(entry.get("metrics") or {},
                                                         all_columns()).items()}


@dataclass(frozen=True)
class ExampleValues:
    """The per-example values behind one metric (from the per-example file): ``values``
    (n,) in the entry's units (``scale`` applied) and whether they count examples
    (``binary``: every raw value is 0 or 1), which makes one example worth ``scale / n``."""

    values: np.ndarray
    scale: float
    binary: bool
    stage: str = ""


def example_values(entry: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None
                   ) -> dict[str, ExampleValues]:
    """Per metric name, its per-example values, read through each stage's own mapping
    (:meth:`xrbench.engine.stage.Stage.examples`, the one :mod:`xrbench.compare` reads); {} when
    the entry has no per-example file."""
    if not arrays:
        return {}
    from xrbench.compare import stage_outputs
    from xrbench.stages import STAGES

    outputs = stage_outputs(dict(arrays))
    grey = (entry.get("dataset") or {}).get("channels") == 1
    out: dict[str, ExampleValues] = {}
    for stage in STAGES:
        if stage.name not in outputs:
            continue
        try:
            ex = stage.examples(outputs[stage.name], grey)
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # an older file layout
            log.info("per-example values of stage %s not readable (%s)", stage.name, exc)
            continue
        for key, e in ex.items():
            raw = e.values.double().numpy()
            out["/".join(key)] = ExampleValues(raw * e.scale, e.scale,
                                               bool(np.isin(raw, (0.0, 1.0)).all()), stage.name)
    return out


@dataclass
class Side:
    """One loaded entry: its file, the entry, and its per-example arrays (None if it has no
    readable per-example file)."""

    path: Path
    entry: dict[str, Any]
    arrays: dict[str, np.ndarray] | None = None
