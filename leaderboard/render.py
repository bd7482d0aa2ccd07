"""Leaderboard tables: pure functions from result entries to text (nothing read from disk).

One table per group (PROTOCOL.md section 8): entries sharing dataset, model, explainer,
profile and protocol version. Rows are sorted by Expl@end ascending: the mean explanation
loss L_e left after the targeted manipulation (PROTOCOL.md 5.2), printed in units of 1e-7
as in the SEP paper's Table 2. Lower Expl@end means the manipulation matched the target map
more closely, i.e. a *less* robust explanation. Entries need not be validated: a missing or
null metric prints as an en dash.
"""

from __future__ import annotations

import html
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from tabulate import tabulate

MISSING = "\u2013"  # en dash

COLUMNS: tuple[str, ...] = (
    "defense", "seed", "clean acc (%)", "PGD acc (%)", "Expl@start (x1e-7)",
    "Expl@end (x1e-7)", "RPS cos 8/255", "Insertion (%)", "Adv-Ins. (%)", "Retrieval (%)",
    "flags",
)
_ALIGN = ("left", "right", "right", "right", "right", "right", "right", "right", "right",
          "right", "left")

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


def flags_text(entry: Mapping[str, Any]) -> str:
    """The entry's true flags: ``degenerate`` first, then ``not_converged``, then others."""
    flags = get_field(entry, "flags") or {}
    order = ["degenerate", "not_converged"] + sorted(k for k in flags
                                                     if k not in ("degenerate", "not_converged"))
    return ", ".join(escape(k) for k in order if flags.get(k) is True)


def row_cells(entry: Mapping[str, Any]) -> list[str]:
    """The cells of one leaderboard row, in :data:`COLUMNS` order, as display text."""
    retrieval = get_field(entry, "metrics", "retrieval", "relex_adv_mask")
    mid = middle_eps(retrieval)
    seed = get_field(entry, "seed")
    return [
        escape(get_field(entry, "defense", "name")),
        MISSING if seed is None else escape(seed),
        _fixed(_value(entry, "clean_acc"), 2),
        _fixed(_value(entry, "pgd_acc"), 2),
        _expl(_value(entry, "expl_start")),
        _expl(_value(entry, "expl_end")),
        _fixed(_value(entry, "rps", "cosine", "8/255"), 3),
        _fixed(_value(entry, "insertion"), 2),
        _fixed(_value(entry, "adv_insertion"), 2),
        MISSING if mid is None else _fixed(_num(get_field(retrieval, mid, "value")), 1, 100.0),
        flags_text(entry),
    ]


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


def render_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """One github-markdown table of ``entries`` (in the given order) and its notes."""
    table = tabulate([row_cells(e) for e in entries], headers=list(COLUMNS), tablefmt="github",
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
    return table + "\n\n" + "\n\n".join(notes)


def _is_eps(key: str) -> bool:
    try:
        eps_value(key)
    except (ValueError, ZeroDivisionError):
        return False
    return True


def render_markdown(entries: Iterable[Mapping[str, Any]]) -> str:
    """Markdown leaderboards: for each group (:func:`group_key`), a heading line naming the
    group, a tabulate ``github`` table (:data:`COLUMNS`, rows by Expl@end ascending) and a
    line stating the sort. Flags (``degenerate``, ``not_converged``) sit in the row's flags
    column. Returns ``"_No entries._\\n"`` for no entries."""
    groups = group_entries(entries)
    if not groups:
        return "_No entries._\n"
    blocks = [f"{heading(k)}\n\n{render_table(v)}" for k, v in groups.items()]
    return "\n\n".join(blocks) + "\n"
