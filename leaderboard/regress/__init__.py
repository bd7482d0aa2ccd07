"""The regression guard of metric values: ``xrbench regress BASELINE CURRENT``.

A number in an entry can move for two different reasons, and the guard tells them apart by
its ``mode``:

- **scoring** (the default): the same checkpoint scored by changed metric or attack code.
  Scoring is deterministic on the CPU (seeded generators, PROTOCOL 5.7), so the band is tight:
  ``|current - baseline| <= max(atol, rtol * |baseline|)``, ``rtol`` 1e-4 (float32 rounding
  between torch versions and BLAS builds) unless ``--rtol``/``--metric`` say otherwise. Any
  move beyond it fails, *in either direction*: with the same weights a number cannot
  legitimately get better, and a weaker attack looks like a more robust model (PGD accuracy
  "improves" when the attack's eps is 0). Both entries must name the same checkpoint sha256;
  besides each metric's value, its interval, median and count must agree, and so must every
  per-example value in the two entries' per-example files (a metric whose mean survives
  while its examples moved is reported).
- **training**: a retrained checkpoint (changed recipe or trainer, another torch version).
  Training is not bit-reproducible across torch versions (the same ``mat`` recipe and seed
  gave 91.85 % clean accuracy under torch 2.15.0 and 89.07 % under 2.14.1), so the band comes
  from the data: on each side of the baseline value, the larger of

  1. the distance to that end of the baseline's own 95 % bootstrap interval (the evaluation
     noise over the subset's images, PROTOCOL 5.7);
  2. ``k`` (default 3) times the standard deviation of the metric over the baseline seeds of
     the same (dataset, model, explainer, profile, defense) (the training noise; extra seeds
     live in a ``spread/`` folder of the baseline, entries only);
  3. one example's worth for a metric that counts examples (a 0/1 value per image or pair:
     ``scale / n``, e.g. 0.5 points of accuracy on 200 images), so that a single image
     flipping is never a regression;
  4. ``atol`` and ``rtol * |baseline|``.

  A metric that moves beyond its band in its worse direction (each stage's
  :meth:`~xrbench.engine.stage.Stage.rows` declares which direction is better) is ``regressed`` and
  fails; in its better direction it is ``improved`` and is reported, failing only with
  ``fail_on_improvement``; a metric with no better direction (Expl@start, the landscape) is
  ``changed`` and fails. A metric with neither an interval nor a seed spread has no band from
  the data: it is reported as ``no band`` and does not fail (give it one with ``--metric``).

Entries are matched by (dataset, model, explainer, profile, defense, seed). A baseline entry
with no current counterpart (``missing``) and a current entry with no baseline (``extra``)
fail; so do two entries of different protocol versions or subset manifests (``not
comparable``: their numbers are never compared). A metric only in the baseline (``missing``)
fails: a guarded number disappeared. A metric only in the current entry (``new``, e.g. a new
stage) is reported and passes; ``--update`` adds it to the baseline.

Everything here is a pure function of entry dicts and their per-example arrays except the
loaders (:func:`load_side`) and :func:`update_baselines`, which writes a baseline folder.
"""

from __future__ import annotations

from xrbench.identity import entry_key, key_text  # the key entries are matched by

from .bands import (ARRAY_ATOL_FLOOR, DEFAULT_ATOL, DEFAULT_K, DEFAULT_RTOL, MODES,
                            Settings, Tolerance, array_band, array_moved,
                            parse_metric_tolerances, scoring_band, training_band)
from .entry import (EntryCheck, Key, Report, check_entry, comparable, entry_notes,
                            regress)
from .files import (SPREAD_FOLDER, checkpoint_beside, copy_checkpoint, entry_files,
                            load_side, update_baselines)
from .metric import VERDICTS, MetricCheck, check_metric, moved_arrays
from .report import render
from .values import (Declared, ExampleValues, Leaf, Side, declarations, example_values,
                             metric_leaves)

__all__ = ["ARRAY_ATOL_FLOOR", "DEFAULT_ATOL", "DEFAULT_K", "DEFAULT_RTOL", "MODES",
           "SPREAD_FOLDER", "VERDICTS", "Declared", "EntryCheck", "ExampleValues",
           "Key", "Leaf", "MetricCheck", "Report", "Settings", "Side", "Tolerance",
           "array_band", "array_moved", "check_entry", "check_metric",
           "checkpoint_beside", "comparable", "copy_checkpoint", "declarations",
           "entry_files", "entry_key", "entry_notes", "example_values", "key_text",
           "load_side", "metric_leaves", "moved_arrays", "parse_metric_tolerances",
           "regress", "render", "scoring_band", "training_band", "update_baselines"]
