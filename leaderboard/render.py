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
  the flag on every row; the column "Loss fall 2nd half (%)" gives the number behind it;
- reported rows (numbers copied from a paper, :mod:`xrbench.leaderboard.board`) follow the
  measured ones with a ``source`` column ("reported: SEP paper, Table 2"), a note names the
  paper, and a method no xrbench defense implements carries ``§``; duplicated rows (same
  source, defense and seed in two files) are both shown, each marked ``‡N``;
- under the notes, the correlation answer: Spearman and Kendall between PGD accuracy and
  each explanation metric, over the measured rows and over each source's reported rows
  (:mod:`xrbench.leaderboard.analysis`).

The functions take a :class:`~xrbench.leaderboard.board.Board` (what ``xrbench
leaderboard`` renders) or a list of entries (grouped into one on the spot).
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Mapping, Sequence

from tabulate import tabulate

from xrbench.columns import (Column, board_columns, eps_value, format_value, interval_columns,
                             middle_key)
from xrbench.columns import number as _num
from xrbench.identity import TableKey, table_key, table_title
from xrbench.protocol import CONVERGENCE_TOLERANCE  # entries record their own (manipulation_loss)

from .board import Board, Duplicate, Table, build_board
from .fields import active_columns, get_field

MISSING = "\u2013"  # en dash
NOT_APPLICABLE = "n/a"  # a stage that did not run for this explainer (entry.not_applicable)
NOT_REFERENCE = "\u2020"  # dagger: the recipe is not the reference recipe
DUPLICATE = "\u2021"  # double dagger: one of several rows with the same source, defense, seed
NO_DEFENSE = "\u00a7"  # section sign: a reported method no xrbench defense implements



def table_headers(rps_eps: str | None = "8/255") -> list[str]:
    """The leaderboard's headers: defense, seed, one per board column
    (:func:`xrbench.columns.board_columns`, RPS at ``rps_eps``), flags."""
    return ["defense", "seed", *(c.header(rps_eps) for c in board_columns(active_columns())), "flags"]

GroupKey = TableKey
group_key = table_key  # (dataset, model, explainer, profile, protocol version) of an entry


