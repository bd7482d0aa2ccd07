"""The regression guard of metric values: ``xrbench regress BASELINE CURRENT``.

A number in an entry can move for two different reasons, and the guard tells them apart by
its ``mode``:

- **scoring** (the default): the same checkpoint scored by changed metric or attack code.
  Scoring is deterministic on the CPU (seeded generators, PROTOCOL 5.7), so the band is tight:
  ``|current - baseline| <= max(atol, rtol * |baseline|)``, ``rtol`` 1e-4 (float32 rounding
  between torch versions and BLAS builds) unless ``--rtol``/``--metric`` say otherwise. Any
  move beyond it fails, *in either direction*: with the same weights a number cannot
  legitimately get better, and a weaker attack looks like a more robust model (PGD accuracy
  "improves" when the attack's eps is 0). Both entries must name the same checkpoint sha256;
  besides each metric's value, its interval, median and count must agree, and so must every
  per-example value in the two entries' per-example files (a metric whose mean survives
  while its examples moved is reported).
- **training**: a retrained checkpoint (changed recipe or trainer, another torch version).
  Training is not bit-reproducible across torch versions (the same ``mat`` recipe and seed
  gave 91.85 % clean accuracy under torch 2.15.0 and 89.07 % under 2.14.1), so the band comes
  from the data: on each side of the baseline value, the larger of

  1. the distance to that end of the baseline's own 95 % bootstrap interval (the evaluation
     noise over the subset's images, PROTOCOL 5.7);
  2. ``k`` (default 3) times the standard deviation of the metric over the baseline seeds of
     the same (dataset, model, explainer, profile, defense) (the training noise; extra seeds
     live in a ``spread/`` folder of the baseline, entries only);
  3. one example's worth for a metric that counts examples (a 0/1 value per image or pair:
     ``scale / n``, e.g. 0.5 points of accuracy on 200 images), so that a single image
     flipping is never a regression;
  4. ``atol`` and ``rtol * |baseline|``.

  A metric that moves beyond its band in its worse direction (each stage's
  :meth:`~xrbench.stage.Stage.rows` declares which direction is better) is ``regressed`` and
  fails; in its better direction it is ``improved`` and is reported, failing only with
  ``fail_on_improvement``; a metric with no better direction (Expl@start, the landscape) is
  ``changed`` and fails. A metric with neither an interval nor a seed spread has no band from
  the data: it is reported as ``no band`` and does not fail (give it one with ``--metric``).

Entries are matched by (dataset, model, explainer, profile, defense, seed). A baseline entry
with no current counterpart (``missing``) and a current entry with no baseline (``extra``)
fail; so do two entries of different protocol versions or subset manifests (``not
comparable``: their numbers are never compared). A metric only in the baseline (``missing``)
fails: a guarded number disappeared. A metric only in the current entry (``new``, e.g. a new
stage) is reported and passes; ``--update`` adds it to the baseline.

Everything here is a pure function of entry dicts and their per-example arrays except the
loaders (:func:`load_side`) and :func:`update_baselines`, which writes a baseline folder.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xrbench.columns import number as _num
from xrbench.errors import XRBenchError
from xrbench.identity import SAME_EXAMPLES, EntryKey, entry_key, first_difference, key_text

log = logging.getLogger(__name__)

MODES = ("scoring", "training")
#: scoring band: float32 rounding between torch versions and BLAS builds (tests/test_pinned_entry)
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
#: scoring band of per-example arrays: the smallest half-width, whatever the array's scale
#: (float32 resolution near 1, the scale of images and maps)
ARRAY_ATOL_FLOOR = 1e-12
#: training band: this many standard deviations of the metric over the baseline's seeds
DEFAULT_K = 6.0
#: a folder of the baseline whose entries only feed the seed spread (never required in CURRENT)
SPREAD_FOLDER = "spread"
#: verdicts, in the order a summary counts them
VERDICTS = ("ok", "regressed", "improved", "changed", "missing", "new", "no band")

Key = EntryKey


# --- tolerances -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """A per-metric band: ``value`` relative to the baseline's magnitude (``relative``) or
    absolute, in the entry's units (percent for accuracies, raw L_e for Expl@...)."""

    value: float
    relative: bool = True

    @staticmethod
    def parse(text: str) -> "Tolerance":
        """``"1e-3"`` or ``"rel:1e-3"`` (relative), ``"abs:0.5"`` (absolute)."""
        kind, sep, number = text.strip().partition(":")
        if not sep:
            kind, number = "rel", kind
        if kind not in ("rel", "abs"):
            raise XRBenchError(f"tolerance {text!r}: write a number (relative), rel:X or abs:X")
        try:
            value = float(number)
        except ValueError:
            raise XRBenchError(f"tolerance {text!r} is not a number; write e.g. 1e-3, "
                               "rel:1e-3 or abs:0.5") from None
        if not math.isfinite(value) or value < 0:
            raise XRBenchError(f"tolerance {text!r} must be a finite number >= 0")
        return Tolerance(value, kind == "rel")

    def width(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{'rel' if self.relative else 'abs'}:{self.value:g}"


def parse_metric_tolerances(items: Iterable[str] | None) -> tuple[tuple[str, Tolerance], ...]:
    """``["expl_end=1e-3", "retrieval/*=abs:0.1"]`` -> ((pattern, Tolerance), ...). A pattern
    is a metric name as the table prints it, or a shell-style glob of names."""
    out = []
    for item in items or []:
        name, sep, tol = item.partition("=")
        if not sep or not name.strip():
            raise XRBenchError(f"--metric expects NAME=TOL (e.g. expl_end=1e-3 or "
                               f"clean_acc=abs:1), got {item!r}")
        out.append((name.strip(), Tolerance.parse(tol)))
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """How :func:`regress` judges: ``mode`` (scoring or training), the global ``rtol`` and
    ``atol`` (the whole band in scoring mode, floors in training mode), per-metric
    tolerances (``metric_tolerances``, glob -> :class:`Tolerance`, replacing the band of
    the metrics they match; the last matching pattern wins), ``k`` (seed standard deviations
    in the training band), and whether an improvement fails (``fail_on_improvement``;
    scoring mode always fails on any move)."""

    mode: str = "scoring"
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    metric_tolerances: tuple[tuple[str, Tolerance], ...] = ()
    k: float = DEFAULT_K
    fail_on_improvement: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise XRBenchError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        for name in ("rtol", "atol", "k"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise XRBenchError(f"{name} must be a finite number >= 0, got {v!r}")

    def override(self, metric: str) -> Tolerance | None:
        found = None
        for pattern, tol in self.metric_tolerances:
            if fnmatch.fnmatchcase(metric, pattern):
                found = tol
        return found


# --- metric leaves ----------------------------------------------------------------------------

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
    (:meth:`xrbench.stage.Stage.examples`, the one :mod:`xrbench.compare` reads); {} when
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


# --- one metric -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricCheck:
    """One row of the table: a metric's ``baseline`` and ``current`` values (entry units),
    the allowed range ``[lo, hi]`` for the current value and what set it (``band_from``),
    the ``verdict`` and whether it fails the run; ``better`` is the stage's declared
    direction; ``detail`` says more where needed."""

    metric: str
    label: str
    better: str
    baseline: float | None
    current: float | None
    lo: float | None
    hi: float | None
    band_from: str
    verdict: str
    failed: bool
    detail: str = ""


def _direction_verdict(better: str, below: bool) -> str:
    if better == "higher":
        return "regressed" if below else "improved"
    if better == "lower":
        return "improved" if below else "regressed"
    return "changed"


def _close(a: float | None, b: float | None, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= max(atol, rtol * abs(a))


def scoring_band(name: str, base: float, settings: Settings) -> tuple[float, str]:
    """Half-width of the scoring band around ``base`` and what set it."""
    tol = settings.override(name)
    if tol is not None:
        return tol.width(base), f"--metric {tol}"
    w = max(settings.atol, settings.rtol * abs(base))
    return w, f"rtol {settings.rtol:g}" + (f", atol {settings.atol:g}" if settings.atol else "")


def training_band(name: str, leaf: Leaf, spread: Sequence[float], ex: ExampleValues | None,
                  settings: Settings) -> tuple[float, float, str] | None:
    """(lower width, upper width, what set them) of the training band around the baseline
    value (see the module docstring), or None when the data give no band."""
    base = leaf.value
    assert base is not None
    tol = settings.override(name)
    if tol is not None:
        w = tol.width(base)
        return w, w, f"--metric {tol}"
    parts: list[tuple[float, float, str]] = []
    if leaf.ci is not None:
        parts.append((max(0.0, base - leaf.ci[0]), max(0.0, leaf.ci[1] - base), "CI"))
    finite = [v for v in spread if v is not None and math.isfinite(v)]
    if len(finite) >= 2:
        s = settings.k * float(np.std(finite, ddof=1))
        parts.append((s, s, f"{settings.k:g} sd of {len(finite)} seeds"))
    if not parts:
        return None
    if ex is not None and ex.binary and ex.values.size:
        one = ex.scale / ex.values.size
        parts.append((one, one, "one example"))
    floor = max(settings.atol, settings.rtol * abs(base))
    parts.append((floor, floor, "rtol/atol"))
    lo_w = max(p[0] for p in parts)
    hi_w = max(p[1] for p in parts)
    names = [p[2] for p in parts if p[0] == lo_w or p[1] == hi_w]
    return lo_w, hi_w, " / ".join(dict.fromkeys(names))


def check_metric(name: str, base: Leaf, cur: Leaf, settings: Settings, *,
                 declared: Declared | None = None, spread: Sequence[float] = (),
                 base_ex: ExampleValues | None = None, cur_ex: ExampleValues | None = None
                 ) -> MetricCheck:
    """Judge one metric present on both sides (see the module docstring)."""
    label, better = (declared.label, declared.better) if declared else (name, "")
    b, c = base.value, cur.value
    if b is None or c is None:
        same = b is None and c is None
        return MetricCheck(name, label, better, b, c, None, None, "", "ok" if same else
                           "changed", not same, "" if same else "undefined (null) on one side")
    if settings.mode == "scoring":
        w, src = scoring_band(name, b, settings)
        lo, hi = b - w, b + w
    else:
        band = training_band(name, base, spread, base_ex, settings)
        if band is None:
            same = c == b
            return MetricCheck(name, label, better, b, c, b if same else None,
                               b if same else None, "equal" if same else "",
                               "ok" if same else "no band", False,
                               "" if same else "no interval, no seed spread (see --metric)")
        lo, hi, src = b - band[0], b + band[1], band[2]
    details: list[str] = []
    if lo <= c <= hi:
        verdict = "ok"
    else:
        verdict = _direction_verdict(better, c < lo)
    if settings.mode == "scoring":  # the same rule for the interval, median and examples
        tol = settings.override(name)
        rtol, atol = (settings.rtol, settings.atol) if tol is None else (
            (tol.value, 0.0) if tol.relative else (0.0, tol.value))
        moved = [what for what, x, y in (("interval low", _lo(base), _lo(cur)),
                                         ("interval high", _hi(base), _hi(cur)),
                                         ("median", base.median, cur.median))
                 if not _close(x, y, rtol, atol)]
        if base.n != cur.n:
            moved.append(f"n {base.n} -> {cur.n}")
        if base_ex is not None and cur_ex is not None:
            if base_ex.values.shape != cur_ex.values.shape:
                moved.append(f"{base_ex.values.size} -> {cur_ex.values.size} examples")
            else:
                far = array_moved(base_ex.values, cur_ex.values, rtol, atol)
                if far.any():
                    moved.append(f"{int(far.sum())} of {far.size} examples (band "
                                 f"{array_band(base_ex.values, rtol, atol):.3g})")
        if moved:
            details.append("moved: " + ", ".join(moved))
            if verdict == "ok":
                verdict = "changed"
    failed = verdict != "ok" and (settings.mode == "scoring" or verdict in ("regressed", "changed")
                                  or (verdict == "improved" and settings.fail_on_improvement))
    return MetricCheck(name, label, better, b, c, lo, hi, src, verdict, failed,
                       "; ".join(details))


def _lo(leaf: Leaf) -> float | None:
    return None if leaf.ci is None else leaf.ci[0]


def _hi(leaf: Leaf) -> float | None:
    return None if leaf.ci is None else leaf.ci[1]


# --- entries ----------------------------------------------------------------------------------

@dataclass
class Side:
    """One loaded entry: its file, the entry, and its per-example arrays (None if it has no
    readable per-example file)."""

    path: Path
    entry: dict[str, Any]
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class EntryCheck:
    """The outcome for one entry: ``status`` is ``compared``, ``missing`` (only in the
    baseline), ``extra`` (only in the current results) or ``not comparable``; ``notes``
    say what else differs (recipe, torch, parameters); ``metrics`` are the rows."""

    key: Key
    status: str
    baseline_path: Path | None = None
    current_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    metrics: list[MetricCheck] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status != "compared" or any(m.failed for m in self.metrics)


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1]]


def comparable(base: Mapping[str, Any], cur: Mapping[str, Any], mode: str) -> str | None:
    """None when the two entries may be compared in ``mode``; else why not (one sentence)."""
    from xrbench.columns import get_field

    diff = first_difference(base, cur, SAME_EXAMPLES)
    if diff is not None:
        what = {"protocol.version": "protocol version",
                "subset.manifest_sha256": "subset manifest"}[diff[0]]
        return (f"{what} differs ({diff[1]!s:.16} in the baseline, {diff[2]!s:.16} now): their "
                "numbers are not comparable; refresh the baseline (--update) in a reviewed "
                "commit")
    if mode == "scoring":
        a, b = get_field(base, "checkpoint", "sha256"), get_field(cur, "checkpoint", "sha256")
        if a != b:
            return (f"scoring mode needs the same checkpoint (sha256 {str(a)[:12]}... in the "
                    f"baseline, {str(b)[:12]}... now): score the baseline's checkpoint "
                    "(evaluate --checkpoint), or compare a retrained one with --mode training")
    return None


def entry_notes(base: Mapping[str, Any], cur: Mapping[str, Any], mode: str) -> list[str]:
    """What differs between the two entries besides their numbers, for the reader."""
    from xrbench.leaderboard.render import get_field

    notes = []
    if mode == "training":
        same = get_field(base, "checkpoint", "sha256") == get_field(cur, "checkpoint", "sha256")
        notes.append("same checkpoint as the baseline (scoring mode is the tighter check)"
                     if same else "retrained checkpoint (sha256 differs)")
        if get_field(base, "defense", "recipe_hash") != get_field(cur, "defense", "recipe_hash"):
            fields = _diff_paths(get_field(base, "defense", "recipe") or {},
                                 get_field(cur, "defense", "recipe") or {})
            notes.append("recipe differs: " + (", ".join(fields) or "its hash"))
    a, b = get_field(base, "environment", "torch"), get_field(cur, "environment", "torch")
    if a != b:
        notes.append(f"torch {a} in the baseline, {b} now")
    params = _diff_paths(get_field(base, "protocol", "parameters") or {},
                         get_field(cur, "protocol", "parameters") or {})
    if params:
        shown = ", ".join(params[:6]) + (f" and {len(params) - 6} more" if len(params) > 6 else "")
        notes.append(f"protocol parameters differ: {shown}")
    return notes


def check_entry(base: Side, cur: Side, settings: Settings,
                spread: Sequence[Mapping[str, Any]] = ()) -> EntryCheck:
    """Compare one matched pair of entries; ``spread``: the baseline's entries of the same
    key but other seeds (their values feed the training band), the baseline itself included
    or not (it is added)."""
    key = entry_key(base.entry)
    why = comparable(base.entry, cur.entry, settings.mode)
    if why is not None:
        return EntryCheck(key, "not comparable", base.path, cur.path, [why])
    result = EntryCheck(key, "compared", base.path, cur.path,
                        entry_notes(base.entry, cur.entry, settings.mode))
    bl, cl = metric_leaves(base.entry.get("metrics") or {}), metric_leaves(
        cur.entry.get("metrics") or {})
    decl = declarations(base.entry)
    bex, cex = example_values(base.entry, base.arrays), example_values(cur.entry, cur.arrays)
    if base.arrays is None or cur.arrays is None:
        result.notes.append("no per-example file on "
                            + ("either side" if base.arrays is None and cur.arrays is None else
                               "the baseline side" if base.arrays is None else "the current side")
                            + ": per-example values not checked")
    others = [metric_leaves(e.get("metrics") or {}) for e in spread
              if e is not base.entry and int(e["seed"]) != key[5]]
    for name, leaf in bl.items():
        if name not in cl:
            result.metrics.append(MetricCheck(name, name, "", leaf.value, None, None, None, "",
                                              "missing", True, "in the baseline only"))
            continue
        values = [leaf.value] + [o[name].value for o in others if name in o]
        result.metrics.append(check_metric(
            name, leaf, cl[name], settings,
            declared=decl.get(name),
            spread=[v for v in values if v is not None] if len(values) > 1 else (),
            base_ex=bex.get(name), cur_ex=cex.get(name)))
    for name, leaf in cl.items():
        if name not in bl:
            result.metrics.append(MetricCheck(name, name, "", None, leaf.value, None, None, "",
                                              "new", False, "not in the baseline yet"))
    if settings.mode == "scoring" and base.arrays is not None and cur.arrays is not None:
        failing = {bex[m.metric].stage for m in result.metrics if m.failed and m.metric in bex}
        result.metrics += moved_arrays(base.arrays, cur.arrays, settings, skip=failing)
    return result


def moved_arrays(base: Mapping[str, np.ndarray], cur: Mapping[str, np.ndarray],
                 settings: Settings, skip: Iterable[str] = ()) -> list[MetricCheck]:
    """Scoring mode: one ``changed`` row (``examples:<array>``) per per-example array that
    both files hold and that moved beyond ``rtol``/``atol``, also those behind no metric
    (Insertion's curves, the gallery's maps, the attack's loss trace); arrays of the stages
    in ``skip`` (a metric of theirs already failed, naming them) are left out."""
    rows = []
    skip = set(skip)
    for key in sorted(set(base) & set(cur)):
        if key.split("/", 1)[0] in skip:
            continue
        a = np.asarray(base[key], dtype=np.float64)
        b = np.asarray(cur[key], dtype=np.float64)
        band = array_band(a, settings.rtol, settings.atol) if a.size else 0.0
        if a.shape != b.shape:
            detail = f"shape {a.shape} -> {b.shape}"
        else:
            far = array_moved(a, b, settings.rtol, settings.atol)
            if not far.any():
                continue
            detail = (f"{int(far.sum())} of {far.size} values moved, by up to "
                      f"{float(np.nanmax(np.abs(b - a)[far])):.3g}")
        rows.append(MetricCheck(f"examples:{key}", key, "", _mean(a), _mean(b), None, None,
                                f"+-{band:.3g} (rtol {settings.rtol:g} x max|baseline|)",
                                "changed", True, detail))
    return rows


def array_band(base: np.ndarray, rtol: float, atol: float) -> float:
    """Half-width of the scoring band of every value of one per-example array:
    ``max(atol, rtol * max|base|, ARRAY_ATOL_FLOOR)`` over the array's finite values.

    Scaled by the array's own magnitude, not each value's: float32 rounding across torch
    builds moves a value by a fraction of the array's scale, so a value near 0 moves by as
    much as a large one (+2.33e-10 measured on one of the gallery's values, baselines of
    torch 2.15.0 re-scored under 2.14.1), and ``rtol * |value|`` allows it nothing.
    A real change (an image whose outcome flips, an attack that runs one step fewer) moves
    values by a share of the array's scale, far beyond ``rtol``."""
    a = np.asarray(base, dtype=np.float64)
    finite = np.abs(a[np.isfinite(a)])
    scale = float(finite.max()) if finite.size else 0.0
    return max(atol, rtol * scale, ARRAY_ATOL_FLOOR)


def array_moved(base: np.ndarray, cur: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Which values of ``cur`` left the band :func:`array_band` puts around ``base`` (same
    shapes); NaN and infinities must match exactly."""
    a = np.asarray(base, dtype=np.float64)
    b = np.asarray(cur, dtype=np.float64)
    return ~np.isclose(b, a, rtol=0.0, atol=array_band(a, rtol, atol), equal_nan=True)


def _mean(a: np.ndarray) -> float | None:
    """Mean of the finite values (the table's summary of an array), None if there are none."""
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else None


@dataclass
class Report:
    """Every entry's outcome and the settings that judged them."""

    settings: Settings
    entries: list[EntryCheck]

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.entries)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICTS}
        for e in self.entries:
            for m in e.metrics:
                out[m.verdict] += 1
        return out

    def failures(self) -> list[str]:
        """One short line per failure: ``mat-s0: pgd_acc improved``."""
        out = []
        for e in self.entries:
            name = f"{e.key[4]}-s{e.key[5]}"
            if e.status != "compared":
                out.append(f"{name}: {e.status}")
            out += [f"{name}: {m.metric} {m.verdict}" for m in e.metrics if m.failed]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--format json``)."""
        s = asdict(self.settings)
        s["metric_tolerances"] = {p: str(t) for p, t in self.settings.metric_tolerances}
        return {"mode": self.settings.mode, "passed": not self.failed, "settings": s,
                "counts": self.counts(), "failures": self.failures(),
                "entries": [{"entry": key_text(e.key), "status": e.status,
                             "failed": e.failed,
                             "baseline": None if e.baseline_path is None else str(e.baseline_path),
                             "current": None if e.current_path is None else str(e.current_path),
                             "notes": e.notes, "metrics": [asdict(m) for m in e.metrics]}
                            for e in self.entries]}


def regress(baseline: Sequence[Side], current: Sequence[Side], settings: Settings,
            spread: Sequence[Side] = ()) -> Report:
    """Match ``current`` entries to ``baseline`` entries by :func:`entry_key` and judge each
    pair; ``spread``: extra baseline seeds (entries only) for the training band."""
    def index(sides: Sequence[Side], what: str) -> dict[Key, Side]:
        out: dict[Key, Side] = {}
        for s in sides:
            k = entry_key(s.entry)
            if k in out:
                raise XRBenchError(f"two {what} entries for {key_text(k)}: {out[k].path} and "
                                   f"{s.path}; keep one")
            out[k] = s
        return out

    base, cur = index(baseline, "baseline"), index(current, "current")
    seeds: dict[Key, list[dict[str, Any]]] = {}
    for s in [*baseline, *spread]:
        k = entry_key(s.entry)
        seeds.setdefault(k[:5] + (-1,), []).append(s.entry)
    entries = []
    for k in sorted(set(base) | set(cur), key=lambda k: tuple(map(str, k))):
        if k not in cur:
            entries.append(EntryCheck(k, "missing", base[k].path, None,
                                      ["in the baseline, not in the current results"]))
        elif k not in base:
            entries.append(EntryCheck(k, "extra", None, cur[k].path,
                                      ["in the current results, not in the baseline (add it "
                                       "with --update in a reviewed commit)"]))
        else:
            entries.append(check_entry(base[k], cur[k], settings, seeds.get(k[:5] + (-1,), [])))
    return Report(settings, entries)


# --- files ------------------------------------------------------------------------------------

def entry_files(root: Path) -> list[Path]:
    """The ``*.json`` files below ``root``, sorted, hidden files and folders skipped."""
    return sorted(p for p in root.rglob("*.json") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _load(path: Path, with_examples: bool) -> Side:
    from xrbench.leaderboard.examples import read_examples
    from xrbench.leaderboard.schema import read_entry

    entry = read_entry(path)
    arrays = None
    if with_examples and entry.get("examples"):
        arrays = read_examples(path, entry)  # a damaged file is an error, not a silent skip
    return Side(path, entry, arrays)


def load_side(path: str | Path, *, split_spread: bool = False, with_examples: bool = True
              ) -> tuple[list[Side], list[Side]]:
    """The entries of a file or a folder (recursively; hidden names skipped), each with its
    per-example arrays. With ``split_spread``, entries below a ``spread/`` folder come back
    separately (second list): they only feed the seed spread. Returns (entries, spread)."""
    p = Path(path)
    if p.is_file():
        return [_load(p, with_examples)], []
    if not p.is_dir():
        raise XRBenchError(f"no such file or folder: {p}")
    files = entry_files(p)
    if not files:
        raise XRBenchError(f"no entries (*.json) found under {p}")
    main, spread = [], []
    for f in files:
        is_spread = split_spread and SPREAD_FOLDER in f.relative_to(p).parts[:-1]
        (spread if is_spread else main).append(_load(f, with_examples and not is_spread))
    return main, spread


def checkpoint_beside(entry_path: Path) -> Path:
    """Where a baseline keeps an entry's checkpoint: ``<defense>-s<seed>.pt`` beside it."""
    return entry_path.with_suffix(".pt")


