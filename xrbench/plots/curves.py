"""The curve figures of :mod:`xrbench.plots`: the loss landscapes of PROTOCOL 5.6
(:func:`landscape_figure`), the Insertion and Adv-Insertion curves of PROTOCOL 5.4
(:func:`insertion_figure`), and a landscape PNG from plain curves (:func:`plot_landscape`).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import XRBenchError
from ..identity import entry_name
from .base import (EXPL_SCALE, LOG_RATIO, RERUN, Curve, Item, _get, check_one_table,
                         example_array, figure_png, figure_title, labels, line_colors,
                         log, new_figure)
from ..utils import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw_landscape(items: Sequence[Item]) -> Figure:
    """The landscape figure (see :func:`landscape_figure`) as a matplotlib Figure with two
    axes: mean ``L_e`` (x1e-7; log scale when the values span more than :data:`LOG_RATIO`)
    and mean cross-entropy against gamma, one line per entry."""
    entries = [e for e, _ in items]
    key = check_one_table(entries)
    fig = new_figure(12.0, 4.2)
    ax_e, ax_c = fig.subplots(1, 2)
    for (entry, _), label, color in zip(items, labels(entries), line_colors(len(items))):
        land = _get(entry, "metrics", "landscape")
        if not isinstance(land, Mapping) or "gammas" not in land:
            reason = _get(entry, "not_applicable", "landscape")
            raise XRBenchError(f"entry {entry_name(entry)} has no loss landscape "
                               f"(metrics.landscape)"
                               + (f": {reason}" if reason else f": {RERUN}"))
        g = np.asarray(land["gammas"], dtype=float)
        expl = np.array([math.nan if v is None else v * EXPL_SCALE
                         for v in land["explanation"]], dtype=float)
        ce = np.asarray(land["cross_entropy"], dtype=float)
        ax_e.plot(g, expl, marker="o", markersize=3, color=color, label=label)
        ax_c.plot(g, ce, marker="o", markersize=3, color=color, label=label)
    # curves more than a factor 10 apart (sep_neg's maps beside the others') on a log axis
    ys = np.concatenate([ln.get_ydata() for ln in ax_e.get_lines()]).astype(float)
    ys = ys[np.isfinite(ys)]
    if ys.size and ys.min() > 0 and ys.max() / ys.min() > LOG_RATIO:
        ax_e.set_yscale("log")
    pairs = _get(entries[0], "protocol", "parameters", "landscape", "pairs")
    ax_e.set_title("explanation loss, mean over "
                   + (f"{pairs} pairs" if pairs else "the sampled pairs"), fontsize="medium")
    ax_e.set_ylabel("L_e(x_v + gamma d, x_t) (x1e-7)")
    ax_c.set_title("cross-entropy, mean over the subset", fontsize="medium")
    ax_c.set_ylabel("CE(x + gamma d)")
    for ax in (ax_e, ax_c):
        ax.set_xlabel("gamma (pixel units), d ~ N(0, I)")
        ax.grid(True, alpha=0.3)
    # one legend for both axes, right of them (inside, it would hide a curve)
    fig.legend(handles=ax_e.get_lines(), loc="center right", fontsize="small")
    fig.suptitle(f"Loss landscape (PROTOCOL 5.6): {figure_title(key)}", fontsize="medium")
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.5 / fig.get_figwidth(), 1.0))
    return fig


def landscape_figure(items: Sequence[Item]) -> bytes:
    """PNG of the loss landscapes of PROTOCOL 5.6 (the SEP paper's figure 4): the mean
    explanation loss ``L_e(x_v + gamma d, x_t)`` (in 1e-7) and the mean cross-entropy
    against gamma (pixel units), one curve per entry of ``items`` ((entry, examples) pairs of
    one table); values from each entry's ``metrics.landscape``."""
    return figure_png(draw_landscape(items))


def insertion_curve_mean(examples: Mapping[str, np.ndarray], stage: str, entry: Mapping[str, Any]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(ratios (R,), mean curve (R,) in percent) of ``stage`` (``"insertion"`` or
    ``"adv_insertion"``) from an entry's per-example ``<stage>/curve`` (R, N) and
    ``<stage>/ratios`` (R,); its mean over the ratios is the entry's score."""
    what = {"insertion": "Insertion curves",
            "adv_insertion": "Adv-Insertion curves"}.get(stage, f"{stage} curves")
    curve = example_array(examples, f"{stage}/curve", entry, what, stage)
    ratios = example_array(examples, f"{stage}/ratios", entry, what, stage)
    return ratios.astype(float), 100.0 * curve.astype(np.float64).mean(axis=1)


#: the Insertion figure's legends: entries a line, and how far under its axis (inches) each
#: legend starts (below the tick labels and the axis label)
INSERTION_LEGEND_COLUMNS = 3
INSERTION_LEGEND_DROP = 0.5


def draw_insertion(items: Sequence[Item]) -> Figure:
    """The insertion figure (see :func:`insertion_figure`) as a matplotlib Figure: one axis
    for Insertion and, when any entry ran it, one for Adv-Insertion, each with its legend
    under it (outside the axis, so that no curve is hidden)."""
    from matplotlib.transforms import ScaledTranslation

    entries = [e for e, _ in items]
    key = check_one_table(entries)
    adv = [_get(e, "not_applicable", "adv_insertion") is None for e in entries]
    # each axis's legend goes under it (inside, it hid the curves that rise to 100%): up to
    # INSERTION_LEGEND_COLUMNS entries a line, the figure taller by its lines
    ncol = min(len(items), INSERTION_LEGEND_COLUMNS)
    legend_lines = math.ceil(len(items) / ncol)
    fig = new_figure(11.0 if any(adv) else 5.8, 4.2 + 0.5 + 0.2 * legend_lines)
    axes = fig.subplots(1, 2 if any(adv) else 1, squeeze=False)[0]
    panels = [("insertion", "Insertion", axes[0])]
    if any(adv):
        panels.append(("adv_insertion", "Adv-Insertion (order of the frame-attacked map)",
                       axes[1]))
    for (entry, ex), label, color, has_adv in zip(items, labels(entries),
                                                  line_colors(len(items)), adv):
        for stage, _, ax in panels:
            if stage == "adv_insertion" and not has_adv:
                continue
            ratios, mean = insertion_curve_mean(ex, stage, entry)
            ax.plot(100 * ratios, mean, marker="o", markersize=3, color=color,
                    label=f"{label} ({mean.mean():.1f})")
    for stage, name, ax in panels:
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("pixels put back, top of the map first (%)")
        ax.set_ylabel("probability of the true label (%)")
        ax.grid(True, alpha=0.3)
        # anchored to the axis's bottom edge, a fixed distance lower: under the tick labels
        # and the axis label whatever the axis's height
        below = ax.transAxes + ScaledTranslation(0.0, -INSERTION_LEGEND_DROP,
                                                 fig.dpi_scale_trans)
        ax.legend(fontsize="small", title="defense (score)", title_fontsize="small",
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                  ncol=ncol, frameon=False, columnspacing=1.2, handlelength=1.6)
    fig.suptitle(f"Insertion curves (PROTOCOL 5.4): {figure_title(key)}", fontsize="medium")
    fig.tight_layout()
    return fig


def insertion_figure(items: Sequence[Item]) -> bytes:
    """PNG of the Insertion and Adv-Insertion curves of PROTOCOL 5.4: the mean over the
    subset of the true label's probability (%) against the share of pixels put back, one
    curve per entry of ``items`` ((entry, examples) pairs of one table), from the per-example
    keys ``insertion/curve`` and ``adv_insertion/curve`` (R, N); each legend gives the curve's
    mean over the ratios, the entry's score. Entries where Adv-Insertion did not run (an
    evaluation-only explainer) have no Adv-Insertion curve."""
    return figure_png(draw_insertion(items))


def plot_landscape(
    curves: Mapping[str, Curve],
    path: str | os.PathLike[str],
    title: str,
    ylabel: str,
    xlabel: str = "gamma (pixel units)",
    logy: bool = False,
) -> None:
    """Write a PNG with one line per label: ``curves[label] = (gammas, values)``.

    Typical use: labels are defenses, values the mean ``L_e`` (SEP paper eq. 5, Fig. 4) or
    mean cross-entropy (Fig. 1b) at each gamma. ``logy`` puts the y axis on a log scale.
    The file is written atomically (temporary file, then rename).
    """
    fig = new_figure(5.5, 4.0)
    fig.set_dpi(120)
    ax = fig.add_subplot(1, 1, 1)
    for label, (gammas, values) in curves.items():
        ax.plot([float(g) for g in gammas], [float(v) for v in values], marker="o",
                markersize=3, label=str(label))
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write_bytes(path, figure_png(fig))
    log.info("wrote landscape plot %s (%d curves)", path, len(curves))
