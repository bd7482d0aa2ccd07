"""One declaration per metric column: what every report of an entry's numbers reads.

A :class:`Column` says, once, where a metric lives in an entry (``path`` under
``metrics``), how it is labelled, its unit and display scale, its digits, which direction is
better, which stage computes it, and whether it is a leaderboard column and enters the
correlations with PGD accuracy. Each stage lists its columns (:attr:`xrbench.engine.stage.Stage.
columns`); the command-line summary, the markdown, JSON and HTML leaderboards, the
correlations, the plots' axes and ``xrbench regress``'s directions all iterate that one list
(:func:`xrbench.stages.all_columns`), so a new metric's column is one declaration in its stage (the
habit of lm-evaluation-harness, whose metrics declare ``higher_is_better`` at registration).

A path may hold wildcard parts (``"*"``): a *family* of numbers, one per similarity, mask
kind or eps (``("rps", "*", "*")`` holds ``rps/cosine/8/255``). A leaderboard row shows one
member of a family, chosen by ``pick`` (a fixed part, :data:`TABLE_EPS` for the eps the
table agrees on, or :data:`MIDDLE` for the middle eps of the entry's own keys).

This module imports neither torch nor numpy: ``xrbench --help`` and the schema tools stay
light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

WILDCARD = "*"
#: ``pick`` part: the eps the table's rows agree on (``Table.rps_eps``)
TABLE_EPS = "<table eps>"
#: ``pick`` part: the middle of the entry's own eps keys (by value; upper middle when even)
MIDDLE = "<middle eps>"
BETTER = ("higher", "lower", "")

Reader = Callable[[Mapping[str, Any]], "float | None"]


@dataclass(frozen=True)
class Column:
    """A metric's declaration (see the module docstring).

    ``key``: stable id (the JSON document's value key, the correlations' metric name);
    ``path``: where its metric object (``{"value", "ci", ...}``) sits under the entry's
    ``metrics`` (``"*"`` parts: a family); ``label``: the leaderboard's column header (a
    family picked at :data:`TABLE_EPS` adds the eps); ``summary``: the label of the
    command-line summary and plot axes (``{0}``, ``{1}``, ...: the family's parts);
    ``unit``: what the entry's value is in (``percent``, ``share``, ``L_e``,
    ``similarity``); ``scale``: display = value x scale; ``digits``: decimals of the
    summary and of a leaderboard cell (``style`` ``"expl"``: L_e x1e7 with 3 decimals, 3
    significant digits below 0.1, as the SEP paper prints it); ``interval_digits``: its
    decimals in the intervals view (None: not shown there); ``better``: ``"higher"``,
    ``"lower"`` or ``""`` (neither, e.g. Expl@start); ``stage``: the stage that computes it
    (its cells read n/a when that stage did not run); ``board``: a leaderboard column;
    ``correlated``: correlated with PGD accuracy under each table (``short`` names it
    there); ``number``: the path holds a plain number, not a metric object (no interval);
    ``fallback``: how to read it from entries written before the path existed;
    ``meaning``: one line for the summary (a mapping: by the family's first part);
    ``order``: leaderboard column order (lower first); ``optional``: a board column left out
    of a table where no row holds it (a metric newer than some entries, so that a table of
    older entries does not grow a column of dashes)."""

    key: str
    path: tuple[str, ...]
    label: str
    unit: str
    stage: str
    scale: float = 1.0
    digits: int = 2
    better: str = ""
    summary: str = ""
    short: str = ""
    board: bool = True
    correlated: bool = False
    pick: tuple[str, ...] = ()
    style: str = "fixed"
    interval_digits: int | None = None
    number: bool = False
    fallback: Reader | None = field(default=None, compare=False)
    meaning: str | Mapping[str, str] = ""
    order: int = 100
    optional: bool = False

    def __post_init__(self) -> None:
        if self.better not in BETTER:
            raise ValueError(f"column {self.key}: better must be one of {BETTER}")
        if self.style not in ("fixed", "expl"):
            raise ValueError(f"column {self.key}: style must be fixed or expl")
        wild = [i for i, p in enumerate(self.path) if p == WILDCARD]
        if self.board and wild and len(self.pick) != len(wild):
            raise ValueError(f"column {self.key}: a family on the board picks one value for "
                             f"each of its {len(wild)} wildcard parts")

    @property
    def family(self) -> bool:
        return WILDCARD in self.path

    def header(self, table_eps: str | None = None) -> str:
        """The leaderboard header: ``label``, plus the table's eps for a column picked at
        :data:`TABLE_EPS` (``RPS cos 8/255``)."""
        if TABLE_EPS in self.pick:
            return f"{self.label} {table_eps or '8/255'}"
        return self.label

    def summary_label(self, parts: Sequence[str] = ()) -> str:
        return (self.summary or self.label).format(*parts)

    def meaning_of(self, parts: Sequence[str] = ()) -> str:
        if isinstance(self.meaning, Mapping):
            return self.meaning.get(parts[0], "") if parts else ""
        return self.meaning

    def board_path(self, entry: Mapping[str, Any], table_eps: str | None
                   ) -> tuple[str, ...] | None:
        """The path of the family member a leaderboard row of ``entry`` shows (the path
        itself for a plain column), or None when the row has none."""
        if not self.family:
            return self.path
        picks = iter(self.pick)
        out: list[str] = []
        for part in self.path:
            if part != WILDCARD:
                out.append(part)
                continue
            want = next(picks)
            if want == TABLE_EPS:
                if table_eps is None:
                    return None
                out.append(table_eps)
            elif want == MIDDLE:
                mid = middle_key(get_field(entry, "metrics", *out))
                if mid is None:
                    return None
                out.append(mid)
            else:
                out.append(want)
        return tuple(out)

    def metric(self, entry: Mapping[str, Any], table_eps: str | None = None) -> Any:
        """The metric object a leaderboard row of ``entry`` shows (``{"value": ...}``; for
        a ``number`` column ``{"value": v, "ci": None}``), or None."""
        path = self.board_path(entry, table_eps)
        if path is None:
            return None
        found = get_field(entry, "metrics", *path)
        if self.number:
            if found is None and self.fallback is not None and not _has_path(entry, path):
                return {"value": self.fallback(entry), "ci": None}
            return {"value": number(found), "ci": None}
        return found

    def value(self, entry: Mapping[str, Any], table_eps: str | None = None) -> float | None:
        """The row's value in entry units (None when missing or not finite)."""
        return number(get_field(self.metric(entry, table_eps), "value"))


def _has_path(entry: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = get_field(entry, "metrics")
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return False
        node = node[p]
    return True


def get_field(obj: Any, *keys: str) -> Any:
    """``obj[k0][k1]...``, or None where a key is missing or a level is not a mapping."""
    for k in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(k)
    return obj


def number(x: Any) -> float | None:
    """A finite int or float as float; None for anything else (bools, strings, NaN)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def eps_value(key: str) -> float:
    """The number an eps key stands for: ``"8/255"`` -> 8/255, ``"0.1"`` -> 0.1."""
    return float(Fraction(key))


def middle_key(per_eps: Any) -> str | None:
    """The middle eps key of a mapping by value (the upper middle for an even count), or
    None for an empty or missing one."""
    if not isinstance(per_eps, Mapping) or not per_eps:
        return None
    try:
        keys = sorted(per_eps, key=eps_value)
    except (ValueError, ZeroDivisionError):
        keys = sorted(per_eps)
    return keys[len(keys) // 2]


def instances(metrics: Mapping[str, Any], column: Column
              ) -> list[tuple[tuple[str, ...], tuple[str, ...], Any]]:
    """Every number of ``column`` an entry's ``metrics`` hold: (full path, the family's
    parts in the wildcards' places, the metric object or plain number), in the entry's
    order. A plain column gives at most one."""
    out: list[tuple[tuple[str, ...], tuple[str, ...], Any]] = []

    def walk(node: Any, i: int, path: tuple[str, ...], parts: tuple[str, ...]) -> None:
        if i == len(column.path):
            out.append((path, parts, node))
            return
        if not isinstance(node, Mapping):
            return
        want = column.path[i]
        if want == WILDCARD:
            for k, v in node.items():
                if isinstance(k, str) and not k.startswith("_"):
                    walk(v, i + 1, path + (k,), parts + (k,))
        elif want in node:
            walk(node[want], i + 1, path + (want,), parts)

    walk(metrics, 0, (), ())
    return out


def board_columns(columns: Sequence[Column]) -> tuple[Column, ...]:
    """The leaderboard's value columns among ``columns``, by ``order`` (ties in the given
    order)."""
    return tuple(sorted((c for c in columns if c.board), key=lambda c: c.order))


def correlated_columns(columns: Sequence[Column]) -> tuple[Column, ...]:
    """The board columns correlated with PGD accuracy, in column order."""
    return tuple(c for c in board_columns(columns) if c.correlated)


def interval_columns(columns: Sequence[Column]) -> tuple[Column, ...]:
    """The board columns of the intervals view (``interval_digits`` set)."""
    return tuple(c for c in board_columns(columns) if c.interval_digits is not None)


def declared_metrics(metrics: Mapping[str, Any], columns: Sequence[Column]
                     ) -> dict[str, tuple[Column, tuple[str, ...]]]:
    """Per metric name as regress and ``--metric`` write it (``"rps/cosine/8/255"``), the
    column declaring it and the family's parts."""
    out: dict[str, tuple[Column, tuple[str, ...]]] = {}
    for c in columns:
        for path, parts, _obj in instances(metrics, c):
            out.setdefault("/".join(path), (c, parts))
    return out


def by_key(key: str, columns: Sequence[Column]) -> Column | None:
    """The column of a key (``"expl_end"``), or None."""
    return next((c for c in columns if c.key == key), None)


def format_value(column: Column, value: float | None, missing: str = "\u2013") -> str:
    """A leaderboard cell's text of a value in entry units: ``digits`` decimals of
    value x scale, or the L_e style (``style`` ``"expl"``); ``missing`` for None."""
    if value is None:
        return missing
    v = value * column.scale
    if column.style == "expl":
        return f"{v:.3f}" if v == 0 or abs(v) >= 0.1 else f"{v:.3g}"
    return f"{v:.{column.digits}f}"
