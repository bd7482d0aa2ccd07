"""What every figure of :mod:`xrbench.plots` shares: the entries of one table
(:func:`check_one_table`), their legend labels, a figure on an Agg canvas and its PNG bytes,
a per-example array or an error saying how to get it, line colours, and the constants.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import XRBenchError
from ..identity import TABLE_FIELD_NAMES, entry_name, table_key, table_title
from ..leaderboard.fields import get_field as _get

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("xrbench.plots")  # the name it always had

Curve = tuple[Sequence[float], Sequence[float]]
Item = tuple[Mapping[str, Any], Mapping[str, np.ndarray]]

EXPL_SCALE = 1e7  # L_e is printed in units of 1e-7 (PROTOCOL 0, the SEP paper's Table 2)
#: the landscape's L_e axis turns logarithmic when its values span more than this factor
LOG_RATIO = 10.0

RERUN = ("move the entry (and its .examples.npz) aside, or pass another --out, and re-run "
         "`xrbench evaluate` with the same arguments: only the stages added since compute, "
         "the others come from the cache")


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


def figure_title(key: tuple[Any, ...]) -> str:
    """The title of the table ``key`` names, as the leaderboard prints it."""
    return table_title(key)  # type: ignore[arg-type]


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure at 100 dpi on an Agg canvas (no pyplot state)."""
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


def example_array(examples: Mapping[str, np.ndarray], key: str, entry: Mapping[str, Any],
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


def line_colors(n: int) -> list[Any]:
    """``n`` line colours: tab10 up to ten lines, tab20 beyond (cycling)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


#: point labels (:func:`place_labels`): offset of a label's corner from its point, across
#: and up (points), and the gap between two labels stacked one above the other
LABEL_OFFSET = (7.0, 4.0)
LABEL_GAP = 1.5
SPILL = 3.0  # pixels a label may reach past the axis's left or right edge


def place_labels(ax: Any, points: Sequence[tuple[float, float]], texts: Sequence[str],
                 colors: Sequence[Any] | None = None,
                 marker: float | Sequence[float] = 4.0) -> list[Any]:
    """Label each point of ``ax`` (data coordinates) without two labels overlapping, and
    return the annotations (in the order of ``points``). Call it once the figure's layout is
    final (after ``tight_layout``): the placement works in pixels.

    Deterministic: labels are placed from the lowest point up, each above and right of its
    point; a label that would overlap one already placed, or another point's marker
    (``marker``: its half-size in points, one for all or one per point), is pushed up past
    it, so points that sit together (several defenses at PGD accuracy 0) get a column of
    labels in the order of their points. Where that label would leave the axis, it goes
    left of the point, else below it (pushed down), else left and below; where all four
    leave the axis, the one that leaves it least. A label pushed away from its point gets a
    thin line to it, in the point's colour (``colors``)."""
    if not points:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0  # pixels per point
    dx0, dy0 = LABEL_OFFSET[0] * px, LABEL_OFFSET[1] * px
    gap = LABEL_GAP * px
    halves = ([float(marker)] * len(points) if isinstance(marker, (int, float))
              else [float(m) for m in marker])
    xy = ax.transData.transform(np.asarray(points, dtype=float))
    frame = ax.get_window_extent(renderer)
    sizes = []
    for text in texts:  # each label's size in pixels
        probe = ax.annotate(text, points[0], fontsize="small")
        ext = probe.get_window_extent(renderer)
        sizes.append((ext.width, ext.height))
        probe.remove()
    Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    marks = [(x - m * px, y - m * px, x + m * px, y + m * px) for (x, y), m in zip(xy, halves)]

    def overlaps(a: Box, b: Box) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    def push(x0: float, y0: float, w: float, h: float, up: bool, others: list[Box]) -> Box:
        for _ in range(len(others) + 1):  # each push clears the boxes it hit
            hit = [b for b in others if overlaps((x0, y0, x0 + w, y0 + h), b)]
            if not hit:
                break
            y0 = max(b[3] for b in hit) + gap if up else min(b[1] for b in hit) - gap - h
        return (x0, y0, x0 + w, y0 + h)

    def spill(b: Box) -> float:  # how far a box leaves the axis (pixels; SPILL sideways free)
        return max(0.0, frame.x0 - b[0] - SPILL, b[2] - frame.x1 - SPILL, frame.y0 - b[1],
                   b[3] - frame.y1)

    boxes: dict[int, Box] = {}
    moved: dict[int, bool] = {}  # pushed away from its place beside the point
    for i in sorted(range(len(xy)), key=lambda i: (xy[i][1], xy[i][0])):
        (x, y), (w, h) = xy[i], sizes[i]
        dx_i = max(dx0, halves[i] * px + gap)  # clear of its own marker
        others = list(boxes.values()) + [m for j, m in enumerate(marks) if j != i]
        best: tuple[float, Box, bool] | None = None
        # the first place whose label stays in the axis, else the one that leaves it least;
        # never below a point for a shorter push, which would put a label next to the point
        # under it
        for right, up in ((True, True), (False, True), (True, False), (False, False)):
            start = (x + dx_i if right else x - dx_i - w, y + dy0 if up else y - dy0 - h)
            box = push(*start, w, h, up, others)
            if best is None or spill(box) < best[0]:
                best = (spill(box), box, abs(box[1] - start[1]) > px)
            if best[0] == 0.0:
                break
        assert best is not None
        boxes[i], moved[i] = best[1], best[2]
    out = []
    for i, (x, y) in enumerate(xy):
        box = boxes[i]
        dx, dy = (box[0] - x) / px, (box[1] - y) / px  # the label's lower left, in points
        # the line leaves the label's corner nearest its point (from the label's middle it
        # would cross the labels stacked between)
        corner = (0.0 if dx >= 0 else 1.0, 0.0 if dy >= 0 else 1.0)
        color = "0.4" if colors is None else colors[i]
        arrow = (dict(arrowstyle="-", lw=0.8, shrinkA=0.0, shrinkB=halves[i],
                      color=color, relpos=corner) if moved[i] else None)
        out.append(ax.annotate(texts[i], points[i], textcoords="offset points",
                               xytext=(dx, dy), ha="left", va="bottom", fontsize="small",
                               arrowprops=arrow, annotation_clip=False))
    return out