def escape(text: Any) -> str:
    """A user-provided name made safe for one markdown table cell or heading line: ``&``,
    ``<`` and ``>`` as HTML entities (markdown viewers render inline HTML, so a defense called
    ``<script>`` must stay text), pipes escaped, line breaks turned into spaces."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _value(entry: Mapping[str, Any], *keys: str) -> float | None:
    return _num(get_field(entry, "metrics", *keys, "value"))


middle_eps = middle_key  # the name the rendering modules use


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


def flags_list(entry: Mapping[str, Any]) -> list[str]:
    """The entry's true flags as plain text: ``degenerate`` first, then ``not_converged``,
    then the others sorted."""
    flags = get_field(entry, "flags") or {}
    if not isinstance(flags, Mapping):
        return []
    order = ["degenerate", "not_converged"] + sorted(k for k in flags
                                                     if k not in ("degenerate", "not_converged"))
    return [str(k) for k in order if flags.get(k) is True]


def printed_or(column: Column, entry: Mapping[str, Any], text: str,
               rps_eps: str | None) -> str:
    """``text``, or a reported number as the paper printed it (``as_printed``: "88.0", not
    "88.00"; same unit as the column), escaped."""
    printed = get_field(column.metric(entry, rps_eps), "as_printed")
    return escape(printed) if isinstance(printed, str) and text != MISSING else text


def value_cell(column: Column, entry: Mapping[str, Any], rps_eps: str | None) -> str:
    """One value cell's display text: ``n/a`` when the column's stage did not run, the
    number as the column formats it, or as a paper printed it."""
    if column.stage in not_applicable(entry):
        return NOT_APPLICABLE
    return printed_or(column, entry, format_value(column, column.value(entry, rps_eps),
                                                  MISSING), rps_eps)


def row_cells(entry: Mapping[str, Any], mark: str = "", omit_flags: Iterable[str] = (),
              rps_eps: str | None = "8/255") -> list[str]:
    """The cells of one leaderboard row, in :func:`table_headers` order, as display text.
    ``mark`` follows the defense name (the table's footnote marks); ``omit_flags`` are left
    out of the flags cell; RPS cosine is read at ``rps_eps``; a column whose stage did not
    run (:func:`not_applicable`) reads ``n/a``; a reported number reads as the paper printed
    it (:func:`value_cell`)."""
    seed = get_field(entry, "seed")
    return [escape(get_field(entry, "defense", "name")) + (f" {mark}" if mark else ""),
            MISSING if seed is None else escape(seed),
            *(value_cell(c, entry, rps_eps) for c in board_columns(active_columns())),
            flags_text(entry, omit_flags)]


def heading(key: GroupKey) -> str:
    """The markdown heading line of a table (a reported-only table's version is None)."""
    return f"### {escape(table_title(key))}"


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


# --- tables of a Board ---------------------------------------------------------------------

def _as_board(entries: Any) -> Board:
    return entries if isinstance(entries, Board) else build_board(entries, reported_mode="all")


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
        notes.append(f"{order} by Expl@end ascending (lower = the manipulation got closer to "
                     "its target = less robust explanation). Expl values are mean L_e x1e7.")
    else:
        notes.append("Rows in defense-name order.")
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
    notes.extend(_not_applicable_notes(measured))
    notes.extend(_marks(table)[1])
    sources: dict[str, dict[str, None]] = {}
    for r in table.rows:
        if r.reported:
            rep = r.entry["reported"]
            text = (f"{r.source} = numbers as printed in {rep.get('source')}, "
                    f"{rep.get('table')}; not measured by xrbench (no checkpoint; the "
                    f"paper's own setup). {rep.get('note', '')}".strip())
            sources.setdefault(r.source, {})[text] = None
    for texts in sources.values():
        notes.extend(texts)
    if table.has_reported:
        notes.append(f"{MISSING} = not reported by the source (reported rows) or not computed "
                     "(measured rows).")
    for d in _table_duplicates(table):
        notes.append(f"{DUPLICATE}{d.number} = the same source, defense and seed in "
                     f"{len(d.files)} files, shown as they are (neither merged) and left out "
                     f"of the correlations: {'; '.join(d.files)}.")
    return [" ".join(n.split()) for n in notes]


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


def _drop_empty(headers: list[str], rows: list[list[str]], keep: int
                ) -> tuple[list[str], list[list[str]]]:
    """Columns from index ``keep`` on whose cells are all missing or empty, left out."""
    cols = [i for i in range(len(headers))
            if i < keep or any(row[i] not in (MISSING, "") for row in rows)]
    return [headers[i] for i in cols], [[row[i] for i in cols] for row in rows]


def table_rows(table: Table) -> tuple[list[str], list[list[str]], tuple[str, ...]]:
    """(headers, rows of display cells, column alignment) of ``table``: :func:`table_headers`
    (RPS at the table's eps), a ``source`` column after ``seed`` when the table has reported
    rows; in a table of reported rows only, the columns no row fills are left out."""
    marks, _ = _marks(table)
    omit = ("not_converged",) if _all_not_converged([r.entry for r in table.rows
                                                     if not r.reported]) else ()
    headers = table_headers(table.rps_eps)
    align = ["left"] + ["right"] * (len(headers) - 2) + ["left"]
    rows = [row_cells(r.entry, marks.get(i, ""), omit, table.rps_eps)
            for i, r in enumerate(table.rows)]
    if table.has_reported:
        headers.insert(2, "source")
        align.insert(2, "left")
        for r, cells in zip(table.rows, rows):
            cells.insert(2, escape(r.source))
    if table.reported_only:
        kept = _drop_empty(headers, rows, keep=1)
        names = kept[0]
        align = [align[headers.index(h)] for h in names]
        headers, rows = kept
    return headers, rows, tuple(align)


def render_table(table: Table | Sequence[Mapping[str, Any]]) -> str:
    """One github-markdown table and its notes, then its correlation lines."""
    if not isinstance(table, Table):
        board = _as_board(list(table))
        return "\n\n".join(render_table(t) for t in board.tables)
    headers, rows, align = table_rows(table)
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=align)
    notes = [escape(n) for n in table_notes(table)]
    return "\n\n".join([text, *notes, *correlation_blocks(table)])


def correlation_blocks(table: Table) -> list[str]:
    """The correlation answer under a table, markdown: per set of rows (measured; each
    reported source) a sentence, or a lead line and one line per metric
    (:func:`~xrbench.leaderboard.analysis.format_correlation`)."""
    from .analysis import MIN_ROWS, RESAMPLES, SEED, format_correlation

    blocks = []
    for cs in table.correlations:
        who = ("measured rows" if cs.rows == "measured" else
               "reported rows, " + cs.rows.removeprefix("reported: "))
        dup = (f", {cs.excluded_duplicates} duplicated row"
               f"{'s' if cs.excluded_duplicates != 1 else ''} left out"
               if cs.excluded_duplicates else "")
        if cs.note is not None:
            blocks.append(escape(f"Correlation with PGD accuracy ({who}): {cs.note}."))
            continue
        n_used = {c.n for c in cs.items}
        if all(c.n < MIN_ROWS for c in cs.items) and len(n_used) == 1:
            n = n_used.pop()
            blocks.append(escape(
                f"Correlation with PGD accuracy ({who}{dup}): {n} row{'s' if n != 1 else ''}"
                f" with PGD accuracy and a metric, fewer than {MIN_ROWS}: no correlation "
                "printed."))
            continue
        lead = (f"Correlation with PGD accuracy ({who}{dup}): Spearman's rho and Kendall's "
                f"tau-b [95% bootstrap interval; rows resampled, {RESAMPLES} resamples, seed "
                f"{SEED}]:")
        lines = [escape(lead)] + [f"- {escape(format_correlation(c))}" for c in cs.items]
        blocks.append("\n".join(lines))
    return blocks


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


def _interval_or_printed(metric: Any, scale: float, digits: int) -> str:
    """:func:`interval_cell`, escaped; a reported number as the paper printed it."""
    printed = get_field(metric, "as_printed")
    if isinstance(printed, str) and get_field(metric, "ci") is None:
        return escape(printed)
    return escape(interval_cell(metric, scale, digits))


def render_intervals(entries: Iterable[Mapping[str, Any]] | Board) -> str:
    """Per table, the columns of the intervals view (those declaring ``interval_digits``:
    the numbers the paper's claim is about): each metric with its 95% bootstrap interval, rows
    in the leaderboard's order (a ``source`` column where reported rows sit beside measured
    ones; reported values carry no interval unless the paper printed one), then the
    table's correlation lines. Not-applicable stages print ``n/a``."""
    board = _as_board(entries)
    if not board.tables:
        return "_No entries._\n"
    blocks = []
    for t in board.tables:
        marks, _ = _marks(t)
        cells = []
        for i, r in enumerate(t.rows):
            e = r.entry
            na = not_applicable(e)
            name = escape(get_field(e, "defense", "name"))
            seed = get_field(e, "seed")
            row = [name + (f" {marks[i]}" if i in marks else ""),
                   MISSING if seed is None else escape(seed)]
            if t.has_reported:
                row.append(escape(r.source))
            cells.append(row + [NOT_APPLICABLE if c.stage in na else
                                _interval_or_printed(c.metric(e, t.rps_eps), c.scale,
                                                     c.interval_digits or 0)
                                for c in interval_columns(active_columns())])
        headers = ["defense", "seed", *(["source"] if t.has_reported else []),
                   *(c.header(t.rps_eps) for c in interval_columns(active_columns()))]
        if t.reported_only:
            headers, cells = _drop_empty(headers, cells, keep=1)
        table = tabulate(cells, headers=headers, tablefmt="github", disable_numparse=True)
        order = ("measured rows first, then reported rows, each sorted by Expl@end ascending"
                 if t.has_reported and not t.reported_only else
                 "rows sorted by Expl@end ascending")
        blocks.append("\n\n".join([f"{heading(t.key)}\n\n{table}\n\nValue [95% bootstrap "
                                   f"interval]; {order}.", *correlation_blocks(t)]))
    return "\n\n".join(blocks) + "\n"


def render_markdown(entries: Iterable[Mapping[str, Any]] | Board, *,
                    intervals: bool = False) -> str:
    """Markdown leaderboards of a :class:`~xrbench.leaderboard.board.Board` (or of entries,
    built into one with reported rows wherever they are): for each table, a heading line
    naming it, a tabulate ``github`` table (:data:`COLUMNS`, rows by Expl@end ascending,
    measured before reported), its notes (the sort; n/a stages with their reasons;
    non-reference recipes; a table whose rows all carry ``not_converged``; where reported
    rows come from; duplicates) and the correlation answer (PGD accuracy against each
    explanation metric, :mod:`xrbench.leaderboard.analysis`). Flags (``degenerate``,
    ``not_converged``) sit in the row's flags column. ``intervals``: the intervals view
    (:func:`render_intervals`) instead. Returns ``"_No entries._\\n"`` for no entries."""
    board = _as_board(entries)
    if intervals:
        return render_intervals(board)
    if not board.tables:
        return "_No entries._\n"
    blocks = [f"{heading(t.key)}\n\n{render_table(t)}" for t in board.tables]
    return "\n\n".join(blocks) + "\n"