def update_baselines(baseline_dir: str | Path, current: Sequence[Side], *,
                     examples: bool = True, prune: bool = False) -> list[str]:
    """Write the ``current`` entries into ``baseline_dir`` (``<dataset>/<model>/<explainer>/
    <profile>/<defense>-s<seed>.json``), replacing those of the same key, with their
    per-example files (``examples``) and the checkpoint ``<defense>-s<seed>.pt`` lying beside
    a current entry, if any (its sha256 must match the entry's). ``prune`` removes baseline
    entries (and their files) that ``current`` does not hold, spread folder excepted.
    Returns one line per action. A refresh is meant to be a reviewed commit."""
    from xrbench.leaderboard.examples import examples_path
    from xrbench.leaderboard.schema import entry_path, write_entry
    from xrbench.utils import atomic_write_bytes, sha256_file

    root = Path(baseline_dir)
    if root.exists() and not root.is_dir():
        raise XRBenchError(f"--update needs a baseline folder, and {root} is a file")
    actions: list[str] = []
    keep: set[Path] = set()
    for side in current:
        dest = entry_path(root, side.entry)
        entry = {k: v for k, v in side.entry.items() if k != "examples"}
        arrays = side.arrays if examples else None
        if examples and arrays is None and side.entry.get("examples"):
            from xrbench.leaderboard.examples import read_examples
            arrays = read_examples(side.path, side.entry)
        existed = dest.exists()
        for old in (dest, examples_path(dest)):  # replaced on purpose, per-example file too
            old.unlink(missing_ok=True)
        write_entry(dest, entry, examples=arrays)
        keep.add(dest.resolve())
        actions.append(f"{'replaced' if existed else 'added'} {dest}")
        ckpt = checkpoint_beside(side.path)
        if ckpt.is_file():
            want = side.entry.get("checkpoint", {}).get("sha256")
            if sha256_file(ckpt) != want:
                raise XRBenchError(f"{ckpt} is not the checkpoint its entry names (sha256 "
                                   f"{str(want)[:12]}...); not copied")
            there = checkpoint_beside(dest)
            if not there.is_file() or sha256_file(there) != want:
                atomic_write_bytes(there, ckpt.read_bytes())
                actions.append(f"copied checkpoint {checkpoint_beside(dest)}")
    if prune and root.is_dir():
        for f in entry_files(root):
            if f.resolve() in keep or SPREAD_FOLDER in f.relative_to(root).parts[:-1]:
                continue
            for p in (f, examples_path(f), checkpoint_beside(f)):
                if p.exists():
                    p.unlink()
            actions.append(f"removed {f}")
    return actions


