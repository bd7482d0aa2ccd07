"""Targeted explanation manipulation metrics (PROTOCOL.md section 5.2).

Expl@start / Expl@end are the mean (and median) per-pair explanation loss
``L_e = mean_pixels((sum_map(a(x')) - sum_map(a(x_t)))^2)`` before and after the attack of
Dombrowski et al. 2019 (:mod:`xrbench.attacks.manipulation`); the per-pair values are the
attack's ``expl_start`` / ``expl_end``. Values here are RAW L_e; the leaderboards print them in
units of 1e-7 (i.e. multiply by 1e7), as Table 2 of the SEP paper does. Higher Expl@end means
a more robust explanation. This module adds what the attack's trace says about its
convergence: the mean objective at each trace point and the fall over the second half.
"""

from __future__ import annotations

from typing import Sequence

import torch


def trace_key(fraction: float) -> str:
    """``0.1 -> "at_10"``: the entry's key of the mean loss at that share of the iterations."""
    return f"at_{round(100 * fraction)}"


def mean_loss_at(loss_trace: torch.Tensor, trace_points: Sequence[float]) -> dict[str, float]:
    """Mean objective (with its prefactors) over pairs at each trace point:
    ``{"at_10": ..., "at_50": ..., "at_100": ...}``; loss_trace (K, P), K trace points."""
    means = loss_trace.double().mean(dim=1).tolist()
    return {trace_key(f): m for f, m in zip(trace_points, means)}


def second_half_fall(loss_trace: torch.Tensor, trace_points: Sequence[float]) -> float:
    """Relative fall of the mean objective from 50% to 100% of the iterations,
    ``(L_50 - L_100) / L_50`` (0 when L_50 <= 0); above
    :data:`xrbench.protocol.CONVERGENCE_TOLERANCE` the
    attack was still improving (``not_converged``)."""
    points = [float(f) for f in trace_points]
    if 0.5 not in points or 1.0 not in points:
        raise ValueError(f"trace points {points} must include 0.5 and 1.0 for the "
                         "convergence check")
    at = mean_loss_at(loss_trace, points)
    half, full = at[trace_key(0.5)], at[trace_key(1.0)]
    return (half - full) / half if half > 0 else 0.0
