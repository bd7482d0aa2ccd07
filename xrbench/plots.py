"""Plots (PROTOCOL.md section 5.6): loss-landscape curves, one per defense, as PNG files.

Drawn with matplotlib's object API on an Agg canvas (no display, no pyplot global state) and
written atomically.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Mapping, Sequence

from .utils import atomic_write_bytes

log = logging.getLogger(__name__)

Curve = tuple[Sequence[float], Sequence[float]]


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    FigureCanvasAgg(fig)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    log.info("wrote landscape plot %s (%d curves)", path, len(curves))
