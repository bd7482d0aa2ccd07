"""The protocol's stages (PROTOCOL.md section 5), each declared once, in the order they run
(:data:`STAGES`); :mod:`xrbench.engine.stage` says what a stage is.

Adding a metric: write the metric function (``metrics/<name>.py``), declare its stage here
(or beside its kind in one of the modules of this package, imported here) and add it to
:data:`STAGES`, and describe its entry keys in ``leaderboard/schema.json``
(docs/adding-a-metric.md walks through an example).

The stages themselves live in one module per kind, none importing another:
:mod:`xrbench.stages.accuracy_rps_insertion` (5.1, 5.3, 5.4),
:mod:`xrbench.stages.retrieval_landscape` (5.5, 5.6) and :mod:`xrbench.stages.manipulation`
(5.2 and the gallery), and :mod:`xrbench.stages.ensemble` (5.8, above the manipulation,
whose result it reads); every name they define is importable from here as before.
"""

from __future__ import annotations

import dataclasses  # noqa: F401  (the names this module had before the split)
import logging
import math  # noqa: F401
from typing import Any, ClassVar  # noqa: F401

import torch  # noqa: F401

from ..columns import MIDDLE, TABLE_EPS, WILDCARD, Column  # noqa: F401
from ..engine.runtime import (ProtocolCall, RunContext, require_differentiable,  # noqa: F401
                      stage_seed)
from ..engine.stage import Example, Row, Stage, Summary, eps_key, metric_tree  # noqa: F401
from .accuracy_rps_insertion import (RPS, Accuracy, AdvInsertion,  # noqa: F401
                                            Insertion, insertion_output, merge_insertion)
from .manipulation import (GALLERY_PAIRS, Gallery, Manipulation,  # noqa: F401
                                  _ChunkCache, gallery_pairs, legacy_loss_fall, pair_index)
from .ensemble import SENSITIVE_DROP, Ensemble, attack_sensitive  # noqa: F401
from .retrieval_landscape import (RETRIEVAL_KINDS, RETRIEVAL_MEANINGS,  # noqa: F401
                                         Landscape, Retrieval)

log = logging.getLogger(__name__)

__all__ = ["STAGES", "Row", "Stage", "Summary", "eps_key", "ProtocolCall", "RunContext"]


#: every stage, in the order it runs (the long pair attack last but for the gallery's few
#: pairs, so that every other number is cached early)
STAGES: tuple[Stage, ...] = (Accuracy(), RPS(), Insertion(), AdvInsertion(), Retrieval(),
                             Landscape(), Manipulation(), Ensemble(), Gallery())


def all_columns() -> tuple[Column, ...]:
    """Every column the protocol's stages declare (:attr:`Stage.columns`), in stage order:
    the one list every report iterates (:mod:`xrbench.columns`)."""
    return tuple(c for s in STAGES for c in s.columns)
