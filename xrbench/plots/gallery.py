"""The saliency gallery of :mod:`xrbench.plots` (PROTOCOL 5.2): for a few pairs per entry, the
victim, target and manipulated images with their sum-normalised maps (:func:`gallery_figure`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import XRBenchError
from .base import (EXPL_SCALE, Item, check_one_table, example_array, figure_png,
                         figure_title, labels, new_figure)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
        arrays = {name: example_array(ex, f"gallery/{name}", entry, "saliency gallery",
                                      "gallery", "manipulation")
                  for name in ("pairs", "x_victim", "x_target", "x_adv", "map_victim",
                               "map_target", "map_adv", "expl_start", "expl_end")}
        for p in range(min(pairs, len(arrays["pairs"]))):
            rows.append((label, {k: v[p] for k, v in arrays.items()}))
    # fixed margins in inches (tight_layout costs seconds with a hundred axes)
    width, height = 2.0 * len(GALLERY_COLUMNS), 0.6 + 2.05 * len(rows)
    fig = new_figure(width, height)
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
    fig.suptitle(f"Targeted manipulation (PROTOCOL 5.2): {figure_title(key)}", fontsize="medium",
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
