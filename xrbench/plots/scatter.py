"""The scatter figure of :mod:`xrbench.plots` (PROTOCOL 5.7's question): an explanation metric
against PGD accuracy, one point per entry with both intervals and the Spearman correlation
(:func:`scatter_figure`), and the metric names an entry holds (:func:`metric_names`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import XRBenchError
from ..identity import entry_name
from .base import (LABEL_OFFSET, LOG_RATIO, _get, check_one_table, figure_png, figure_title,
                   labels, line_colors, log, new_figure, place_labels)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def metric_names(entry: Mapping[str, Any]) -> list[str]:
    """The metric names an entry holds, as :func:`scatter_figure` takes them: the path of each
    metric object (a mapping with a ``value``) under ``entry["metrics"]``, parts joined by
    ``/``: ``expl_end``, ``insertion``, ``rps/cosine/8/255``, ``retrieval/relex_adv_mask/0.1``."""
    out: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if "value" in node:
                out.append(path)
                return
            for k, v in node.items():
                walk(v, f"{path}/{k}" if path else str(k))

    walk(_get(entry, "metrics") or {}, "")
    return out


def metric_object(entry: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The metric object called ``name`` (:func:`metric_names`) in ``entry``, or None."""
    node: Any = _get(entry, "metrics")
    rest = name
    while rest:
        if not isinstance(node, Mapping):
            return None
        if rest in node:  # the rest as one key: eps labels such as "8/255" hold a "/"
            node, rest = node[rest], ""
            continue
        head, _, rest = rest.partition("/")
        if head not in node:
            return None
        node = node[head]
    return node if isinstance(node, Mapping) and "value" in node else None


def metric_axis(name: str) -> tuple[str, float]:
    """(axis label, factor from the entry's value to the plotted one) of a metric name, from
    its column's declaration (:mod:`xrbench.columns`): a plain metric by its summary label
    and scale (``expl_end`` -> ``Expl@end (x1e-7)``, 1e7), a family's member by its name
    (``retrieval/relex_adv_mask/0.2 (%)``, 100: rates are stored as shares)."""
    from ..stages import all_columns

    for c in all_columns():
        if not c.family and "/".join(c.path) == name:
            return c.summary_label(), c.scale
        if c.family and name.split("/", 1)[0] == c.path[0]:
            return (f"{name} (%)" if c.scale == 100.0 else name), c.scale
    return name, 1.0


def _value_ci(metric: Mapping[str, Any] | None, scale: float
              ) -> tuple[float, float, float]:
    """(value, lower error, upper error) times ``scale``; NaN where missing."""
    if metric is None or metric.get("value") is None:
        return math.nan, math.nan, math.nan
    v = float(metric["value"]) * scale
    ci = metric.get("ci")
    if not ci or ci[0] is None or ci[1] is None:
        return v, 0.0, 0.0
    return v, max(0.0, v - float(ci[0]) * scale), max(0.0, float(ci[1]) * scale - v)


