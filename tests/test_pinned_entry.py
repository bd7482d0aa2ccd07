"""A fixed checkpoint scored with the smoke profile: every metric of its entry is pinned.

This guards the scoring code (stages, metrics, attacks, summaries) against silent changes:
refactors must leave these numbers alone; a deliberate change bumps the stage's version and
refreshes the pinned file in the same commit (``XRBENCH_UPDATE_PINNED=1 python -m pytest
tests/test_pinned_entry.py``), so the diff shows what moved.

The checkpoint (the ``fixed_checkpoint`` fixture in conftest.py) is made without torch's
training loop, whose results differ between torch versions: it is the same checkpoint, to
float32 rounding, under every torch version, and a real classifier (97% clean accuracy).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from xrbench import api

PINNED = Path(__file__).parent / "data" / "pinned-smoke-metrics.json"
RTOL = 1e-4  # the scoring band of the regression guard (float32 rounding across versions)


def _numbers(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested metric objects to ``{"expl_end.value": 1.2e-4, ...}``."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_numbers(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list):
        out = {}
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def test_fixed_checkpoint_scores_the_pinned_metrics(fixed_checkpoint, tmp_path):
    res = api.evaluate("normal", profile="smoke", checkpoint=str(fixed_checkpoint),
                       out=tmp_path / "out",
                       progress=False, cache_root=tmp_path / "cache", device="cpu")
    got = {"metrics": res.entry["metrics"], "flags": res.entry["flags"]}
    assert 80 <= got["metrics"]["clean_acc"]["value"] <= 100  # a real classifier
    if os.environ.get("XRBENCH_UPDATE_PINNED"):
        PINNED.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"rewrote {PINNED}")
    want = json.loads(PINNED.read_text())
    assert got["flags"] == want["flags"]
    g, w = _numbers(got["metrics"]), _numbers(want["metrics"])
    assert set(g) == set(w), f"metric keys changed: {sorted(set(g) ^ set(w))}"
    moved = {k: (w[k], g[k]) for k in w
             if not (g[k] == w[k] or (isinstance(w[k], float) and isinstance(g[k], float)
                                      and math.isclose(g[k], w[k], rel_tol=RTOL, abs_tol=1e-12)))}
    assert not moved, f"pinned metrics moved (pinned, now): {moved}"
