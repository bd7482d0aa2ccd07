"""Bootstrap intervals and rank correlations (PROTOCOL.md section 5.7).

- :func:`bootstrap_ci`: percentile bootstrap of a statistic over examples (subset images).
- :func:`bootstrap_ci_grouped`: the same for pair metrics, resampling VICTIMS (clusters):
  each drawn victim brings all of its pairs, so pairs sharing a victim are never treated as
  independent (a cluster bootstrap, Davison & Hinkley 1997, section 3.8).
- :func:`rank_correlations`: Spearman rho and Kendall tau-b between two per-entry columns of
  a leaderboard table (e.g. PGD accuracy vs Expl@end), each with a bootstrap interval over
  the entries.

All resampling is vectorised: one (n_resamples, n) index matrix from a seeded
``numpy.random.Generator`` (``default_rng(seed)``), no Python loop over resamples. Intervals
are percentile intervals ``[q(alpha/2), q(1 - alpha/2)]`` of the resampled statistic
(numpy's default linear interpolation). NaN values are not dropped: they propagate.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch

from xrbench.chunking import chunk_slices

Statistic = Callable[..., np.ndarray]  # statistic(array, axis=-1) -> array, e.g. np.mean


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of per-example values, got shape {arr.shape}")
    return arr


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(values: Any, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                 statistic: Statistic = np.mean) -> tuple[float, float, float]:
    """(estimate, lo, hi): ``statistic`` of ``values`` (N,) and its percentile bootstrap
    (1 - alpha) interval from ``n_resamples`` resamples of the N examples with replacement.

    ``statistic(array, axis=-1)`` must reduce the last axis (numpy reductions do). The
    estimate is the statistic of the original sample, not the mean of the resamples. Empty
    input gives (nan, nan, nan); N = 1 or constant values give a zero-width interval.
    """
    v = _to_numpy(values)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if np.ptp(v) == 0 and np.isfinite(v[0]):  # exact, free of summation rounding
        c = float(statistic(v[:1], axis=-1))
        return c, c, c
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    boot = np.asarray(statistic(v[idx], axis=-1), dtype=np.float64)
    lo, hi = _percentiles(boot, alpha)
    return float(statistic(v, axis=-1)), lo, hi


def bootstrap_ci_grouped(values: Any, groups: Any, n_resamples: int = 1000, seed: int = 0,
                         alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-pair ``values`` (P,) with a bootstrap over groups (victims).

    ``groups`` (P,): the victim id of each pair (any hashable numbers). Each resample draws
    G victims with replacement out of the G distinct ones and pools all pairs of every drawn
    victim (a victim drawn twice counts twice); the resampled statistic is the mean over the
    pooled pairs, i.e. ``sum_g m_g S_g / sum_g m_g n_g`` with m_g the multiplicity of victim
    g in the resample, S_g its sum and n_g its pair count. Vectorised as a (n_resamples, G)
    multiplicity matrix. The estimate is the plain mean over all P pairs.
    """
    v = _to_numpy(values)
    g = np.asarray(groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor)
                   else groups)
    if g.shape != v.shape:
        raise ValueError(f"groups {g.shape} and values {v.shape} must have the same shape")
    if v.size == 0:
        return math.nan, math.nan, math.nan
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    group_sum = np.bincount(inverse, weights=v, minlength=n_groups)
    group_count = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    rows = np.repeat(np.arange(n_resamples), n_groups)
    mult = np.bincount(rows * n_groups + idx.ravel(), minlength=n_resamples * n_groups)
    mult = mult.reshape(n_resamples, n_groups).astype(np.float64)
    boot = (mult @ group_sum) / (mult @ group_count)
    lo, hi = _percentiles(boot, alpha)
    return float(v.mean()), lo, hi


# --- rank correlations -----------------------------------------------------------------------

