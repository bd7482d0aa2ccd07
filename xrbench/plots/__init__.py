"""Figures of result entries as PNG bytes (``xrbench plot``, and the HTML leaderboard).

Five figures, each of entries of ONE leaderboard table (same dataset, model, explainer,
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
  question), with both intervals and the Spearman correlation;
- :func:`pareto_figure`: PGD accuracy against Expl@end (worst), the rows on the Pareto front
  of clean accuracy, PGD accuracy and Expl@end (worst) marked (PROTOCOL 5.8).

``items`` are ``(entry, examples)`` pairs: the entry dict and its per-example arrays
(:func:`xrbench.leaderboard.examples.read_examples`, flat keys such as ``insertion/curve``).
An entry that lacks what a figure needs is an :class:`~xrbench.errors.XRBenchError` naming
the entry, what it lacks and how to get it. Everything is drawn with matplotlib's object API
on an Agg canvas (no display, no pyplot global state). :func:`plot_landscape` writes a
landscape PNG from plain curves.
"""

from __future__ import annotations

from .base import (EXPL_SCALE, LOG_RATIO, RERUN, Curve, Item, check_one_table, figure_png,
                         labels)
from .curves import (draw_insertion, draw_landscape, insertion_curve_mean,
                           insertion_figure, landscape_figure, plot_landscape)
from .gallery import GALLERY_COLUMNS, draw_gallery, gallery_figure
from .scatter import (draw_pareto, draw_scatter, metric_axis, metric_names, metric_object,
                      pareto_figure, scatter_figure)

__all__ = ["EXPL_SCALE", "GALLERY_COLUMNS", "KINDS", "LOG_RATIO", "RERUN", "Curve",
           "Item", "check_one_table", "draw_gallery", "draw_insertion",
           "draw_landscape", "draw_scatter", "figure_png", "gallery_figure",
           "insertion_curve_mean", "insertion_figure", "labels", "landscape_figure",
           "metric_axis", "metric_names", "metric_object", "plot_landscape",
           "scatter_figure", "draw_pareto", "pareto_figure"]

#: the figure kinds of ``xrbench plot``
KINDS = ("landscape", "gallery", "insertion", "scatter", "pareto")