def copy_checkpoint(src: str | Path, entry_file: str | Path) -> Path:
    """Copy a checkpoint beside an entry as ``<defense>-s<seed>.pt`` (what
    :func:`update_baselines` then carries into a baseline)."""
    dest = checkpoint_beside(Path(entry_file))
    shutil.copyfile(src, dest)
    return dest


# --- the table --------------------------------------------------------------------------------

def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def render(report: Report, show: str = "all") -> str:
    """The report as text: per entry a header line (with notes) and a tabulate table of its
    metrics (``show``: ``all`` rows, only ``failed`` ones, or every row that is not ``ok``:
    ``changed``), then a summary line."""
    from tabulate import tabulate

    if show not in ("all", "failed", "changed"):
        raise XRBenchError(f"show must be all, failed or changed, not {show!r}")
    lines: list[str] = []
    for e in report.entries:
        mark = "FAIL" if e.failed else "ok"
        lines.append(f"== {key_text(e.key)}: {e.status} [{mark}]")
        lines += [f"   note: {n}" for n in e.notes]
        rows = [m for m in e.metrics if show == "all" or (show == "failed" and m.failed)
                or (show == "changed" and m.verdict != "ok")]
        if rows:
            lines.append(tabulate(
                [(m.metric, m.better or "-", _g(m.baseline), _g(m.current),
                  "-" if m.baseline is None or m.current is None
                  else f"{m.current - m.baseline:+.3g}",
                  "-" if m.lo is None else f"[{_g(m.lo)}, {_g(m.hi)}]", m.band_from or "-",
                  m.verdict + (" FAIL" if m.failed else ""), m.detail) for m in rows],
                headers=["metric", "better", "baseline", "current", "change", "allowed",
                         "band from", "verdict", "detail"],
                tablefmt="simple", disable_numparse=True))
        lines.append("")
    c = report.counts()
    status = "FAILED" if report.failed else "passed"
    n_entries = {s: sum(e.status == s for e in report.entries)
                 for s in ("compared", "missing", "extra", "not comparable")}
    lines.append(f"regress ({report.settings.mode} mode): {status}; entries: "
                 + ", ".join(f"{v} {k}" for k, v in n_entries.items())
                 + "; metrics: " + (", ".join(f"{v} {k}" for k, v in c.items() if v) or "none"))
    if report.failed:
        fails = report.failures()
        lines.append("failed: " + "; ".join(fails[:12]) + (f"; and {len(fails) - 12} more"
                                                          if len(fails) > 12 else ""))
    return "\n".join(lines)
