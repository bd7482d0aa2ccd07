"""The correlation answer under every leaderboard table (PROTOCOL.md section 5.7).

Across the rows of one table: Spearman's rho and Kendall's tau-b between PGD accuracy and
each explanation-robustness metric (:func:`correlated_metrics`), each with a 95% percentile
bootstrap interval and the number of rows it uses. This is the SEP paper's question ("are
classification robustness and explanation robustness strongly correlated?") asked of every
table.

What the bootstrap resamples: the table's **rows** (entries), with replacement, the pairs
(PGD accuracy, metric) kept together; :data:`RESAMPLES` resamples from a generator seeded
with :data:`SEED`, so the same table always prints the same interval. The row is the natural
unit: it is what the correlation is computed over, and it works for reported rows, which have
no per-example values. Its limits, which the numbers should be read with:

- the interval describes how much the rank correlation moves when the *set of defenses* is
  resampled, not the noise inside each entry's mean (each mean has its own interval);
- with few rows (7 defenses in a table) a resample holds 4-5 distinct rows on average,
  rank correlations take few distinct values, and percentile intervals are wide and
  undercover (their true coverage is below 95%); with fewer than :data:`MIN_ROWS` rows no
  number is printed at all, a sentence says so instead;
- a resample whose PGD accuracies or metric values are all equal (constant ranks) has no
  correlation: it is left out, and the number of resamples used is reported with the
  interval in the JSON document (and on the printed line when more than 5% were left
  out); if fewer than half remain, no interval is printed.

Ties take average ranks (Spearman) and the tau-b correction (Kendall), so three defenses at
0% PGD accuracy are one tied group, as scipy's ``spearmanr`` and ``kendalltau`` treat them.
The statistics are :func:`xrbench.metrics.stats.rank_correlations` (the same function the
scatter figure of ``xrbench plot`` titles itself with, so figure and table agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xrbench.columns import TABLE_EPS, correlated_columns, number as _num

from .fields import active_columns
from .fields import get_field as _get

RESAMPLES = 1000  # bootstrap resamples per correlation (PROTOCOL 5.7)
SEED = 0  # the bootstrap generator's seed
LEVEL = 0.95  # interval level
MIN_ROWS = 4  # fewer rows with both values: a sentence instead of a number
MIN_VALID_SHARE = 0.5  # fewer usable resamples than this share: no interval
NOTE_UNDEFINED_SHARE = 0.05  # more undefined resamples than this share: the line says so




def _eps_sort_key(key: str) -> float:
    try:
        return float(Fraction(key))
    except (ValueError, ZeroDivisionError):
        return math.inf


def rps_eps_for(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The eps at which a table shows (and correlates) RPS cosine: ``8/255`` (the protocol's
    middle value) when every row that has RPS cosine has it, else the largest eps all of
    them share (reported rows of Joo et al. give only ``16/255``), else the most common
    one; None when no row has RPS cosine."""
    sets = [set(c) for e in entries if isinstance(c := _get(e, "metrics", "rps", "cosine"),
                                                    Mapping) and c]
    if not sets:
        return None
    common = set.intersection(*sets)
    if "8/255" in common:
        return "8/255"
    if common:
        return max(common, key=_eps_sort_key)
    counts: dict[str, int] = {}
    for s in sets:
        for k in s:
            counts[k] = counts.get(k, 0) + 1
    return max(counts, key=lambda k: (counts[k], _eps_sort_key(k)))


@dataclass(frozen=True)
class Metric:
    """An explanation-robustness metric of a row: ``key`` (stable id), ``label`` (as the
    table's column says it) and how to read it from an entry (its ``value``, entry units)."""

    key: str
    label: str
    read: Callable[[Mapping[str, Any], str | None], float | None]


def correlated_metrics() -> tuple[Metric, ...]:
    """The metrics correlated with PGD accuracy, in print order (PROTOCOL 5.2-5.5): the
    columns that declare ``correlated`` (:func:`xrbench.columns.correlated_columns`)."""
    return tuple(Metric(c.key, c.short or c.label,
                        lambda e, eps, c=c: c.value(e, eps))
                 for c in correlated_columns(active_columns()))


