"""What one leaderboard row shows, as markdown display text: the marks and the missing and
n/a signs, the headers, one row's cells, an entry's flags, its n/a stages and why its recipe
is not the reference one, a table's heading line (pure functions; nothing read from disk).
:mod:`xrbench.leaderboard.render` builds the tables out of these.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable, Mapping

from xrbench.columns import Column, board_columns, format_value
from xrbench.identity import TableKey, table_key, table_title

from .fields import active_columns, get_field

MISSING = "\u2013"  # en dash
NOT_APPLICABLE = "n/a"  # a stage that did not run for this explainer (entry.not_applicable)
NOT_REFERENCE = "\u2020"  # dagger: the recipe is not the reference recipe
#: the flag of a row on its table's Pareto front (leaderboard.board.PARETO_AXES)
PARETO = "pareto"
DUPLICATE = "\u2021"  # double dagger: one of several rows with the same source, defense, seed
NO_DEFENSE = "\u00a7"  # section sign: a reported method no xrbench defense implements



def table_headers(rps_eps: str | None = "8/255") -> list[str]:
    """The leaderboard's headers: defense, seed, one per board column
    (:func:`xrbench.columns.board_columns`, RPS at ``rps_eps``), flags."""
    return ["defense", "seed", *(c.header(rps_eps) for c in board_columns(active_columns())), "flags"]

GroupKey = TableKey
group_key = table_key  # (dataset, model, explainer, profile, protocol version) of an entry


#: markdown's link and image brackets (and the backslash), escaped with a backslash in a
#: user-provided name: without an unescaped ``]`` neither ``[x](javascript:...)`` becomes a
#: link nor ``![](http://...)`` an image a viewer fetches
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\[]"})


def escape(text: Any) -> str:
    """A user-provided name made safe for one markdown table cell or heading line: ``&``,
    ``<`` and ``>`` as HTML entities (markdown viewers render inline HTML, so a defense called
    ``<script>`` must stay text), pipes escaped, and in a text holding markdown's link or
    image syntax (``](`` or ``]:``) its brackets backslash-escaped; line breaks become
    spaces."""
    flat = " ".join(str(text).split())
    if "](" in flat or re.match(r"\s*!?\[[^\]]*\]:", flat):  # a link, image or reference
        flat = flat.translate(_MD_SPECIAL)
    return html.escape(flat, quote=False).replace("|", "\\|")


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
    note = defense.get("reference_note")
    if isinstance(diff, Mapping) and diff:
        parts = [f"{k}={_text(get_field(v, 'value'))} (reference "
                 f"{_text(get_field(v, 'reference'))})" for k, v in diff.items()]
        also = f"; {note}" if note else ""  # e.g. attacks added to the ensemble
        return " ".join(("recipe differs from the reference: " + ", ".join(parts)
                         + also).split())
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
