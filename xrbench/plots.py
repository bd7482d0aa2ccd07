"""Figures of result entries as PNG bytes (``xrbench plot``, and the HTML leaderboard).

Four figures, each of entries of ONE leaderboard table (same dataset, model, explainer,
profile and protocol version, PROTOCOL 8), one curve, row or point per entry, labelled by
defense (and seed where the entries hold several seeds):

- :func:`landscape_figure`: the loss landscapes of PROTOCOL 5.6, the mean ``L_e`` (the SEP
  paper's figure 4) and the mean cross-entropy along random directions against gamma;
- :func:`insertion_figure`: the Insertion and Adv-Insertion curves of PROTOCOL 5.4, the mean
  probability of the true label against the share of pixels put back (the scores are their
  means over the ratios);
- :func:`gallery_figure`: for a few pairs, the victim, target and manipulated images with
  their sum-normalised maps (PROTOCOL 5.2; the ``gallery`` stage's output);
- :func:`scatter_figure`: an explanation metric against PGD accuracy (PROTOCOL 5.7's
  question), with both intervals and the Spearman correlation.

``items`` are ``(entry, examples)`` pairs: the entry dict and its per-example arrays
(:func:`xrbench.leaderboard.examples.read_examples`, flat keys such as ``insertion/curve``).
An entry that lacks what a figure needs is an :class:`~xrbench.errors.XRBenchError` naming
the entry, what it lacks and how to get it. Everything is drawn with matplotlib's object API
on an Agg canvas (no display, no pyplot global state). :func:`plot_landscape` writes a
landscape PNG from plain curves.
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .errors import XRBenchError
from .identity import TABLE_FIELD_NAMES, entry_name, table_key, table_title
from .utils import atomic_write_bytes
from .leaderboard.fields import get_field as _get

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

Curve = tuple[Sequence[float], Sequence[float]]
Item = tuple[Mapping[str, Any], Mapping[str, np.ndarray]]

#: the figure kinds of ``xrbench plot``
KINDS = ("landscape", "gallery", "insertion", "scatter")

EXPL_SCALE = 1e7  # L_e is printed in units of 1e-7 (PROTOCOL 0, the SEP paper's Table 2)
#: the landscape's L_e axis turns logarithmic when its values span more than this factor
LOG_RATIO = 10.0


RERUN = ("move the entry (and its .examples.npz) aside, or pass another --out, and re-run "
         "`xrbench evaluate` with the same arguments: only the stages added since compute, "
         "the others come from the cache")


# --- helpers --------------------------------------------------------------------------------


def check_one_table(entries: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """The shared table key of ``entries``; an :class:`XRBenchError` when there are none or
    two of them belong to different tables (their numbers are not comparable)."""
    if not entries:
        raise XRBenchError("no entries to plot; pass entry JSON files or folders of them")
    first = table_key(entries[0])
    names = TABLE_FIELD_NAMES
    for e in entries[1:]:
        key = table_key(e)
        if key != first:
            field = next(n for n, a, b in zip(names, first, key) if a != b)
            raise XRBenchError(
                f"entries of different tables in one figure: {entry_name(entries[0])} and "
                f"{entry_name(e)} differ in {field} ({first[names.index(field)]!r} vs "
                f"{key[names.index(field)]!r}); plot the entries of one dataset, model, "
                "explainer, profile and protocol version together")
    return first


def labels(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Legend labels: the defense, with ``" s<seed>"`` when the entries hold several seeds."""
    seeds = {_get(e, "seed") for e in entries}
    return [str(_get(e, "defense", "name")) + (f" s{_get(e, 'seed')}" if len(seeds) > 1 else "")
            for e in entries]


def _title(key: tuple[Any, ...]) -> str:
    return table_title(key)  # type: ignore[arg-type]


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure encoded as PNG bytes (Agg; no timestamp in the metadata, so the same
    figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _array(examples: Mapping[str, np.ndarray], key: str, entry: Mapping[str, Any],
           what: str, *stages: str) -> np.ndarray:
    """``examples[key]``, or an error saying which entry lacks what and how to get it
    (``stages``: the stage that writes ``key`` and those it needs)."""
    if key in examples:
        return np.asarray(examples[key])
    for stage in stages:
        reason = _get(entry, "not_applicable", stage)
        if reason:
            raise XRBenchError(f"entry {entry_name(entry)} has no {what}: the {stage} stage "
                               f"did not run for it ({reason})")
    raise XRBenchError(f"entry {entry_name(entry)} has no {what} (per-example key {key!r}; "
                       f"the entry was made before xrbench recorded it): {RERUN}")


def _line_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --- 5.6 loss landscape ---------------------------------------------------------------------

def draw_landscape(items: Sequence[Item]) -> Figure:
    """The landscape figure (see :func:`landscape_figure`) as a matplotlib Figure with two
    axes: mean ``L_e`` (x1e-7; log scale when the values span more than :data:`LOG_RATIO`)
    and mean cross-entropy against gamma, one line per entry."""
    entries = [e for e, _ in items]
    key = check_one_table(entries)
    fig = _new_figure(12.0, 4.2)
    ax_e, ax_c = fig.subplots(1, 2)
    for (entry, _), label, color in zip(items, labels(entries), _line_colors(len(items))):
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
    fig.suptitle(f"Loss landscape (PROTOCOL 5.6): {_title(key)}", fontsize="medium")
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.5 / fig.get_figwidth(), 1.0))
    return fig