def draw_scatter(entries: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    """The scatter figure (see :func:`scatter_figure`) as a matplotlib Figure."""
    key = check_one_table(entries)
    known = sorted({n for e in entries for n in metric_names(e)})
    if metric not in known:
        raise XRBenchError(f"unknown metric {metric!r} for these entries; valid names: "
                           f"{', '.join(known)}")
    from ..metrics.stats import rank_correlations

    ylabel, scale = metric_axis(metric)
    fig = new_figure(6.4, 5.0)
    ax = fig.subplots(1, 1)
    xs, ys, names, colors = [], [], [], []
    for entry, label, color in zip(entries, labels(entries), line_colors(len(entries))):
        x, xlo, xhi = _value_ci(metric_object(entry, "pgd_acc"), 1.0)
        y, ylo, yhi = _value_ci(metric_object(entry, metric), scale)
        if not (math.isfinite(x) and math.isfinite(y)):
            reason = _get(entry, "not_applicable")
            log.info("scatter: %s has no %s%s; left out", entry_name(entry), metric,
                     f" (not applicable: {reason})" if reason else "")
            continue
        xs.append(x)
        ys.append(y)
        names.append(label)
        colors.append(color)
        ax.errorbar([x], [y], xerr=[[xlo], [xhi]], yerr=[[ylo], [yhi]], fmt="o", color=color,
                    capsize=3, markersize=5)
    if not xs:
        raise XRBenchError(f"no entry holds both pgd_acc and {metric!r} (see the entries' "
                           "not_applicable); pick another --metric")
    rc = rank_correlations(np.asarray(xs), np.asarray(ys), n_resamples=1000, seed=0)
    sp = rc["spearman"]
    if sp["value"] is None:
        corr = f"Spearman rho undefined (n = {rc['n']})"
    else:
        ci = ("" if sp["lo"] is None else f", 95% CI [{sp['lo']:.2f}, {sp['hi']:.2f}]")
        corr = f"Spearman rho = {sp['value']:.2f}{ci} (n = {rc['n']})"
    ys_arr = np.asarray(ys, dtype=float)
    if ys_arr.min() > 0 and ys_arr.max() / ys_arr.min() > LOG_RATIO:  # as the landscape
        ax.set_yscale("log")
    ax.set_xlabel("PGD accuracy (%)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{corr}\nbars: 95% bootstrap intervals", fontsize="small")
    fig.suptitle(f"{metric} vs PGD accuracy (PROTOCOL 5.7)\n{figure_title(key)}", fontsize="medium")
    _label_points(fig, ax, list(zip(xs, ys)), names, colors, marker=3.0)
    return fig


def _label_points(fig: Figure, ax: Any, points: list[tuple[float, float]], names: list[str],
                  colors: list[Any], marker: float | list[float]) -> None:
    """Lay the figure out with each label at its default place (room for them at the
    edges), then place the labels so that none overlaps another (:func:`place_labels`)."""
    provisional = [ax.annotate(n, p, textcoords="offset points", xytext=LABEL_OFFSET,
                               fontsize="small") for n, p in zip(names, points)]
    fig.tight_layout()
    for a in provisional:
        a.remove()
    place_labels(ax, points, names, colors, marker=marker)


def scatter_figure(entries: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """PNG of one point per entry (of one table): x = PGD accuracy (%), y = ``metric``, a
    metric name of :func:`metric_names` (``expl_end``, ``expl_start``, ``insertion``,
    ``adv_insertion``, ``class_changed``, ``rps/<similarity>/<eps>``,
    ``retrieval/<kind>/<eps>``, ...), L_e in 1e-7 and rates in percent; error bars are the
    entries' 95% bootstrap intervals, the title gives the Spearman correlation with its
    bootstrap interval over the entries (PROTOCOL 5.7). An entry without the metric (not
    applicable for its explainer) is left out."""
    return figure_png(draw_scatter(entries, metric))


def draw_pareto(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """The Pareto figure (see :func:`pareto_figure`) as a matplotlib Figure."""
    from ..leaderboard.board import pareto_front, pareto_point

    key = check_one_table(entries)
    points = [pareto_point(e) for e in entries]
    if sum(p is not None for p in points) < 1:
        raise XRBenchError("no entry holds clean accuracy, PGD accuracy and Expl@end (worst); "
                           "score them with this xrbench (evaluate ... --replace adds the "
                           "worst-case ensemble of PROTOCOL 5.8)")
    front = pareto_front(points)
    fig = new_figure(6.4, 5.0)
    ax = fig.subplots(1, 1)
    on: list[tuple[float, float]] = []
    # (point, label, colour, marker half-size in points)
    marked: list[tuple[tuple[float, float], str, str, float]] = []
    for entry, label, p, is_front in zip(entries, labels(entries), points, front):
        if p is None:
            log.info("pareto: %s has no Expl@end (worst); left out", entry_name(entry))
            continue
        clean, pgd, worst = p
        y = worst * 1e7
        area = 40 + 4 * max(clean - 50.0, 0.0)  # points^2
        ax.scatter([pgd], [y], s=area,
                   marker="*" if is_front else "o",
                   color="tab:red" if is_front else "tab:gray", zorder=3)
        marked.append(((pgd, y), f"{label} ({clean:.1f}%)",
                       "tab:red" if is_front else "tab:gray", math.sqrt(area) / 2))
        if is_front:
            on.append((pgd, y))
    if len(on) > 1:
        on.sort()
        ax.plot([x for x, _ in on], [y for _, y in on], color="tab:red", alpha=0.4, zorder=2)
    ys = [p[2] * 1e7 for p in points if p is not None]
    if min(ys) > 0 and max(ys) / min(ys) > LOG_RATIO:
        ax.set_yscale("log")
    ax.set_xlabel("PGD accuracy (%)")
    ax.set_ylabel("Expl@end, worst case (x1e-7)")
    ax.grid(True, alpha=0.3)
    ax.set_title("stars: the Pareto front of clean accuracy (in brackets; marker size), PGD "
                 "accuracy\nand Expl@end (worst): no other row is at least as high on all "
                 "three", fontsize="small")
    fig.suptitle(f"Pareto front (PROTOCOL 5.8)\n{figure_title(key)}", fontsize="medium")
    _label_points(fig, ax, [m[0] for m in marked], [m[1] for m in marked],
                  [m[2] for m in marked], marker=[m[3] for m in marked])
    return fig


def pareto_figure(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of one point per entry (of one table): x = PGD accuracy (%), y = Expl@end (worst)
    (x1e-7), marker size growing with clean accuracy (printed beside the label); the entries
    on the Pareto front of the three (:func:`xrbench.leaderboard.board.pareto_front`) as red
    stars joined by a line. An entry without Expl@end (worst) is left out."""
    return figure_png(draw_pareto(entries))