def _rank_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis; NaN where either row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho (Pearson r of average ranks, as scipy ``spearmanr``) per row of (B, n)."""
    return _pearson_rows(_rank_rows(x), _rank_rows(y))


def kendall_tau_b_rows(x: np.ndarray, y: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Kendall tau-b per row of (B, n), as scipy ``kendalltau`` (variant 'b'):
    ``sum_{i<j} s^x_ij s^y_ij / sqrt(sum s^x_ij^2 * sum s^y_ij^2)``, s_ij = sign(v_i - v_j).
    (C - D over the pairs untied in x and in y.) NaN where either row is constant.
    Vectorised over (chunk, n, n) sign tensors."""
    out = np.empty(x.shape[0])
    iu = np.triu_indices(x.shape[1], k=1)
    for s in chunk_slices(x.shape[0], chunk):
        sx = np.sign(x[s, :, None] - x[s, None, :])[:, iu[0], iu[1]]
        sy = np.sign(y[s, :, None] - y[s, None, :])[:, iu[0], iu[1]]
        den = np.sqrt((sx * sx).sum(-1) * (sy * sy).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s] = np.where(den > 0, (sx * sy).sum(-1) / np.where(den > 0, den, 1.0),
                                        np.nan)
    return out


def _none_if_nan(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def rank_correlations(x: Any, y: Any, n_resamples: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, Any]:
    """Spearman and Kendall (tau-b) correlation of two per-entry columns, with percentile
    bootstrap intervals over the entries (rows resampled with replacement, same indices for
    both methods).

    Returns ``{"n": n, "spearman": {"value", "lo", "hi", "p_value"}, "kendall": {...}}``;
    point values and p-values from scipy.stats. A value that is undefined (n < 3, or x or y
    constant) is None, never NaN; resamples that come out constant are left out of the
    interval, and the share of such resamples is given as ``"degenerate_resamples"``.
    """
    from scipy import stats as sps

    xa, ya = _to_numpy(x), _to_numpy(y)
    if xa.shape != ya.shape:
        raise ValueError(f"x {xa.shape} and y {ya.shape} must have the same length")
    n = int(xa.size)
    empty = {"value": None, "lo": None, "hi": None, "p_value": None}
    out: dict[str, Any] = {"n": n, "spearman": dict(empty), "kendall": dict(empty),
                           "n_resamples": n_resamples, "seed": seed, "alpha": alpha,
                           "degenerate_resamples": None}
    finite = np.isfinite(xa).all() and np.isfinite(ya).all()
    if n < 3 or not finite or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp, kt = sps.spearmanr(xa, ya), sps.kendalltau(xa, ya)
    # a canonical row order, so the interval does not depend on the order rows came in
    # (a table sorted by Expl@end and a figure in file order get the same numbers)
    order = np.lexsort((ya, xa))
    xa, ya = xa[order], ya[order]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    boots = {"spearman": spearman_rows(xa[idx], ya[idx]),
             "kendall": kendall_tau_b_rows(xa[idx], ya[idx])}
    for name, point in (("spearman", sp), ("kendall", kt)):
        b = boots[name]
        ok = b[np.isfinite(b)]
        lo, hi = _percentiles(ok, alpha) if ok.size else (math.nan, math.nan)
        out[name] = {"value": _none_if_nan(float(point.statistic)), "lo": _none_if_nan(lo),
                     "hi": _none_if_nan(hi), "p_value": _none_if_nan(float(point.pvalue))}
    out["degenerate_resamples"] = float(np.mean(~np.isfinite(boots["spearman"])))
    return out


def summarize(values: Any, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
              groups: Any = None) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n"}`` for per-example ``values``; with ``groups`` (victim ids
    of pair values) the grouped bootstrap is used. A convenience for result records."""
    if groups is None:
        m, lo, hi = bootstrap_ci(values, n_resamples, seed, alpha)
    else:
        m, lo, hi = bootstrap_ci_grouped(values, groups, n_resamples, seed, alpha)
    return {"mean": m, "lo": lo, "hi": hi, "n": int(_to_numpy(values).size)}
