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

The row cells and signs are in :mod:`xrbench.leaderboard.render_cells`, the notes under a
table in :mod:`xrbench.leaderboard.render_notes`; every name they define is importable from
here as before.
"""

from __future__ import annotations

import html  # noqa: F401  (the names this module had before the split)
from typing import Any, Iterable, Mapping, Sequence

from tabulate import tabulate

from xrbench.columns import (Column, board_columns, eps_value, format_value,  # noqa: F401
                             interval_columns, middle_key)
from xrbench.columns import number as _num
from xrbench.identity import TableKey, table_key, table_title  # noqa: F401
from xrbench.protocol import CONVERGENCE_TOLERANCE  # noqa: F401

from .board import Board, Duplicate, Table, build_board  # noqa: F401
from .fields import active_columns, get_field
from .render_cells import (DUPLICATE, MISSING, NO_DEFENSE, NOT_APPLICABLE,  # noqa: F401
                           NOT_REFERENCE, PARETO, GroupKey, _text, escape, flags_list, flags_text,
                           group_key, heading, not_applicable, printed_or, reference_note,
                           row_cells, table_headers, value_cell)
from .render_notes import (_all_not_converged, _is_eps, _marks,  # noqa: F401
                           _not_applicable_notes, _table_duplicates, _tolerance, _value,
                           middle_eps, table_notes)


# --- tables of a Board ---------------------------------------------------------------------

def _as_board(entries: Any) -> Board:
    return entries if isinstance(entries, Board) else build_board(entries, reported_mode="all")


def _drop_empty(headers: list[str], rows: list[list[str]], keep: int
                ) -> tuple[list[str], list[list[str]]]:
    """Columns from index ``keep`` on whose cells are all missing or empty, left out."""
    cols = [i for i in range(len(headers))
            if i < keep or any(row[i] not in (MISSING, "") for row in rows)]
    return [headers[i] for i in cols], [[row[i] for i in cols] for row in rows]


def held_columns(columns: Sequence[Column], table: Table) -> list[Column]:
    """``columns`` without the optional ones (:attr:`xrbench.columns.Column.optional`) that
    no row of ``table`` holds."""
    return [c for c in columns if not c.optional
            or any(c.metric(r.entry, table.rps_eps) for r in table.rows)]


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
    for r, cells in zip(table.rows, rows):  # the Pareto front (board.PARETO_AXES) as a flag
        if r.pareto:
            cells[-1] = ", ".join(c for c in (PARETO, cells[-1]) if c)
    if table.has_reported:
        headers.insert(2, "source")
        align.insert(2, "left")
        for r, cells in zip(table.rows, rows):
            cells.insert(2, escape(r.source))
    held = {c.header(table.rps_eps) for c in board_columns(active_columns())
            if c not in held_columns([c], table)}
    if held:  # optional columns no row of this table holds (xrbench.columns.Column)
        keep_cols = [i for i, h in enumerate(headers) if h not in held]
        headers = [headers[i] for i in keep_cols]
        align = [align[i] for i in keep_cols]
        rows = [[cells[i] for i in keep_cols] for cells in rows]
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
                                for c in held_columns(interval_columns(active_columns()), t)])
        headers = ["defense", "seed", *(["source"] if t.has_reported else []),
                   *(c.header(t.rps_eps)
                     for c in held_columns(interval_columns(active_columns()), t))]
        if t.reported_only:
            headers, cells = _drop_empty(headers, cells, keep=1)
        table = tabulate(cells, headers=headers, tablefmt="github", disable_numparse=True)
        order = ("measured rows first, then reported rows, each sorted by Expl@end ascending"
                 if t.has_reported and not t.reported_only else
                 "rows sorted by Expl@end ascending")
        blocks.append("\n\n".join([f"{heading(t.key)}\n\n{table}\n\nValue [95% bootstrap "
                                   f"interval]; {order}.", *correlation_blocks(t)]))
    blocks += [f"_{superseded_note(board)}_"] if board.superseded else []
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
    blocks += [f"_{superseded_note(board)}_"] if board.superseded else []
    return "\n\n".join(blocks) + "\n"


def superseded_note(board: Board) -> str:
    """One sentence naming the tables of older protocol versions a board left out, and the
    flag that shows them (plain text; renderers escape it)."""
    versions = sorted({k[4] for k in board.superseded}, reverse=True)
    n = len(board.superseded)
    return (f"Not shown: {n} table{'s' if n != 1 else ''} of superseded protocol version"
            f"{'s' if len(versions) != 1 else ''} ({', '.join(f'v{v}' for v in versions)}); "
            "`xrbench leaderboard --superseded` shows them.")
