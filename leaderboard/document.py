"""The leaderboard in every format: the combined JSON document (``leaderboard-schema.json``)
and the one entry point that renders a :class:`~xrbench.leaderboard.board.Board` as markdown,
JSON or HTML (:func:`render_board`).

The floors of :mod:`xrbench.leaderboard`: ``board`` (tables as data) below ``render``
(markdown) below ``html`` below this module; nothing imports upwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

from xrbench.columns import board_columns, correlated_columns

from .analysis import LEVEL, MIN_ROWS, RESAMPLES, SEED
from .board import FORMATS, Board, row_values
from .fields import active_columns
from .fields import get_field as _get
from .render import flags_list, not_applicable, reference_note, render_markdown, table_notes

DOCUMENT_FORMAT = "xrbench-leaderboard"
DOCUMENT_VERSION = 1  # leaderboard-schema.json's format_version


def _interval(ci: Any) -> list[float] | None:
    return None if ci is None else [ci.lo, ci.hi]


def board_document(board: Board) -> dict[str, Any]:
    """The combined JSON document of ``board`` (format ``xrbench-leaderboard``, version
    :data:`DOCUMENT_VERSION`, ``leaderboard-schema.json``): every table with its rows
    (values in entry units), plain-text notes, correlations, and the board's duplicates and
    skipped files. Deterministic: no date, paths of the shipped folders relative to them."""
    from xrbench import __version__

    tables = []
    for t in board.tables:
        dataset, model, explainer, profile, version = t.key
        rows = []
        for r in t.rows:
            e = r.entry
            seed = _get(e, "seed")
            rows.append({
                "source": "reported" if r.reported else "measured",
                "reported": dict(e["reported"]) if r.reported else None,
                "file": r.file,
                "defense": str(_get(e, "defense", "name")),
                "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                "values": row_values(e, t.rps_eps),
                "flags": flags_list(e),
                "not_applicable": not_applicable(e),
                "reference_note": reference_note(e),
                "duplicate": r.duplicate,
                "pareto": r.pareto,
            })
        tables.append({
            "key": {"dataset": dataset, "model": model, "explainer": explainer,
                    "profile": profile, "protocol_version": version},
            "title": t.title,
            "reported_only": t.reported_only,
            "rps_eps": t.rps_eps,
            "rows": rows,
            "notes": table_notes(t),
            "correlations": [{
                "rows": cs.rows, "n_rows": cs.n_rows, "note": cs.note,
                "excluded_duplicates": cs.excluded_duplicates,
                "items": [{"metric": c.metric, "label": c.label, "n": c.n,
                           "spearman": c.spearman, "kendall": c.kendall,
                           "spearman_ci": _interval(c.spearman_ci),
                           "kendall_ci": _interval(c.kendall_ci),
                           "resamples": c.resamples, "resamples_used": c.resamples_used,
                           "note": c.note} for c in cs.items],
            } for cs in t.correlations],
        })
    return {
        "format": DOCUMENT_FORMAT,
        "format_version": DOCUMENT_VERSION,
        "xrbench_version": __version__,
        "inputs": {"results": list(board.inputs), "reported": board.reported_mode},
        "columns": [{"key": c.key, "label": c.label, "unit": c.unit, "display_scale": c.scale}
                    for c in board_columns(active_columns())],
        "correlation_method": {
            "statistics": ["spearman", "kendall_tau_b"], "against": "pgd_acc",
            "metrics": [c.key for c in correlated_columns(active_columns())],
            "interval": "percentile bootstrap",
            "resampled_unit": "table rows", "level": LEVEL, "resamples": RESAMPLES,
            "seed": SEED, "min_rows": MIN_ROWS,
        },
        "tables": tables,
        "duplicates": [{"number": d.number,
                        "table": dict(zip(("dataset", "model", "explainer", "profile",
                                           "protocol_version"), d.table)),
                        "source": d.source, "defense": d.defense,
                        "seed": d.seed if isinstance(d.seed, int) else None,
                        "files": list(d.files)} for d in board.duplicates],
        "skipped": [{"file": str(s.path), "reason": s.reason} for s in board.skipped],
        "superseded": [dict(zip(("dataset", "model", "explainer", "profile",
                                 "protocol_version"), k)) for k in board.superseded],
    }


def load_document_schema() -> dict[str, Any]:
    """``leaderboard-schema.json``: the JSON Schema (draft 2020-12) of
    :func:`board_document`."""
    text = resources.files("xrbench.leaderboard").joinpath(
        "leaderboard-schema.json").read_text("utf-8")
    return json.loads(text)


def validate_document(doc: Mapping[str, Any]) -> None:
    """Check a leaderboard document against ``leaderboard-schema.json``; a problem is an
    :class:`~xrbench.errors.XRBenchError` naming its path."""
    import jsonschema
    from jsonschema.exceptions import best_match

    from xrbench.errors import XRBenchError

    schema = load_document_schema()
    error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if error is not None:
        where = "document" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                     for p in error.absolute_path)
        raise XRBenchError(f"{where}: {error.message}"[:240])


def render_json(board: Board) -> str:
    """The combined document as JSON text (validated first; 2-space indent, keys in
    document order, no NaN)."""
    doc = board_document(board)
    validate_document(doc)
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- one entry point for every format ------------------------------------------------------

@dataclass
class Rendered:
    """A rendered leaderboard: the ``text`` (markdown, JSON or HTML) and the ``board`` it
    shows (tables, duplicates, skipped files)."""

    text: str
    board: Board

    @property
    def count(self) -> int:
        """Entries shown."""
        return self.board.n_entries

def render_board(board: Board, fmt: str = "md", *, intervals: bool = False) -> str:
    """``board`` as text in ``fmt``: ``md`` (:func:`~xrbench.leaderboard.render.render_markdown`,
    ``intervals`` for the intervals view), ``json`` (:func:`render_json`; intervals are
    always in it) or ``html`` (:func:`~xrbench.leaderboard.html.render_html`, ``intervals``
    adds each value's interval to its cell)."""
    if fmt == "md":
        return render_markdown(board, intervals=intervals)
    if fmt == "json":
        return render_json(board)
    if fmt == "html":
        from .html import render_html  # matplotlib: only when a page is asked for

        return render_html(board, intervals=intervals)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
