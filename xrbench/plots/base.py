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