def landscape_figure(items: Sequence[Item]) -> bytes:
    """PNG of the loss landscapes of PROTOCOL 5.6 (the SEP paper's figure 4): the mean
    explanation loss ``L_e(x_v + gamma d, x_t)`` (in 1e-7) and the mean cross-entropy
    against gamma (pixel units), one curve per entry of ``items`` ((entry, examples) pairs of
    one table); values from each entry's ``metrics.landscape``."""
    return figure_png(draw_landscape(items))


# --- 5.4 Insertion and Adv-Insertion ----------------------------------------------------------

def insertion_curve_mean(examples: Mapping[str, np.ndarray], stage: str, entry: Mapping[str, Any]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(ratios (R,), mean curve (R,) in percent) of ``stage`` (``"insertion"`` or
    ``"adv_insertion"``) from an entry's per-example ``<stage>/curve`` (R, N) and
    ``<stage>/ratios`` (R,); its mean over the ratios is the entry's score."""
    what = {"insertion": "Insertion curves",
            "adv_insertion": "Adv-Insertion curves"}.get(stage, f"{stage} curves")
    curve = _array(examples, f"{stage}/curve", entry, what, stage)
    ratios = _array(examples, f"{stage}/ratios", entry, what, stage)
    return ratios.astype(float), 100.0 * curve.astype(np.float64).mean(axis=1)


def draw_insertion(items: Sequence[Item]) -> Figure:
    """The insertion figure (see :func:`insertion_figure`) as a matplotlib Figure: one axis
    for Insertion and, when any entry ran it, one for Adv-Insertion."""
    entries = [e for e, _ in items]
    key = check_one_table(entries)
    adv = [_get(e, "not_applicable", "adv_insertion") is None for e in entries]
    fig = _new_figure(11.0 if any(adv) else 5.8, 4.2)
    axes = fig.subplots(1, 2 if any(adv) else 1, squeeze=False)[0]
    panels = [("insertion", "Insertion", axes[0])]
    if any(adv):
        panels.append(("adv_insertion", "Adv-Insertion (order of the frame-attacked map)",
                       axes[1]))
    for (entry, ex), label, color, has_adv in zip(items, labels(entries),
                                                  _line_colors(len(items)), adv):
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
        ax.legend(fontsize="small", title="defense (score)", title_fontsize="small")
    fig.suptitle(f"Insertion curves (PROTOCOL 5.4): {_title(key)}", fontsize="medium")
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


# --- 5.2 saliency gallery -------------------------------------------------------------------

GALLERY_COLUMNS = ("victim x_v", "map of x_v", "target x_t", "map of x_t (target)",
                   "manipulated x_adv", "map of x_adv")


def _show_image(ax: Axes, img: np.ndarray) -> None:
    """(C, H, W) pixels in [0, 1] -> grey or RGB image without axes."""
    img = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.transpose(img[:3], (1, 2, 0)), interpolation="nearest")


