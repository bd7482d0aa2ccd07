"""Paired comparison of two entries scored on the same subset (``xrbench compare A B``).

Two entries of one (dataset, profile, protocol version, subset manifest) were scored on the
same images and the same ordered pairs, in the same order. So every metric can be compared
example by example: the difference ``B - A`` of each metric comes with a **paired** bootstrap
interval. It resamples the shared examples (images, or victims with all their pairs for pair
metrics, as PROTOCOL 5.7 does for each entry) and recomputes ``mean(B) - mean(A)`` on the same
resample. Because the resampling is shared, noise common to both entries cancels out, and the
interval is much narrower than the two entries' own intervals put side by side. The values
come from the entries' per-example files; what each metric averages is declared once by its
stage (:meth:`xrbench.engine.stage.Stage.examples`).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .columns import get_field
from .errors import XRBenchError
from .identity import SAME_EXAMPLES, first_difference

#: entry fields that must agree for two entries to be compared example by example: the same
#: examples (protocol, subset manifest), and the same dataset, profile and seed
SAME = (("dataset", "name"), *SAME_EXAMPLES[:1], ("protocol", "profile"), *SAME_EXAMPLES[1:],
        ("seed",))


@dataclass(frozen=True)
class Difference:
    """One metric of a comparison: A's and B's values (in the entry's units), ``B - A``, its
    paired 95% bootstrap interval, and how many examples (and resampling units) it rests on."""

    metric: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    n: int
    units: int

    @property
    def zero_inside(self) -> bool:
        return self.lo <= 0.0 <= self.hi


def check_comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Raise :class:`XRBenchError` unless the two entries share dataset, protocol version,
    profile, subset manifest and seed (so their examples line up one to one)."""
    diff = first_difference(a, b, SAME)
    if diff is not None:
        raise XRBenchError(f"not comparable: {diff[0]} is {diff[1]!r} in A and {diff[2]!r} in "
                           "B; compare entries scored on the same subset, profile, "
                           "protocol version and seed")


def stage_outputs(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per-example file arrays back into each stage's output: ``"rps/cosine/8/255"`` ->
    ``out["rps"]["cosine"]["8/255"]`` (at most two levels under a stage; the last may hold
    ``/``, as eps labels do). See :mod:`xrbench.leaderboard.examples`."""
    out: dict[str, dict[str, Any]] = {}
    for key, arr in arrays.items():
        parts = key.split("/", 2)
        node = out.setdefault(parts[0], {})
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = torch.from_numpy(np.asarray(arr))
    return out


def check_consistent(path: str | Path, entry: dict[str, Any], key: tuple[str, ...],
                     ex: Any) -> None:
    """The entry's JSON value of metric ``key`` must be the mean of its own per-example
    values (times their scale): an entry edited by hand, or an examples file that is not its
    own, is an :class:`XRBenchError` naming the metric and both numbers, never a comparison
    of numbers that do not belong together."""
    node: Any = entry.get("metrics")
    for part in key:
        node = node.get(part) if isinstance(node, dict) else None
    value = node.get("value") if isinstance(node, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    mean = float(ex.values.double().mean()) * ex.scale if ex.values.numel() else None
    if mean is None or not math.isfinite(mean):
        return
    if abs(mean - value) > 1e-6 * max(abs(mean), abs(value)) + 1e-12:
        raise XRBenchError(f"{path}: metric {'/'.join(key)} is {value:.6g} in the entry but "
                           f"{mean:.6g} in its per-example file: the entry was edited or the "
                           "file is not its own; re-score it (evaluate --replace)")


def paired_difference(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None,
                      n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """``mean(b) - mean(a)`` and its percentile bootstrap 95% interval, resampling examples
    (or whole ``groups``, e.g. victims) with replacement, the same draw for a and b. Returns
    (difference, lo, hi, number of resampling units)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise XRBenchError(f"the per-example values do not line up ({a.shape} vs {b.shape})")
    rng = np.random.default_rng(seed)
    d = b - a
    if groups is None:
        idx = rng.integers(0, d.size, size=(n_resamples, d.size))
        boot = d[idx].mean(axis=1)
        units = d.size
    else:  # a cluster bootstrap: sums and counts per group, groups drawn with replacement
        ids, inv = np.unique(np.asarray(groups), return_inverse=True)
        sums, counts = np.bincount(inv, weights=d), np.bincount(inv)
        pick = rng.integers(0, ids.size, size=(n_resamples, ids.size))
        boot = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
        units = ids.size
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi), int(units)


def compare(path_a: str | Path, path_b: str | Path, n_resamples: int = 1000,
            seed: int = 0) -> list[Difference]:
    """Every metric both entries hold, compared pair by pair (see the module docstring)."""
    from .leaderboard.examples import read_examples
    from .leaderboard.schema import read_entry
    from .stages import STAGES

    a, b = read_entry(path_a), read_entry(path_b)
    check_comparable(a, b)
    out_a = stage_outputs(read_examples(path_a, a))
    out_b = stage_outputs(read_examples(path_b, b))
    grey = get_field(a, "dataset", "channels") == 1  # as DatasetCard.grey
    rows: list[Difference] = []
    for stage in sorted(STAGES, key=lambda s: s.summary_rank):  # the summary's order
        if stage.name not in out_a or stage.name not in out_b:
            continue
        ex_a = stage.examples(out_a[stage.name], grey)
        ex_b = stage.examples(out_b[stage.name], grey)
        for key in [k for k in ex_a if k in ex_b]:
            ea, eb = ex_a[key], ex_b[key]
            for name, entry, ex in ((path_a, a, ea), (path_b, b, eb)):
                check_consistent(name, entry, key, ex)
            groups = None if ea.groups is None else ea.groups.numpy()
            diff, lo, hi, units = paired_difference(ea.values.numpy() * ea.scale,
                                                    eb.values.numpy() * eb.scale, groups,
                                                    n_resamples, seed)
            rows.append(Difference("/".join(key), float(ea.values.double().mean()) * ea.scale,
                                   float(eb.values.double().mean()) * eb.scale, diff, lo, hi,
                                   int(ea.values.numel()), units))
    return rows
