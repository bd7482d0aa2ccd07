"""A leaderboard as data: tables of rows, their correlations, duplicates and skipped files.

:func:`build_board` is pure (entries in, :class:`Board` out); :func:`load_board` reads the
folders first. Every output format renders a :class:`Board`: markdown
(:func:`xrbench.leaderboard.render.render_markdown`), the combined JSON document
(:func:`xrbench.leaderboard.document.board_document`, validated against
``leaderboard-schema.json``) and HTML
(:func:`xrbench.leaderboard.html.render_html`).

Tables (PROTOCOL.md section 8): one per (dataset, model, explainer, profile, protocol
version) of the measured entries. Measured rows come first, sorted by Expl@end ascending;
reported rows (numbers copied from a paper, :func:`~xrbench.leaderboard.schema.is_reported`)
follow, sorted the same way, each labelled with its source. A reported row has no protocol
version and no xrbench profile (the paper's setup is none of xrbench's): it joins every
measured table of the same dataset, model and explainer, whatever its profile and version (a
paper's Table 15 beside the rows a CPU can afford at ``quick``), and where there is none it
gets a table of its own (``reported_only``; only with ``reported="all"``).

Duplicates: two rows of one table with the same source, defense, recipe and seed (two files
of the same run, or of two runs) are not merged and neither is dropped (rows of one defense
with other recipes, such as the points of a sweep's ``--grid``, are not duplicates): both rows are shown, each
marked with its duplicate group's number, the files are listed in :attr:`Board.duplicates`,
and the rows of a duplicate group are left out of the table's correlations (one defense must
not count twice).

Correlations (:mod:`xrbench.leaderboard.analysis`): over the measured rows, and separately
over each source's reported rows; never over a mix.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from xrbench.columns import board_columns, number
from xrbench.identity import TableKey, table_key, table_title

from .analysis import (RESAMPLES, SEED, CorrelationSet, rps_eps_for,
                       table_correlations)
from .schema import Skipped, is_reported
from .fields import active_columns
from .fields import get_field as _get

_log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("md", "json", "html")
REPORTED_MODES: tuple[str, ...] = ("all", "beside", "none")



@dataclass
class Row:
    """One row: the entry, where it came from (``file``: a display path, or ``(entry N)``
    for the N-th entry given in memory), its duplicate group (1-based,
    :attr:`Board.duplicates`) if any, and ``path``, the file itself when it was read from
    disk (its per-example file, for the figures, lies beside it)."""

    entry: Mapping[str, Any]
    file: str | None = None
    duplicate: int | None = None
    path: Path | None = None
    #: on its table's Pareto front of :data:`PARETO_AXES` (:func:`pareto_front`)
    pareto: bool = False

    @property
    def reported(self) -> bool:
        return is_reported(self.entry)

    @property
    def source(self) -> str:
        """``measured``, or ``reported: <label>`` (e.g. ``reported: SEP paper, Table 2``)."""
        if self.reported:
            return f"reported: {self.entry['reported'].get('label', 'paper')}"
        return "measured"


@dataclass
class Table:
    """One leaderboard table: its key, rows (measured first), the eps its RPS column uses,
    and the correlations of its measured rows and of each source's reported rows."""

    key: TableKey
    rows: list[Row]
    rps_eps: str | None = None
    #: the metric the rows are sorted by (:data:`SORT_KEYS`)
    sort_by: str = "expl_end"
    correlations: list[CorrelationSet] = field(default_factory=list)

    @property
    def reported_only(self) -> bool:
        return bool(self.rows) and all(r.reported for r in self.rows)

    @property
    def has_reported(self) -> bool:
        return any(r.reported for r in self.rows)

    @property
    def title(self) -> str:
        """``digits / convnet / grad_x_input / profile quick / protocol v2`` (plain text;
        renderers escape it); ``... / profile paper / reported only`` for a table of
        reported rows only."""
        return table_title(self.key)


