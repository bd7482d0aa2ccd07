"""One metric's verdict in the regression guard (:mod:`xrbench.leaderboard.regress`):
:func:`check_metric` judges a metric present on both sides against its band, and
:func:`moved_arrays` reports the per-example arrays that moved in scoring mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .bands import Settings, array_band, array_moved, scoring_band, training_band
from .values import Declared, ExampleValues, Leaf


#: verdicts, in the order a summary counts them
VERDICTS = ("ok", "regressed", "improved", "changed", "missing", "new", "no band")


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


def _mean(a: np.ndarray) -> float | None:
    """Mean of the finite values (the table's summary of an array), None if there are none."""
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else None
