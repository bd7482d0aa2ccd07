"""Leaderboard tables: pure functions from result entries to text (nothing read from disk).

One table per group (PROTOCOL.md section 8): entries sharing dataset, model, explainer,
profile and protocol version. Rows are sorted by Expl@end ascending: the mean explanation
loss L_e left after the targeted manipulation (PROTOCOL.md 5.2), printed in units of 1e-7
as in the SEP paper's Table 2. Lower Expl@end means the manipulation matched the target map
more closely, i.e. a *less* robust explanation. Entries need not be validated: a missing or
null metric prints as an en dash.

What a row cannot show in its numbers is said under its table, once:

- a stage that did not run (the entry's ``not_applicable``, e.g. the manipulation for an
  evaluation-only explainer) prints ``n/a`` in its columns, and a note gives the reason;
- a row whose recipe is not the reference recipe of its dataset and model (``defense.reference``
  false: ``--set``, ``--epochs``, a profile's short training, user weights) carries a mark
  (``†``, numbered when a table has several different ones) and a note saying what differs;
- when every row carries ``not_converged``, one sentence under the table says so instead of
  the flag on every row; the column "Loss fall 2nd half (%)" gives the number behind it.
"""

from __future__ import annotations

import html
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from tabulate import tabulate

MISSING = "\u2013"  # en dash
NOT_APPLICABLE = "n/a"  # a stage that did not run for this explainer (entry.not_applicable)
NOT_REFERENCE = "\u2020"  # dagger: the recipe is not the reference recipe
CONVERGENCE_TOLERANCE = 0.05  # PROTOCOL 6; entries record their own (manipulation_loss)

COLUMNS: tuple[str, ...] = (
    "defense", "seed", "clean acc (%)", "PGD acc (%)", "Expl@start (x1e-7)",
    "Expl@end (x1e-7)", "Loss fall 2nd half (%)", "RPS cos 8/255", "Insertion (%)",
    "Adv-Ins. (%)", "Retrieval (%)", "flags",
)
_ALIGN = ("left", "right", "right", "right", "right", "right", "right", "right", "right",
          "right", "right", "left")
#: the stage behind each metric column (its cell is n/a when that stage did not run)
COLUMN_STAGE: dict[str, str] = {
    "clean acc (%)": "accuracy", "PGD acc (%)": "accuracy",
    "Expl@start (x1e-7)": "manipulation", "Expl@end (x1e-7)": "manipulation",
    "Loss fall 2nd half (%)": "manipulation", "RPS cos 8/255": "rps",
    "Insertion (%)": "insertion", "Adv-Ins. (%)": "adv_insertion", "Retrieval (%)": "retrieval",
}

GroupKey = tuple[str, str, str, str, Any]


def get_field(obj: Any, *keys: Any) -> Any:
    """``obj[k1][k2]...``, or None where a key is missing or a level is not a mapping."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    return obj


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if x == x else None  # NaN -> missing


def escape(text: Any) -> str:
    """A user-provided name made safe for one markdown table cell or heading line: ``&``,
    ``<`` and ``>`` as HTML entities (markdown viewers render inline HTML, so a defense called
    ``<script>`` must stay text), pipes escaped, line breaks turned into spaces."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def group_key(entry: Mapping[str, Any]) -> GroupKey:
    """(dataset, model, explainer, profile, protocol version) of an entry."""
    return (str(get_field(entry, "dataset", "name")), str(get_field(entry, "model", "name")),
            str(get_field(entry, "explainer", "name")),
            str(get_field(entry, "protocol", "profile")), get_field(entry, "protocol", "version"))


def eps_value(key: str) -> float:
    """The number an eps key stands for: ``"8/255"`` -> 8/255, ``"0.1"`` -> 0.1."""
    return float(Fraction(key))


