"""What a leaderboard table says under itself, as plain text (callers escape it): the marks
after defense names and the notes explaining them, the row order, the retrieval column, a
not_converged sentence, n/a stages, non-reference recipes, where reported rows come from,
duplicates (pure functions of a :class:`~xrbench.leaderboard.board.Table`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from xrbench.columns import board_columns, eps_value, middle_key
from xrbench.columns import number as _num
from xrbench.protocol import CONVERGENCE_TOLERANCE  # entries record their own (manipulation_loss)

from .board import Duplicate, Table
from .fields import active_columns, get_field
from .render_cells import (DUPLICATE, MISSING, NO_DEFENSE, NOT_APPLICABLE, NOT_REFERENCE,
                           not_applicable, reference_note)


def _value(entry: Mapping[str, Any], *keys: str) -> float | None:
    return _num(get_field(entry, "metrics", *keys, "value"))


middle_eps = middle_key  # the name the rendering modules use


def _all_not_converged(entries: Sequence[Mapping[str, Any]]) -> bool:
    return bool(entries) and all(get_field(e, "flags", "not_converged") is True
                                 for e in entries)


def _tolerance(entries: Sequence[Mapping[str, Any]]) -> float:
    """The not_converged threshold the entries record (the protocol's 5% when they do not,
    or disagree)."""
    found = {_num(get_field(e, "metrics", "manipulation_loss", "tolerance")) for e in entries}
    return found.pop() if len(found) == 1 and None not in found else CONVERGENCE_TOLERANCE


def _is_eps(key: str) -> bool:
    try:
        eps_value(key)
    except (ValueError, ZeroDivisionError):
        return False
    return True


def _marks(table: Table) -> tuple[dict[int, str], list[str]]:
    """Per row (by index), the marks after its defense name, and the notes explaining them,
    in plain text: the dagger for a non-reference recipe (numbered when the table has
    several different ones), a double dagger and number for a duplicate group, a section
    sign for a reported method that no xrbench defense implements."""
    reasons = [(i, note) for i, r in enumerate(table.rows)
               if (note := reference_note(r.entry)) is not None]
    distinct = list(dict.fromkeys(n for _, n in reasons))
    ref_mark = {n: NOT_REFERENCE if len(distinct) == 1 else f"{NOT_REFERENCE}{k}"
                for k, n in enumerate(distinct, 1)}
    marks: dict[int, list[str]] = {}
    for i, note in reasons:
        marks.setdefault(i, []).append(ref_mark[note])
    notes = [f"{mark} {note}." for note, mark in ref_mark.items()]
    unmatched: dict[str, str] = {}
    for i, r in enumerate(table.rows):
        if r.duplicate is not None:
            marks.setdefault(i, []).append(f"{DUPLICATE}{r.duplicate}")
        if r.reported and r.entry["reported"].get("xrbench_defense") is False:
            marks.setdefault(i, []).append(NO_DEFENSE)
            unmatched[str(get_field(r.entry, "defense", "name"))] = str(
                r.entry["reported"].get("method"))
    if unmatched:
        notes.append(f"{NO_DEFENSE} no xrbench defense implements this reported method "
                     "(named as the source names it): "
                     + ", ".join(f"{k} = {v}" for k, v in unmatched.items()) + ".")
    return {i: " ".join(m) for i, m in marks.items()}, notes


def table_notes(table: Table) -> list[str]:
    """What a table's rows cannot show in their numbers, once each, as plain text (callers
    escape it): the row order, the retrieval column, a not_converged sentence, n/a stages,
    non-reference recipes, where reported rows come from, duplicates."""
    entries = [r.entry for r in table.rows]
    measured = [r.entry for r in table.rows if not r.reported]
    has_expl = any(_value(e, "expl_end") is not None for e in entries)
    notes = []
    if has_expl:
        order = ("Measured rows first, then reported rows, each sorted"
                 if table.has_reported and measured else "Rows sorted")
        by = "Expl@end (worst)" if table.sort_by == "expl_end_worst" else "Expl@end"
        notes.append(f"{order} by {by} ascending (lower = the manipulation got closer to "
                     "its target = less robust explanation). Expl values are mean L_e x1e7.")
    else:
        notes.append("Rows in defense-name order.")
    if any(_value(e, "expl_end_worst") is not None for e in measured):
        notes.append("Expl@end (worst): per pair the lowest L_e of an attack ensemble "
                     "(dombrowski, smoothed, signed, restart; PROTOCOL 5.8) among candidates "
                     "that keep the class; flag attack_sensitive: more than 20% below Expl@end "
                     "with disjoint intervals.")
    if any(r.pareto for r in table.rows):
        notes.append("pareto: on the table's Pareto front of clean accuracy, PGD accuracy and "
                     "Expl@end (worst): no other row is at least as high on all three and "
                     "higher on one.")
    if measured:
        mids = sorted({m for e in measured
                       if (m := middle_eps(get_field(e, "metrics", "retrieval",
                                                     "relex_adv_mask")))},
                      key=lambda k: (eps_value(k) if _is_eps(k) else 0.0, k))
        notes.append("Retrieval: RelEx mask of x_adv, share of images whose clean prediction "
                     f"is retrieved, at the middle eps ({', '.join(mids) if mids else MISSING}"
                     f"). {MISSING} = not computed.")
    if _all_not_converged(measured):
        notes.append(
            "Every measured row is flagged not_converged: the manipulation's mean loss still "
            f"fell by more than {100 * _tolerance(measured):g}% over the second half of its "
            "iterations (column Loss fall 2nd half); Expl@end is the value at the protocol's "
            "fixed attack budget." if table.has_reported else
            "Every row is flagged not_converged: the manipulation's mean loss still fell by "
            f"more than {100 * _tolerance(measured):g}% over the second half of its iterations "
            "(column Loss fall 2nd half); Expl@end is the value at the protocol's fixed "
            "attack budget.")
    torches = sorted({str(t) for e in measured
                      if (t := get_field(e, "environment", "torch")) is not None})
    if torches:  # training differs across torch versions (issue 23 item 1)
        paths = [r.path for r in table.rows if not r.reported]
        shipped = bool(paths) and all(
            p is not None and p.name.endswith(".json")
            and p.with_name(p.name[:-len(".json")] + ".pt").is_file() for p in paths)
        threads = sorted({int(t) for e in measured
                          if isinstance(t := get_field(e, "environment", "threads"), int)})
        on = (f", {'one thread' if threads == [1] else ', '.join(map(str, threads)) + ' threads'}"
              if threads else "")
        notes.append(f"Measured with torch {', '.join(torches)}{on}." + (
            " Each row's checkpoint lies beside its entry: scoring it (evaluate --checkpoint) "
            "reproduces the row to float noise under any torch; CPU training gives the same "
            "weights only on as many threads (and, in general, the same torch), and any other "
            "retrain is judged by xrbench regress --mode training." if shipped else ""))
    notes.extend(_not_applicable_notes(measured))
    notes.extend(_marks(table)[1])
    notes.extend(_reported_source_notes(table))
    if table.has_reported:
        notes.append(f"{MISSING} = not reported by the source (reported rows) or not computed "
                     "(measured rows).")
    for d in _table_duplicates(table):
        notes.append(f"{DUPLICATE}{d.number} = the same source, defense and seed in "
                     f"{len(d.files)} files, shown as they are (neither merged) and left out "
                     f"of the correlations: {'; '.join(d.files)}.")
    return [" ".join(n.split()) for n in notes]


def _reported_source_notes(table: Table) -> list[str]:
    """One note per source of reported rows: what the source is and the sentences its rows'
    notes share, said once; then, per row, only the sentences of its own (``sep_neg``: "As
    printed, ...")."""
    by_source: dict[str, list[tuple[str, str, str]]] = {}
    for r in table.rows:
        if r.reported:
            rep = r.entry["reported"]
            head = (f"{r.source} = numbers as printed in {rep.get('source')}, "
                    f"{rep.get('table')}; not measured by xrbench (no checkpoint; the "
                    "paper's own setup).")
            by_source.setdefault(r.source, []).append(
                (head, str(get_field(r.entry, "defense", "name")),
                 " ".join(str(rep.get("note", "")).split())))
    notes: list[str] = []
    for source, rows in by_source.items():
        heads = list(dict.fromkeys(h for h, _, _ in rows))
        shared, own = _shared_sentences([n for _, _, n in rows])
        notes.extend(f"{h} {shared}".strip() for h in heads)
        notes.extend(dict.fromkeys(f"{source}, {name}: {rest}"
                                   for (_, name, _), rest in zip(rows, own) if rest))
    return notes


def _shared_sentences(texts: list[str]) -> tuple[str, list[str]]:
    """The whole sentences every text begins with, and what is left of each text."""
    prefix = os.path.commonprefix(texts)
    if all(t == prefix for t in texts):
        return prefix, [""] * len(texts)
    whole = prefix.endswith(".") and all(len(t) == len(prefix) or t[len(prefix)] == " "
                                         for t in texts)
    cut = len(prefix) if whole else prefix.rfind(". ") + 1  # after a sentence all share
    return prefix[:cut].strip(), [t[cut:].strip() for t in texts]


def _table_duplicates(table: Table) -> list[Duplicate]:
    out: dict[int, Duplicate] = {}
    for r in table.rows:
        if r.duplicate is not None and r.duplicate not in out:
            members = [m for m in table.rows if m.duplicate == r.duplicate]
            out[r.duplicate] = Duplicate(r.duplicate, table.key, r.source,
                                         str(get_field(r.entry, "defense", "name")),
                                         get_field(r.entry, "seed"),
                                         [str(m.file) for m in members])
    return list(out.values())


def _not_applicable_notes(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One note per (stage, reason) that some row of the table reports as not applicable,
    naming the columns it leaves n/a (plain text). A stage behind no column (the gallery,
    which only feeds figures) gets no note: the table shows nothing of it."""
    seen: dict[tuple[str, str], None] = {}
    for e in entries:
        for stage, reason in not_applicable(e).items():
            seen[(stage, reason)] = None
    notes = []
    for stage, reason in seen:
        cols = [c.header().split(" (")[0] for c in board_columns(active_columns()) if c.stage == stage]
        if not cols:
            continue
        where = f" (columns {', '.join(cols)})"
        notes.append(f"{NOT_APPLICABLE} = not applicable: {stage}{where}: {reason}.")
    return notes
