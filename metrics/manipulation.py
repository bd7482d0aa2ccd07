"""Targeted explanation manipulation metrics (PROTOCOL.md section 5.2).

Expl@start / Expl@end are the mean (and median) per-pair explanation loss
``L_e = mean_pixels((sum_map(a(x')) - sum_map(a(x_t)))^2)`` before and after the attack of
Dombrowski et al. 2019 (:mod:`xrbench.attacks.manipulation`). Values here are RAW L_e; the
leaderboards print them in units of 1e-7 (i.e. multiply by 1e7), as Table 2 of the SEP paper
does. Higher Expl@end means a more robust explanation. Per-pair tensors are returned beside
the summaries so that ``xrbench.metrics.stats.bootstrap_ci_grouped`` can resample victims.
"""

from __future__ import annotations

import logging
from typing import Any

from xrbench.attacks.manipulation import ManipulationResult

log = logging.getLogger(__name__)

#: relative fall of the mean loss between the 50% and 100% trace points above which an entry
#: is flagged ``not_converged`` (PROTOCOL 5.2)
CONVERGENCE_TOLERANCE = 0.05


def trace_label(fraction: float) -> str:
    """``0.1 -> "loss_10"``: key of the mean loss at that fraction of the iterations."""
    return f"loss_{round(100 * fraction)}"


def manipulation_metrics(result: ManipulationResult,
                         tolerance: float = CONVERGENCE_TOLERANCE) -> dict[str, Any]:
    """Summaries and per-pair values of a manipulation run over P pairs.

    Returns a dict with
    - ``expl_start``, ``expl_end``: (P,) float raw L_e per pair (x1e7 for leaderboards);
      ``class_changed``: (P,) bool; ``victims``: (P,) int64 victim image index (or None),
      the resampling unit for bootstrap intervals;
    - ``expl_start_mean``, ``expl_start_median``, ``expl_end_mean``, ``expl_end_median``:
      floats, raw L_e (Expl@start, Expl@end);
    - ``class_changed_pct``: percent of pairs whose predicted class changed (pred on x_adv vs
      pred on x_v, original model);
    - ``loss_10``, ``loss_50``, ``loss_100`` (one per trace point): mean objective (with its
      prefactors) over pairs at that share of the iterations;
    - ``not_converged``: True when the mean loss falls by more than ``tolerance`` (relative)
      from the 50% to the 100% trace point, i.e. more iterations would still lower it.
    """
    points = [float(f) for f in result.trace_points]
    if 0.5 not in points or 1.0 not in points:
        raise ValueError(f"trace points {points} must include 0.5 and 1.0 for the "
                         "convergence check")
    loss_means = result.loss_trace.double().mean(dim=1)
    out: dict[str, Any] = {
        "expl_start": result.expl_start,
        "expl_end": result.expl_end,
        "class_changed": result.class_changed,
        "victims": None if result.pairs is None else result.pairs[:, 0],
        "expl_start_mean": float(result.expl_start.double().mean()),
        "expl_start_median": float(result.expl_start.double().median()),
        "expl_end_mean": float(result.expl_end.double().mean()),
        "expl_end_median": float(result.expl_end.double().median()),
        "class_changed_pct": 100.0 * float(result.class_changed.double().mean()),
        "n_pairs": len(result),
    }
    for f, m in zip(points, loss_means.tolist()):
        out[trace_label(f)] = m
    half, full = out[trace_label(0.5)], out[trace_label(1.0)]
    fall = (half - full) / half if half > 0 else 0.0
    out["not_converged"] = bool(fall > tolerance)
    if out["not_converged"]:
        log.warning("manipulation not converged: mean loss fell %.1f%% over the last half of "
                    "the iterations (tolerance %.0f%%)", 100 * fall, 100 * tolerance)
    return out
