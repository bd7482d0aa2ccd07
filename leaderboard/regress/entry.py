"""The comparison of entries in the regression guard (:mod:`xrbench.leaderboard.regress`):
whether two entries may be compared (:func:`comparable`), one matched pair judged metric by
metric (:func:`check_entry`), and every entry of two sides matched and judged
(:func:`regress`, giving a :class:`Report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from xrbench.errors import XRBenchError
from xrbench.identity import SAME_EXAMPLES, EntryKey, entry_key, first_difference, key_text

from .bands import Settings
from .metric import VERDICTS, MetricCheck, check_metric, moved_arrays
from .values import Side, declarations, example_values, metric_leaves

Key = EntryKey


@dataclass
class EntryCheck:
    """The outcome for one entry: ``status`` is ``compared``, ``missing`` (only in the
    baseline), ``extra`` (only in the current results) or ``not comparable``; ``notes``
    say what else differs (recipe, torch, parameters); ``metrics`` are the rows."""

    key: Key
    status: str
    baseline_path: Path | None = None
    current_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    metrics: list[MetricCheck] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status != "compared" or any(m.failed for m in self.metrics)


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1]]


def comparable(base: Mapping[str, Any], cur: Mapping[str, Any], mode: str,
               across_versions: bool = False) -> str | None:
    """None when the two entries may be compared in ``mode``; else why not (one sentence).
    ``across_versions``: a different protocol version does not stop the comparison (the
    subset must still be the same)."""
    from xrbench.columns import get_field

    same = [f for f in SAME_EXAMPLES if not (across_versions and f == ("protocol", "version"))]
    diff = first_difference(base, cur, tuple(same))
    if diff is not None:
        what = {"protocol.version": "protocol version",
                "subset.manifest_sha256": "subset manifest"}[diff[0]]
        return (f"{what} differs ({diff[1]!s:.16} in the baseline, {diff[2]!s:.16} now): their "
                "numbers are not comparable; refresh the baseline (--update) in a reviewed "
                "commit" + ("" if what != "protocol version" else
                            ", or see what the new version moved with --across-versions"))
    if mode == "scoring":
        a, b = get_field(base, "checkpoint", "sha256"), get_field(cur, "checkpoint", "sha256")
        if a != b:
            return (f"scoring mode needs the same checkpoint (sha256 {str(a)[:12]}... in the "
                    f"baseline, {str(b)[:12]}... now): score the baseline's checkpoint "
                    "(evaluate --checkpoint), or compare a retrained one with --mode training")
    return None


def entry_notes(base: Mapping[str, Any], cur: Mapping[str, Any], mode: str) -> list[str]:
    """What differs between the two entries besides their numbers, for the reader."""
    from xrbench.leaderboard.render import get_field

    notes = []
    if mode == "training":
        same = get_field(base, "checkpoint", "sha256") == get_field(cur, "checkpoint", "sha256")
        notes.append("same checkpoint as the baseline (scoring mode is the tighter check)"
                     if same else "retrained checkpoint (sha256 differs)")
        if get_field(base, "defense", "recipe_hash") != get_field(cur, "defense", "recipe_hash"):
            fields = _diff_paths(get_field(base, "defense", "recipe") or {},
                                 get_field(cur, "defense", "recipe") or {})
            notes.append("recipe differs: " + (", ".join(fields) or "its hash"))
    a, b = get_field(base, "environment", "torch"), get_field(cur, "environment", "torch")
    if a != b:
        notes.append(f"torch {a} in the baseline, {b} now")
    a, b = get_field(base, "protocol", "version"), get_field(cur, "protocol", "version")
    if a != b:
        notes.append(f"protocol version {a} in the baseline, {b} now (--across-versions): "
                     "a move is what the new version changed, or a regression")
    pa = get_field(base, "protocol", "parameters") or {}
    pb = get_field(cur, "protocol", "parameters") or {}
    # a stage only one side ran (new in this xrbench, or not applicable) is not a parameter
    # difference: its metrics are reported as new or missing
    both = set(pa) & set(pb) if isinstance(pa, Mapping) and isinstance(pb, Mapping) else set()
    params = _diff_paths({k: pa[k] for k in both}, {k: pb[k] for k in both})
    if params:
        shown = ", ".join(params[:6]) + (f" and {len(params) - 6} more" if len(params) > 6 else "")
        notes.append(f"protocol parameters differ: {shown}")
    return notes


def check_entry(base: Side, cur: Side, settings: Settings,
                spread: Sequence[Mapping[str, Any]] = ()) -> EntryCheck:
    """Compare one matched pair of entries; ``spread``: the baseline's entries of the same
    key but other seeds (their values feed the training band), the baseline itself included
    or not (it is added)."""
    key = entry_key(base.entry)
    why = comparable(base.entry, cur.entry, settings.mode, settings.across_versions)
    if why is not None:
        return EntryCheck(key, "not comparable", base.path, cur.path, [why])
    result = EntryCheck(key, "compared", base.path, cur.path,
                        entry_notes(base.entry, cur.entry, settings.mode))
    bl, cl = metric_leaves(base.entry.get("metrics") or {}), metric_leaves(
        cur.entry.get("metrics") or {})
    decl = declarations(base.entry)
    bex, cex = example_values(base.entry, base.arrays), example_values(cur.entry, cur.arrays)
    if base.arrays is None or cur.arrays is None:
        result.notes.append("no per-example file on "
                            + ("either side" if base.arrays is None and cur.arrays is None else
                               "the baseline side" if base.arrays is None else "the current side")
                            + ": per-example values not checked")
    others = [metric_leaves(e.get("metrics") or {}) for e in spread
              if e is not base.entry and int(e["seed"]) != key[5]]
    for name, leaf in bl.items():
        if name not in cl:
            result.metrics.append(MetricCheck(name, name, "", leaf.value, None, None, None, "",
                                              "missing", True, "in the baseline only"))
            continue
        values = [leaf.value] + [o[name].value for o in others if name in o]
        result.metrics.append(check_metric(
            name, leaf, cl[name], settings,
            declared=decl.get(name),
            spread=[v for v in values if v is not None] if len(values) > 1 else (),
            base_ex=bex.get(name), cur_ex=cex.get(name)))
    for name, leaf in cl.items():
        if name not in bl:
            result.metrics.append(MetricCheck(name, name, "", None, leaf.value, None, None, "",
                                              "new", False, "not in the baseline yet"))
    if settings.mode == "scoring" and base.arrays is not None and cur.arrays is not None:
        failing = {bex[m.metric].stage for m in result.metrics if m.failed and m.metric in bex}
        result.metrics += moved_arrays(base.arrays, cur.arrays, settings, skip=failing)
    return result


@dataclass
class Report:
    """Every entry's outcome and the settings that judged them."""

    settings: Settings
    entries: list[EntryCheck]

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.entries)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICTS}
        for e in self.entries:
            for m in e.metrics:
                out[m.verdict] += 1
        return out

    def failures(self) -> list[str]:
        """One short line per failure: ``mat-s0: pgd_acc improved``."""
        out = []
        for e in self.entries:
            name = f"{e.key[4]}-s{e.key[5]}"
            if e.status != "compared":
                out.append(f"{name}: {e.status}")
            out += [f"{name}: {m.metric} {m.verdict}" for m in e.metrics if m.failed]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--format json``)."""
        s = asdict(self.settings)
        s["metric_tolerances"] = {p: str(t) for p, t in self.settings.metric_tolerances}
        return {"mode": self.settings.mode, "passed": not self.failed, "settings": s,
                "counts": self.counts(), "failures": self.failures(),
                "entries": [{"entry": key_text(e.key), "status": e.status,
                             "failed": e.failed,
                             "baseline": None if e.baseline_path is None else str(e.baseline_path),
                             "current": None if e.current_path is None else str(e.current_path),
                             "notes": e.notes, "metrics": [asdict(m) for m in e.metrics]}
                            for e in self.entries]}


def regress(baseline: Sequence[Side], current: Sequence[Side], settings: Settings,
            spread: Sequence[Side] = ()) -> Report:
    """Match ``current`` entries to ``baseline`` entries by :func:`entry_key` and judge each
    pair; ``spread``: extra baseline seeds (entries only) for the training band."""
    def index(sides: Sequence[Side], what: str) -> dict[Key, Side]:
        out: dict[Key, Side] = {}
        for s in sides:
            k = entry_key(s.entry)
            if k in out:
                raise XRBenchError(f"two {what} entries for {key_text(k)}: {out[k].path} and "
                                   f"{s.path}; keep one")
            out[k] = s
        return out

    base, cur = index(baseline, "baseline"), index(current, "current")
    seeds: dict[Key, list[dict[str, Any]]] = {}
    for s in [*baseline, *spread]:
        k = entry_key(s.entry)
        seeds.setdefault(k[:5] + (-1,), []).append(s.entry)
    entries = []
    for k in sorted(set(base) | set(cur), key=lambda k: tuple(map(str, k))):
        if k not in cur:
            entries.append(EntryCheck(k, "missing", base[k].path, None,
                                      ["in the baseline, not in the current results"]))
        elif k not in base:
            entries.append(EntryCheck(k, "extra", None, cur[k].path,
                                      ["in the current results, not in the baseline (add it "
                                       "with --update in a reviewed commit)"]))
        else:
            entries.append(check_entry(base[k], cur[k], settings, seeds.get(k[:5] + (-1,), [])))
    return Report(settings, entries)