def middle_eps(per_eps: Mapping[str, Any] | None) -> str | None:
    """The middle eps key by value (the upper middle for an even count), or None."""
    if not isinstance(per_eps, Mapping) or not per_eps:
        return None
    try:
        keys = sorted(per_eps, key=eps_value)
    except (ValueError, ZeroDivisionError):
        keys = sorted(per_eps)
    return keys[len(keys) // 2]


def _fixed(x: float | None, digits: int, scale: float = 1.0) -> str:
    return MISSING if x is None else f"{x * scale:.{digits}f}"


def _expl(x: float | None) -> str:
    """L_e in units of 1e-7: 3 decimals (as the SEP paper), 3 significant digits below 0.1."""
    if x is None:
        return MISSING
    v = x * 1e7
    return f"{v:.3f}" if v == 0 or abs(v) >= 0.1 else f"{v:.3g}"


def _value(entry: Mapping[str, Any], *keys: str) -> float | None:
    return _num(get_field(entry, "metrics", *keys, "value"))


def flags_text(entry: Mapping[str, Any], omit: Iterable[str] = ()) -> str:
    """The entry's true flags: ``degenerate`` first, then ``not_converged``, then others;
    those in ``omit`` left out (a table that states them once below itself)."""
    flags = get_field(entry, "flags") or {}
    order = ["degenerate", "not_converged"] + sorted(k for k in flags
                                                     if k not in ("degenerate", "not_converged"))
    skip = set(omit)
    return ", ".join(escape(k) for k in order if flags.get(k) is True and k not in skip)


def not_applicable(entry: Mapping[str, Any]) -> dict[str, str]:
    """The stages that did not run for this entry, each with its reason (``{}`` for entries
    of schema version 1, where every stage ran)."""
    na = get_field(entry, "not_applicable")
    return {str(k): str(v) for k, v in na.items()} if isinstance(na, Mapping) else {}


def second_half_fall(entry: Mapping[str, Any]) -> float | None:
    """The manipulation's relative loss fall over the second half of its iterations (a
    share): the entry's ``manipulation_loss.second_half_fall``, or, for entries written
    before it was recorded, ``(at_50 - at_100) / at_50`` from the loss they kept."""
    loss = get_field(entry, "metrics", "manipulation_loss")
    if not isinstance(loss, Mapping):
        return None
    if "second_half_fall" in loss:
        return _num(loss["second_half_fall"])
    half, full = _num(loss.get("at_50")), _num(loss.get("at_100"))
    if half is None or full is None:
        return None
    return (half - full) / half if half > 0 else 0.0


def reference_note(entry: Mapping[str, Any]) -> str | None:
    """Why the entry's recipe is not the reference recipe (``defense.reference`` false), as
    one line of plain text (markdown callers escape it), e.g. ``recipe differs from the
    reference: epochs=1 (reference 25)``; None for a reference recipe or an entry that does
    not say."""
    defense = get_field(entry, "defense") or {}
    if not isinstance(defense, Mapping) or defense.get("reference") is not False:
        return None
    diff = defense.get("recipe_diff")
    if isinstance(diff, Mapping) and diff:
        parts = [f"{k}={_text(get_field(v, 'value'))} (reference "
                 f"{_text(get_field(v, 'reference'))})" for k, v in diff.items()]
        return " ".join(("recipe differs from the reference: " + ", ".join(parts)).split())
    note = defense.get("reference_note")
    return " ".join(("not the reference recipe" + (f": {note}" if note else "")).split())


def _text(value: Any) -> str:
    """A recipe value as short text: numbers as Python prints them, null as ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def row_cells(entry: Mapping[str, Any], mark: str = "", omit_flags: Iterable[str] = ()
              ) -> list[str]:
    """The cells of one leaderboard row, in :data:`COLUMNS` order, as display text.
    ``mark`` follows the defense name (the table's footnote mark for a non-reference
    recipe); ``omit_flags`` are left out of the flags cell; a column whose stage did not run
    (:func:`not_applicable`) reads ``n/a``."""
    retrieval = get_field(entry, "metrics", "retrieval", "relex_adv_mask")
    mid = middle_eps(retrieval)
    seed = get_field(entry, "seed")
    fall = second_half_fall(entry)
    cells = [
        escape(get_field(entry, "defense", "name")) + (f" {mark}" if mark else ""),
        MISSING if seed is None else escape(seed),
        _fixed(_value(entry, "clean_acc"), 2),
        _fixed(_value(entry, "pgd_acc"), 2),
        _expl(_value(entry, "expl_start")),
        _expl(_value(entry, "expl_end")),
        _fixed(fall, 1, 100.0),
        _fixed(_value(entry, "rps", "cosine", "8/255"), 3),
        _fixed(_value(entry, "insertion"), 2),
        _fixed(_value(entry, "adv_insertion"), 2),
        MISSING if mid is None else _fixed(_num(get_field(retrieval, mid, "value")), 1, 100.0),
        flags_text(entry, omit_flags),
    ]
    na = not_applicable(entry)
    return [NOT_APPLICABLE if COLUMN_STAGE.get(col) in na else cell
            for col, cell in zip(COLUMNS, cells)]


def _sort_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    end = _value(entry, "expl_end")
    seed = get_field(entry, "seed")
    return (end is None, end if end is not None else 0.0,
            str(get_field(entry, "defense", "name")), seed if isinstance(seed, int) else -1)


def sort_entries(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Entries by Expl@end ascending (missing last), ties by defense name and seed."""
    return sorted(entries, key=_sort_key)


def group_entries(entries: Iterable[Mapping[str, Any]]
                  ) -> dict[GroupKey, list[Mapping[str, Any]]]:
    """Entries grouped by :func:`group_key`, groups in sorted key order, each sorted by
    :func:`sort_entries`."""
    groups: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault(group_key(e), []).append(e)
    return {k: sort_entries(groups[k]) for k in sorted(groups, key=lambda k: tuple(map(str, k)))}


def heading(key: GroupKey) -> str:
    dataset, model, explainer, profile, version = key
    return (f"### {escape(dataset)} / {escape(model)} / {escape(explainer)} / "
            f"profile {escape(profile)} / protocol v{escape(version)}")


def _all_not_converged(entries: Sequence[Mapping[str, Any]]) -> bool:
    return bool(entries) and all(get_field(e, "flags", "not_converged") is True
                                 for e in entries)


def _tolerance(entries: Sequence[Mapping[str, Any]]) -> float:
    """The not_converged threshold the entries record (the protocol's 5% when they do not,
    or disagree)."""
    found = {_num(get_field(e, "metrics", "manipulation_loss", "tolerance")) for e in entries}
    return found.pop() if len(found) == 1 and None not in found else CONVERGENCE_TOLERANCE


def render_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """One github-markdown table of ``entries`` (in the given order) and its notes."""
    reasons = [escape(note) for e in entries if (note := reference_note(e)) is not None]
    distinct = list(dict.fromkeys(reasons))
    marks = {note: NOT_REFERENCE if len(distinct) == 1 else f"{NOT_REFERENCE}{i}"
             for i, note in enumerate(distinct, 1)}
    all_nc = _all_not_converged(entries)
    omit = ("not_converged",) if all_nc else ()
    rows = [row_cells(e, marks.get(escape(reference_note(e) or ""), ""), omit) for e in entries]
    table = tabulate(rows, headers=list(COLUMNS), tablefmt="github",
                     disable_numparse=True, colalign=_ALIGN)
    mids = sorted({m for e in entries
                   if (m := middle_eps(get_field(e, "metrics", "retrieval", "relex_adv_mask")))},
                  key=lambda k: (eps_value(k) if _is_eps(k) else 0.0, k))
    notes = [
        "Rows sorted by Expl@end ascending (lower = the manipulation got closer to its target "
        "= less robust explanation). Expl values are mean L_e x1e7.",
        "Retrieval: RelEx mask of x_adv, share of images whose clean prediction is retrieved, "
        f"at the middle eps ({', '.join(mids) if mids else MISSING}). "
        f"{MISSING} = not computed.",
    ]
    if all_nc:
        notes.append(
            "Every row is flagged not_converged: the manipulation's mean loss still fell by "
            f"more than {100 * _tolerance(entries):g}% over the second half of its iterations "
            "(column Loss fall 2nd half); Expl@end is the value at the protocol's fixed "
            "attack budget.")
    notes.extend(_not_applicable_notes(entries))
    notes.extend(f"{mark} {note}." for note, mark in marks.items())
    return table + "\n\n" + "\n\n".join(notes)


def _not_applicable_notes(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One note per (stage, reason) that some row of the table reports as not applicable,
    naming the columns it leaves n/a."""
    seen: dict[tuple[str, str], None] = {}
    for e in entries:
        for stage, reason in not_applicable(e).items():
            seen[(stage, reason)] = None
    notes = []
    for stage, reason in seen:
        cols = [c.split(" (")[0] for c, s in COLUMN_STAGE.items() if s == stage]
        where = f" (columns {', '.join(cols)})" if cols else ""
        notes.append(f"{NOT_APPLICABLE} = not applicable: {escape(stage)}{where}: "
                     f"{escape(reason)}.")
    return notes


def _is_eps(key: str) -> bool:
    try:
        eps_value(key)
    except (ValueError, ZeroDivisionError):
        return False
    return True


#: (column, metric path, scale, digits) of the intervals view: the numbers the paper's claim
#: is about, each as "value [low, high]" with its 95% bootstrap interval (PROTOCOL 5.7)
INTERVAL_COLUMNS: tuple[tuple[str, tuple[str, ...], float, int], ...] = (
    ("clean acc (%)", ("clean_acc",), 1.0, 2),
    ("PGD acc (%)", ("pgd_acc",), 1.0, 2),
    ("Expl@start (x1e-7)", ("expl_start",), 1e7, 0),
    ("Expl@end (x1e-7)", ("expl_end",), 1e7, 0),
    ("Insertion (%)", ("insertion",), 1.0, 2),
)


def interval_cell(metric: Any, scale: float, digits: int) -> str:
    """``"value [low, high]"`` of a metric object (``value``, ``ci``), scaled; en dash if
    missing."""
    value = _num(get_field(metric, "value"))
    if value is None:
        return MISSING
    ci = get_field(metric, "ci")
    text = f"{value * scale:.{digits}f}"
    if isinstance(ci, Sequence) and len(ci) == 2 and None not in map(_num, ci):
        text += f" [{_num(ci[0]) * scale:.{digits}f}, {_num(ci[1]) * scale:.{digits}f}]"
    return text


def render_intervals(entries: Iterable[Mapping[str, Any]]) -> str:
    """Per group, a table of :data:`INTERVAL_COLUMNS`: each metric with its 95% bootstrap
    interval, rows in the leaderboard's order. Not-applicable stages print ``n/a``."""
    groups = group_entries(entries)
    if not groups:
        return "_No entries._\n"
    blocks = []
    for key, rows in groups.items():
        cells = []
        for e in rows:
            na = not_applicable(e)
            cells.append([escape(get_field(e, "defense", "name")), escape(get_field(e, "seed"))]
                         + [NOT_APPLICABLE if COLUMN_STAGE.get(col) in na else
                            escape(interval_cell(get_field(e, "metrics", *path), scale, d))
                            for col, path, scale, d in INTERVAL_COLUMNS])
        table = tabulate(cells, headers=["defense", "seed", *(c[0] for c in INTERVAL_COLUMNS)],
                         tablefmt="github", disable_numparse=True)
        blocks.append(f"{heading(key)}\n\n{table}\n\nValue [95% bootstrap interval]; "
                      "rows sorted by Expl@end ascending.")
    return "\n\n".join(blocks) + "\n"


def render_markdown(entries: Iterable[Mapping[str, Any]]) -> str:
    """Markdown leaderboards: for each group (:func:`group_key`), a heading line naming the
    group, a tabulate ``github`` table (:data:`COLUMNS`, rows by Expl@end ascending) and its
    notes (the sort; n/a stages with their reasons; non-reference recipes; a table whose rows
    all carry ``not_converged``). Flags (``degenerate``, ``not_converged``) sit in the row's
    flags column. Returns ``"_No entries._\\n"`` for no entries."""
    groups = group_entries(entries)
    if not groups:
        return "_No entries._\n"
    blocks = [f"{heading(k)}\n\n{render_table(v)}" for k, v in groups.items()]
    return "\n\n".join(blocks) + "\n"
