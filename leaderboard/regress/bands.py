"""The band rules of the regression guard (:mod:`xrbench.leaderboard.regress`, whose
docstring explains them): the default tolerances, a per-metric :class:`Tolerance`, the
:class:`Settings` that judge, and the half-widths of the scoring band (:func:`scoring_band`),
the training band (:func:`training_band`) and a per-example array's band
(:func:`array_band`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from xrbench.errors import XRBenchError

from .values import ExampleValues, Leaf


MODES = ("scoring", "training")
#: scoring band: float32 rounding between torch versions and BLAS builds (tests/test_pinned_entry)
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
#: scoring band of per-example arrays: the smallest half-width, whatever the array's scale
#: (float32 resolution near 1, the scale of images and maps)
ARRAY_ATOL_FLOOR = 1e-12
#: training band: this many standard deviations of the metric over the baseline's seeds
DEFAULT_K = 6.0


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
    in the training band), whether an improvement fails (``fail_on_improvement``;
    scoring mode always fails on any move), and whether entries of different protocol
    versions are compared (``across_versions``: to see what a new protocol version moved on
    the same checkpoints and subset; they are not comparable otherwise)."""

    mode: str = "scoring"
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    metric_tolerances: tuple[tuple[str, Tolerance], ...] = ()
    k: float = DEFAULT_K
    fail_on_improvement: bool = False
    across_versions: bool = False

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