def draw_gallery(items: Sequence[Item], pairs: int = 3) -> Figure:
    """The gallery figure (see :func:`gallery_figure`) as a matplotlib Figure: one row per
    (entry, pair), six columns (:data:`GALLERY_COLUMNS`)."""
    if pairs < 1:
        raise XRBenchError(f"the gallery needs at least one pair per entry (got {pairs})")
    entries = [e for e, _ in items]
    key = check_one_table(entries)
    rows = []
    for (entry, ex), label in zip(items, labels(entries)):
        arrays = {name: _array(ex, f"gallery/{name}", entry, "saliency gallery", "gallery",
                               "manipulation")
                  for name in ("pairs", "x_victim", "x_target", "x_adv", "map_victim",
                               "map_target", "map_adv", "expl_start", "expl_end")}
        for p in range(min(pairs, len(arrays["pairs"]))):
            rows.append((label, {k: v[p] for k, v in arrays.items()}))
    # fixed margins in inches (tight_layout costs seconds with a hundred axes)
    width, height = 2.0 * len(GALLERY_COLUMNS), 0.6 + 2.05 * len(rows)
    fig = _new_figure(width, height)
    axes = fig.subplots(len(rows), len(GALLERY_COLUMNS), squeeze=False)
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.05 / width, top=1 - 0.75 / height,
                        bottom=0.25 / height, wspace=0.08, hspace=0.3)
    for r, (label, row) in enumerate(rows):
        ax = axes[r]
        # one colour scale per row: the three maps as L_e compares them (each sums to 1)
        vmax = float(max(row["map_victim"].max(), row["map_target"].max(),
                         row["map_adv"].max())) or 1.0
        for c, (kind, name) in enumerate((("img", "x_victim"), ("map", "map_victim"),
                                          ("img", "x_target"), ("map", "map_target"),
                                          ("img", "x_adv"), ("map", "map_adv"))):
            if kind == "img":
                _show_image(ax[c], row[name])
            else:
                ax[c].imshow(np.asarray(row[name], dtype=np.float32), cmap="inferno", vmin=0.0,
                             vmax=vmax, interpolation="nearest")
            ax[c].set_xticks([])
            ax[c].set_yticks([])
            if r == 0:
                ax[c].set_title(GALLERY_COLUMNS[c], fontsize="small")
        v, t = (int(i) for i in row["pairs"])
        ax[0].set_ylabel(f"{label}\npair {v} -> {t}", fontsize="small")
        ax[5].set_xlabel(f"L_e {EXPL_SCALE * float(row['expl_start']):.4g} -> "
                         f"{EXPL_SCALE * float(row['expl_end']):.4g} (x1e-7)",
                         fontsize="x-small")
    fig.suptitle(f"Targeted manipulation (PROTOCOL 5.2): {_title(key)}", fontsize="medium",
                 y=1 - 0.2 / height)
    return fig


def gallery_figure(items: Sequence[Item], pairs: int = 3) -> bytes:
    """PNG of the saliency gallery: for the first ``pairs`` pairs of each entry's ``gallery``
    stage (the same pairs for every entry on one manifest), a row with the victim image, its
    map, the target image, its map (the attack's target), the manipulated image and its map
    (PROTOCOL 5.2), maps sum-normalised on one colour scale per row; under the last map, the
    pair's ``L_e`` before and after the attack (x1e-7). ``items`` are (entry, examples) pairs
    of one table; an entry keeps at most ``xrbench.stages.GALLERY_PAIRS`` pairs."""
    return figure_png(draw_gallery(items, pairs))


# --- 5.7 scatter ----------------------------------------------------------------------------

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
    from .stages import all_columns

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
    from .metrics.stats import rank_correlations

    ylabel, scale = metric_axis(metric)
    fig = _new_figure(6.4, 5.0)
    ax = fig.subplots(1, 1)
    xs, ys = [], []
    for entry, label, color in zip(entries, labels(entries), _line_colors(len(entries))):
        x, xlo, xhi = _value_ci(metric_object(entry, "pgd_acc"), 1.0)
        y, ylo, yhi = _value_ci(metric_object(entry, metric), scale)
        if not (math.isfinite(x) and math.isfinite(y)):
            reason = _get(entry, "not_applicable")
            log.info("scatter: %s has no %s%s; left out", entry_name(entry), metric,
                     f" (not applicable: {reason})" if reason else "")
            continue
        xs.append(x)
        ys.append(y)
        ax.errorbar([x], [y], xerr=[[xlo], [xhi]], yerr=[[ylo], [yhi]], fmt="o", color=color,
                    capsize=3, markersize=5)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5),
                    fontsize="small")
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
    fig.suptitle(f"{metric} vs PGD accuracy (PROTOCOL 5.7)\n{_title(key)}", fontsize="medium")
    fig.tight_layout()
    return fig


def scatter_figure(entries: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """PNG of one point per entry (of one table): x = PGD accuracy (%), y = ``metric``, a
    metric name of :func:`metric_names` (``expl_end``, ``expl_start``, ``insertion``,
    ``adv_insertion``, ``class_changed``, ``rps/<similarity>/<eps>``,
    ``retrieval/<kind>/<eps>``, ...), L_e in 1e-7 and rates in percent; error bars are the
    entries' 95% bootstrap intervals, the title gives the Spearman correlation with its
    bootstrap interval over the entries (PROTOCOL 5.7). An entry without the metric (not
    applicable for its explainer) is left out."""
    return figure_png(draw_scatter(entries, metric))


# --- plain curves -----------------------------------------------------------------------------

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
    fig = _new_figure(5.5, 4.0)
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