@dataclass
class Duplicate:
    """Rows of one table sharing (source, defense, seed): their files, in reading order."""

    number: int
    table: TableKey
    source: str
    defense: str
    seed: Any
    files: list[str]


@dataclass
class Board:
    """Everything a leaderboard shows: tables in print order (measured tables sorted by
    key, then reported-only ones), duplicates, files skipped while reading (each with its
    reason) and the inputs it was built from."""

    tables: list[Table]
    duplicates: list[Duplicate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    reported_mode: str = "all"
    #: keys of the tables left out because a newer protocol version is on the board
    #: (:func:`build_board`'s ``superseded=False``), newest first
    superseded: list[TableKey] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return sum(len(t.rows) for t in self.tables)

    @property
    def n_entries(self) -> int:
        """Entries shown (a reported entry beside two measured tables counts once)."""
        return len({id(r.entry) for t in self.tables for r in t.rows})


#: the metrics a table's rows can be sorted by (``xrbench leaderboard --sort``), each an entry
#: path under ``metrics``; rows without it go last
SORT_KEYS = {"expl_end": "expl_end", "expl_end_worst": "expl_end_worst"}


def _expl_end(entry: Mapping[str, Any], key: str = "expl_end") -> float | None:
    v = _get(entry, "metrics", key, "value")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


#: the axes of a table's Pareto front, all higher-is-better metrics under ``metrics``: clean
#: accuracy, PGD accuracy and the worst-case Expl@end (PROTOCOL 5.8)
PARETO_AXES = ("clean_acc", "pgd_acc", "expl_end_worst")


def pareto_front(points: Sequence[Sequence[float] | None]) -> list[bool]:
    """Which points are on the Pareto front, every coordinate higher-is-better: a point is
    on it when no other point is at least as high on every coordinate and higher on one.
    ``None`` (a row without all the numbers) is never on it. Equal points are all on it."""
    out = []
    for i, p in enumerate(points):
        if p is None:
            out.append(False)
            continue
        beaten = any(q is not None and j != i and all(b >= a for a, b in zip(p, q))
                     and any(b > a for a, b in zip(p, q)) for j, q in enumerate(points))
        out.append(not beaten)
    return out


def pareto_point(entry: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The entry's values on :data:`PARETO_AXES`, or None if one is missing."""
    vals = [_expl_end(entry, key) for key in PARETO_AXES]
    if any(v is None for v in vals):
        return None
    return tuple(float(v) for v in vals if v is not None)


def _sort_key(row: Row, by: str = "expl_end") -> tuple[Any, ...]:
    end = _expl_end(row.entry, SORT_KEYS[by])
    seed = _get(row.entry, "seed")
    return (row.reported, row.source, end is None, end if end is not None else 0.0,
            str(_get(row.entry, "defense", "name")), seed if isinstance(seed, int) else -1,
            row.file or "")


def _str_key(key: TableKey) -> tuple[str, ...]:
    return tuple(map(str, key))


def _newest_first(key: TableKey) -> tuple[Any, ...]:
    """Tables of the newest protocol version first (superseded versions behind them), then
    by dataset, model, explainer and profile."""
    version = key[4]
    newest = -version if isinstance(version, int) and not isinstance(version, bool) else 0
    return (newest, *map(str, key[:4]))


def build_board(rows: Iterable[Row | Mapping[str, Any]], *, reported_mode: str = "all",
                skipped: Sequence[Skipped] = (), inputs: Sequence[str] = (),
                resamples: int = RESAMPLES, seed: int = SEED, sort_by: str = "expl_end",
                superseded: bool = True) -> Board:
    """Group ``rows`` (entries or :class:`Row`) into tables, find duplicates and compute each
    table's correlations (module docstring). ``reported_mode``: ``all`` (reported rows
    beside measured ones and in tables of their own), ``beside`` (only beside measured
    rows), ``none`` (left out). ``superseded=False`` leaves out the measured tables of a
    protocol version older than the newest one on the board (their keys go to
    :attr:`Board.superseded`): their numbers measure what an older protocol measured.
    Pure: reads nothing from disk."""
    if reported_mode not in REPORTED_MODES:
        raise ValueError(f"reported_mode must be one of {REPORTED_MODES}, got {reported_mode!r}")
    all_rows = [r if isinstance(r, Row) else Row(r) for r in rows]
    # entries given without a file are named by their position in the input
    for i, r in enumerate(all_rows, 1):
        if r.file is None:
            r.file = f"(entry {i})"
    measured: dict[TableKey, list[Row]] = {}
    reported: list[Row] = []
    for r in all_rows:
        if r.reported:
            reported.append(r)
        else:
            measured.setdefault(table_key(r.entry), []).append(r)
    tables = {k: Table(k, list(v)) for k, v in measured.items()}
    hidden: list[TableKey] = []
    if not superseded:
        hidden = sorted((k for k in tables if is_superseded(k, tables)), key=_newest_first)
        for k in hidden:
            del tables[k]
    own: dict[TableKey, Table] = {}
    if reported_mode != "none":
        for r in reported:
            k4 = table_key(r.entry)[:4]  # (dataset, model, explainer, profile as reported)
            hosts = [t for k, t in tables.items() if k[:3] == k4[:3]]
            for t in hosts:
                t.rows.append(Row(r.entry, r.file))
            if not hosts and reported_mode == "all":
                own.setdefault((*k4, None), Table((*k4, None), [])).rows.append(r)
    ordered = ([tables[k] for k in sorted(tables, key=_newest_first)]
               + [own[k] for k in sorted(own, key=_str_key)])
    duplicates: list[Duplicate] = []
    for t in ordered:
        t.sort_by = sort_by
        t.rows.sort(key=lambda r: _sort_key(r, sort_by))
        points = [None if r.reported else pareto_point(r.entry) for r in t.rows]
        if sum(p is not None for p in points) >= 2:  # a lone row's front says nothing
            for r, on in zip(t.rows, pareto_front(points)):
                r.pareto = on
        groups: dict[tuple[str, str, Any, Any], list[Row]] = {}
        for r in t.rows:  # other recipes of one defense (a sweep's grid) are other rows
            groups.setdefault((r.source, str(_get(r.entry, "defense", "name")),
                               _get(r.entry, "seed"), _get(r.entry, "defense", "recipe_hash")),
                              []).append(r)
        for (source, defense, s, _recipe), members in groups.items():
            if len(members) > 1:
                number = len(duplicates) + 1
                for m in members:
                    m.duplicate = number
                duplicates.append(Duplicate(
                    number, t.key, source, defense, s,
                    [str(m.file) for m in members]))
        t.rps_eps = rps_eps_for([r.entry for r in t.rows])
        t.correlations = _correlations(t, resamples=resamples, seed=seed)
    return Board(ordered, duplicates, list(skipped), list(inputs), reported_mode, hidden)


def _version(key: TableKey) -> int | None:
    v = key[4]
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def is_superseded(key: TableKey, keys: Iterable[TableKey]) -> bool:
    """True if ``key``'s protocol version is older than the newest version among ``keys``
    (the measured tables of one board): a table of protocol v2 beside v3 tables."""
    mine = _version(key)
    newest = max((v for v in map(_version, keys) if v is not None), default=None)
    return mine is not None and newest is not None and mine < newest


def _correlations(table: Table, *, resamples: int, seed: int) -> list[CorrelationSet]:
    out = []
    sources = list(dict.fromkeys(r.source for r in table.rows))
    for source in sources:
        members = [r for r in table.rows if r.source == source]
        kept = [r.entry for r in members if r.duplicate is None]
        out.append(table_correlations(kept, source, table.rps_eps,
                                      excluded_duplicates=len(members) - len(kept),
                                      resamples=resamples, seed=seed))
    return out


# --- reading from disk --------------------------------------------------------------------

def _display(path: Path, root: Path, label: str | None) -> str:
    """A file's display path: ``<label>/<path below root>`` for the shipped folders (so
    output does not depend on where xrbench is installed), else the path as found."""
    if label is None:
        return str(path)
    return f"{label}/{path.relative_to(root).as_posix()}"


def load_board(results: Sequence[str | os.PathLike[str]] | None = None, *,
               reported_mode: str | None = None, resamples: int = RESAMPLES,
               seed: int = SEED, sort_by: str = "expl_end", superseded: bool = True
               ) -> Board:
    """Read the entries below each folder of ``results`` (default: the published entries
    shipped with xrbench) leniently (:func:`~xrbench.leaderboard.schema.scan_entries`: a bad
    file is skipped with a warning and listed in :attr:`Board.skipped`), add the shipped
    reported entries, and :func:`build_board`. ``reported_mode`` defaults to ``all`` for
    the published entries and ``beside`` for folders of your own; ``superseded=False``
    leaves out tables of older protocol versions (:attr:`Board.superseded`)."""
    from .schema import reported_dir, scan_entries

    published = results is None or len(results) == 0
    roots: list[tuple[Path, str | None]]
    if published:
        roots = [(published_dir(), "published")]
    else:
        roots = [(Path(r), None) for r in results]  # type: ignore[union-attr]
    mode = reported_mode or ("all" if published else "beside")
    rows: list[Row] = []
    skipped: list[Skipped] = []
    for root, label in roots:
        scan = scan_entries([root])
        rows += [Row(x.entry, _display(x.path, root, label), path=x.path)
                 for x in scan.loaded]
        skipped += [Skipped(Path(_display(x.path, root, label)), x.reason)
                    for x in scan.skipped]
    if mode != "none":
        rep_root = reported_dir()
        scan = scan_entries([rep_root])
        # a copy of a reported file inside a results folder is the same row: read once
        seen = {json.dumps(r.entry, sort_keys=True) for r in rows if r.reported}
        rows += [Row(x.entry, _display(x.path, rep_root, "reported")) for x in scan.loaded
                 if json.dumps(x.entry, sort_keys=True) not in seen]
        skipped += [Skipped(Path(_display(x.path, rep_root, "reported")), x.reason)
                    for x in scan.skipped]
    inputs = ["published" if label else str(root) for root, label in roots]
    return build_board(rows, reported_mode=mode, skipped=skipped, inputs=inputs,
                       resamples=resamples, seed=seed, sort_by=sort_by, superseded=superseded)


def published_dir() -> Path:
    """The folder of the published entries shipped with xrbench (``results/``)."""
    return Path(str(resources.files("xrbench.leaderboard").joinpath("results")))


# --- the combined JSON document -----------------------------------------------------------

def row_values(entry: Mapping[str, Any], rps_eps: str | None
               ) -> dict[str, dict[str, Any]]:
    """The row's values in entry units, ``{key: {"value": v | None, "ci": [lo, hi] | None}}``
    for every board column (:func:`xrbench.columns.board_columns`: RPS cosine at
    ``rps_eps``; retrieval = RelEx mask of x_adv at the middle eps; the loss fall has no
    interval)."""
    out = {}
    for c in board_columns(active_columns()):
        m = c.metric(entry, rps_eps)
        v, ci = number(_get(m, "value")), _get(m, "ci")
        good_ci = (isinstance(ci, Sequence) and len(ci) == 2
                   and all(number(x) is not None for x in ci))
        out[c.key] = {"value": v,
                      "ci": [float(ci[0]), float(ci[1])] if v is not None and good_ci else None}
    return out


def warn_about(board: Board) -> None:
    """One ``logging`` warning per skipped file (naming it and why) and per duplicate group
    (naming its files)."""
    for s in board.skipped:
        _log.warning("skipped %s: %s", s.path, s.reason)
    for d in board.duplicates:
        _log.warning("duplicate rows (%s, %s, seed %s) in %s: %s; both shown, not merged",
                     d.source, d.defense, d.seed, " / ".join(map(str, d.table)),
                     "; ".join(d.files))