def pgd_accuracy(entry: Mapping[str, Any]) -> float | None:
    """The row's PGD accuracy (percent), or None."""
    return _num(_get(entry, "metrics", "pgd_acc", "value"))


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval."""

    lo: float
    hi: float


@dataclass
class Correlation:
    """PGD accuracy against one metric over some rows of a table.

    ``n``: rows with both values. ``spearman``/``kendall``: the estimates (None when
    undefined or when ``n`` < :data:`MIN_ROWS`); ``*_ci``: their 95% intervals (None when not
    computed); ``resamples_used``: bootstrap resamples with a defined correlation (of
    ``resamples``); ``note``: one sentence when something is not printed, else None."""

    metric: str
    label: str
    n: int
    spearman: float | None = None
    kendall: float | None = None
    spearman_ci: Interval | None = None
    kendall_ci: Interval | None = None
    resamples: int = RESAMPLES
    resamples_used: int = 0
    note: str | None = None


def correlate(entries: Sequence[Mapping[str, Any]], metric: Metric, rps_eps: str | None, *,
              resamples: int = RESAMPLES, seed: int = SEED) -> Correlation:
    """PGD accuracy against ``metric`` over the rows of ``entries`` that have both values."""
    pairs = [(p, v) for e in entries
             if (p := pgd_accuracy(e)) is not None and (v := metric.read(e, rps_eps)) is not None]
    n = len(pairs)
    out = Correlation(metric.key, metric.label, n, resamples=resamples)
    if n < MIN_ROWS:
        out.note = (f"{n} row{'s' if n != 1 else ''} with both values: fewer than {MIN_ROWS}, "
                    "no correlation printed")
        return out
    from xrbench.metrics.stats import rank_correlations  # torch: not for `xrbench --help`

    x, y = [p for p, _ in pairs], [v for _, v in pairs]
    rc = rank_correlations(np.asarray(x), np.asarray(y), n_resamples=resamples, seed=seed,
                           alpha=1 - LEVEL)
    out.spearman, out.kendall = rc["spearman"]["value"], rc["kendall"]["value"]
    if out.spearman is None:
        which = "PGD accuracy" if len(set(x)) == 1 else metric.label
        out.note = f"undefined: {which} is the same in all {n} rows"
        return out
    out.resamples_used = round(resamples * (1.0 - float(rc["degenerate_resamples"] or 0.0)))
    if out.resamples_used < MIN_VALID_SHARE * resamples:
        out.note = (f"no interval: only {out.resamples_used} of {resamples} resamples have "
                    "a defined correlation")
        return out
    for name in ("spearman", "kendall"):
        lo, hi = rc[name]["lo"], rc[name]["hi"]
        if lo is not None and hi is not None:
            setattr(out, f"{name}_ci", Interval(lo, hi))
    return out


@dataclass
class CorrelationSet:
    """The correlations of one set of rows of a table (``rows``: ``"measured"`` or
    ``"reported"``) with PGD accuracy: one :class:`Correlation` per metric that some row
    has, or a ``note`` saying why there are none."""

    rows: str
    n_rows: int
    items: list[Correlation] = field(default_factory=list)
    note: str | None = None
    excluded_duplicates: int = 0


def table_correlations(entries: Sequence[Mapping[str, Any]], rows: str,
                       rps_eps: str | None, *, excluded_duplicates: int = 0,
                       resamples: int = RESAMPLES, seed: int = SEED) -> CorrelationSet:
    """Every metric of :func:`correlated_metrics` that at least one of ``entries`` has, correlated
    with PGD accuracy (:func:`correlate`). Metrics no row has are left out; rows without
    PGD accuracy (Joo et al. report none) give a note instead of correlations."""
    out = CorrelationSet(rows, len(entries), excluded_duplicates=excluded_duplicates)
    if not any(pgd_accuracy(e) is not None for e in entries):
        out.note = ("no PGD accuracy in these rows" if rows == "measured" else
                    "the source reports no PGD accuracy")
        return out
    eps_picked = {c.key for c in correlated_columns(active_columns()) if TABLE_EPS in c.pick}
    for metric in correlated_metrics():
        if metric.key in eps_picked and rps_eps is not None:
            metric = Metric(metric.key, f"{metric.label} {rps_eps}", metric.read)
        if any(metric.read(e, rps_eps) is not None for e in entries):
            out.items.append(correlate(entries, metric, rps_eps, resamples=resamples,
                                       seed=seed))
    if not out.items:
        out.note = "no explanation metric in these rows"
    return out


def format_correlation(c: Correlation) -> str:
    """One line: ``Expl@end: Spearman +0.43 [-0.50, +0.96], Kendall +0.33 [-0.43, +0.90]
    (n = 7)``, or the metric and its note."""
    if c.note is not None and c.spearman_ci is None and (c.spearman is None
                                                         or c.n < MIN_ROWS):
        return f"{c.label}: {c.note} (n = {c.n})"

    def one(v: float | None, ci: Interval | None) -> str:
        text = "undefined" if v is None else f"{v:+.2f}"
        return text + (f" [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci is not None else "")

    line = (f"{c.label}: Spearman {one(c.spearman, c.spearman_ci)}, "
            f"Kendall {one(c.kendall, c.kendall_ci)} (n = {c.n})")
    if c.note:
        line += f"; {c.note}"
    elif c.resamples_used < (1 - NOTE_UNDEFINED_SHARE) * c.resamples:
        line += f"; interval from the {c.resamples_used} of {c.resamples} resamples defined"
    return line
