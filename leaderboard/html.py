"""The leaderboard as one self-contained HTML page (``xrbench leaderboard --format html``).

One file, nothing fetched: the style sheet and a small column-sorting script are inline,
figures are PNG images embedded as ``data:`` URIs, and a Content-Security-Policy allows
exactly that (no network, images only from ``data:``, only the page's own script, by its
sha256). Every string that comes from an entry (names, notes, reasons, file paths) is
escaped with :func:`html.escape`, so a defense called ``<script>alert(1)</script>`` shows as
text; the CSP would block an injected script even if one got through.

Each table (the same tables, rows, notes and correlations as the markdown,
:mod:`xrbench.leaderboard.board`) is followed by its correlation answer and a scatter plot
of an explanation metric against PGD accuracy (:func:`xrbench.plots.scatter_figure`; Expl@end
where the rows have it), then the figures drawn from its measured rows' per-example files
(:data:`SIDECAR_FIGURES`: landscapes, insertion curves, a gallery of one pair per row).
Column headers sort the rows (click again to reverse; missing values sort last); each says
in its tooltip what it measures. Figures can be supplied by the caller instead
(:func:`render_html`'s ``figures``: per table, a list of ``(caption, png_bytes)``).

Layout (``static/leaderboard.css``): the widest tables fit a 1280 px window without a
scrollbar (headers wrap, numbers do not, tight cells); on a phone a table scrolls sideways
inside its own wrapper, its defense column held in place, and the page itself never does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from importlib import resources
from typing import Any, Mapping, Sequence

from .analysis import MIN_ROWS, RESAMPLES, SEED, format_correlation
from xrbench.columns import Column, board_columns, by_key, format_value

from .board import Board, Table, row_values
from .render import (MISSING, NOT_APPLICABLE, PARETO, _marks, flags_list, held_columns,
                     not_applicable, superseded_note, table_notes)
from .fields import active_columns
from .fields import get_field as _get

_log = logging.getLogger(__name__)

Figure = tuple[str, bytes]  # (caption, PNG bytes)

def _static(name: str) -> str:
    """A file of the page's style or script, shipped as package data (``static/``)."""
    return resources.files("xrbench.leaderboard").joinpath("static", name).read_text("utf-8")


#: the page's style sheet and its one script (sorting a table by a clicked header), inline in
#: the page; the script's sha256 is the Content-Security-Policy's only script source
_STYLE = "\n" + _static("leaderboard.css")
_SCRIPT = "\n" + "".join(line for line in _static("sort-columns.js").splitlines(True)
                         if not line.startswith("//"))


def _e(text: Any) -> str:
    """Any text from an entry, escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def script_hash() -> str:
    """The CSP source of the page's one inline script: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(_SCRIPT.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"



def _printed(entry: Mapping[str, Any], column: Column, rps_eps: str | None) -> str | None:
    """A reported value's text as the paper printed it, or None."""
    text = _get(column.metric(entry, rps_eps), "as_printed")
    return text if isinstance(text, str) else None


def _interval_end(column: Column, x: float) -> str:
    """An interval's end: as the cell prints values, but L_e of 100 and more (x1e-7)
    without decimals."""
    if column.style == "expl" and abs(x * column.scale) >= 100:
        return f"{x * column.scale:.0f}"
    return format_value(column, x, MISSING)


def _cell(entry: Mapping[str, Any], column: Column, values: Mapping[str, Any],
          rps_eps: str | None, intervals: bool) -> tuple[str, str]:
    """(inner HTML, data-v attribute) of one value cell; ``values``: the row's
    :func:`~xrbench.leaderboard.board.row_values`."""
    if column.stage in not_applicable(entry):
        return NOT_APPLICABLE, ""
    value, ci = values[column.key]["value"], values[column.key]["ci"]
    text = _printed(entry, column, rps_eps) or format_value(column, value, MISSING)
    inner = _e(text)
    if intervals and ci is not None:
        lo, hi = (_interval_end(column, c) for c in ci)
        inner += f'<span class="ci">[{_e(lo)}, {_e(hi)}]</span>'
    return inner, "" if value is None else repr(value * column.scale)


#: the flags column's header tooltip
FLAGS_TOOLTIP = ("pareto: on the table's Pareto front; the others are the entry's own flags "
                 "(the notes under the table say what each means)")


def _tooltip(column: Column) -> str:
    """A column header's tooltip: its label and what it measures (the column's meaning),
    so that a header wrapped to fit the page still says it in full."""
    meaning = column.meaning_of(column.pick[:1])
    return f"{column.label}: {meaning}" if meaning else column.label


def _table_html(table: Table, intervals: bool) -> str:
    marks, _ = _marks(table)
    measured = [r.entry for r in table.rows if not r.reported]
    omit_nc = bool(measured) and all(_get(e, "flags", "not_converged") is True
                                     for e in measured)
    # per column: (key, sort type, header, tooltip: what the column measures)
    cols: list[tuple[str, str, str, str]] = [("defense", "text", "defense", ""),
                                             ("seed", "num", "seed", "")]
    if table.has_reported:
        cols.append(("source", "text", "source", "measured here, or reported in a paper"))
    columns = held_columns(board_columns(active_columns()), table)
    for c in columns:
        cols.append((c.key, "num", c.header(table.rps_eps), _tooltip(c)))
    cols.append(("flags", "text", "flags", FLAGS_TOOLTIP))
    body: list[list[tuple[str, str, str]]] = []  # per row: (class, inner, data-v)
    for i, r in enumerate(table.rows):
        e = r.entry
        seed = _get(e, "seed")
        name = _e(_get(e, "defense", "name"))
        if i in marks:
            name += f' <span class="badge">{_e(marks[i])}</span>'
        cells = [("", name, ""),
                 ("num", MISSING if seed is None else _e(seed),
                  "" if not isinstance(seed, int) else str(seed))]
        if table.has_reported:
            badge = "badge rep" if r.reported else "badge"
            cells.append(("", f'<span class="{badge}">{_e(r.source)}</span>', ""))
        values = row_values(e, table.rps_eps)
        for c in columns:
            cells.append(("num", *_cell(e, c, values, table.rps_eps, intervals)))
        flags = [f for f in flags_list(e) if not (omit_nc and f == "not_converged")]
        if r.pareto:
            flags.insert(0, PARETO)
        cells.append(("flags", _e(", ".join(flags)), ""))
        body.append(cells)
    keep = list(range(len(cols)))
    if table.reported_only:  # leave out the columns no reported row fills
        keep = [j for j in keep if j == 0 or any(row[j][1] not in (MISSING, "")
                                                 for row in body)]
    head = "".join(f'<th scope="col" data-type="{cols[j][1]}"'
                   + (f' title="{_e(cols[j][3])}"' if cols[j][3] else "")
                   + f">{_e(cols[j][2])}</th>" for j in keep)
    rows_html = []
    for r, cells in zip(table.rows, body):
        tds = "".join(
            f'<td class="{cells[j][0]}"' + (f' data-v="{_e(cells[j][2])}"' if cells[j][2] else "")
            + f">{cells[j][1]}</td>" for j in keep)
        rows_html.append(f'<tr class="{"reported" if r.reported else "measured"}">{tds}</tr>')
    return (f'<table class="lb"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows_html) + "</tbody></table>")


def _correlations_html(table: Table) -> str:
    parts = []
    for cs in table.correlations:
        who = ("measured rows" if cs.rows == "measured" else
               "reported rows, " + cs.rows.removeprefix("reported: "))
        if cs.excluded_duplicates:
            who += f", {cs.excluded_duplicates} duplicated rows left out"
        if cs.note is not None:
            parts.append(f"<p>Correlation with PGD accuracy ({_e(who)}): {_e(cs.note)}.</p>")
            continue
        if all(c.n < MIN_ROWS for c in cs.items) and len({c.n for c in cs.items}) == 1:
            n = cs.items[0].n
            parts.append(f"<p>Correlation with PGD accuracy ({_e(who)}): {n} "
                         f"row{'s' if n != 1 else ''} with PGD accuracy and a metric, fewer "
                         f"than {MIN_ROWS}: no correlation printed.</p>")
            continue
        lines = "".join(f"<li>{_e(format_correlation(c))}</li>" for c in cs.items)
        parts.append(f"<p>Correlation with PGD accuracy ({_e(who)}): Spearman's rho and "
                     f"Kendall's tau-b [95% bootstrap interval; rows resampled, {RESAMPLES} "
                     f"resamples, seed {SEED}]:</p><ul>{lines}</ul>")
    return f'<div class="corr">{"".join(parts)}</div>' if parts else ""


def _figure_html(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def scatter_metric(table: Table) -> tuple[str, str] | None:
    """(plots metric name, label) of the metric a table's scatter shows: Expl@end where its
    rows have it, else the first correlated metric they have (measured rows; a table of
    reported rows only: its rows); None when fewer than two rows have PGD accuracy and the
    metric."""
    for cs in table.correlations:
        if not table.reported_only and cs.rows != "measured":
            continue
        items = sorted(cs.items, key=lambda c: c.metric != "expl_end")  # Expl@end first
        for c in items:
            if c.n < 2:  # one point is no scatter
                continue
            column = by_key(c.metric, active_columns())
            if column is None:
                continue
            # a family member: the one the rows show, if it is the same in every row
            paths = {column.board_path(r.entry, table.rps_eps) for r in table.rows}
            paths.discard(None)
            if len(paths) == 1:
                return "/".join(paths.pop()), c.label
    return None


def default_figures(board: Board) -> list[list[Figure]]:
    """Per table, a scatter plot of :func:`scatter_metric` against PGD accuracy
    (:func:`xrbench.plots.scatter_figure`, with its Spearman interval in the title) of the
    measured rows (of the reported rows in a table of reported rows only). A table whose
    rows lack the values, or a figure that cannot be drawn, gets none (logged)."""
    from xrbench.errors import XRBenchError
    from xrbench.plots import scatter_figure

    out: list[list[Figure]] = []
    for t in board.tables:
        figs: list[Figure] = []
        chosen = scatter_metric(t)
        rows = [r.entry for r in t.rows if r.reported == t.reported_only]
        if chosen is not None and rows:
            metric, label = chosen
            who = "reported" if t.reported_only else "measured"
            try:
                figs.append((f"{label} against PGD accuracy, {who} rows of {t.title}",
                             scatter_figure(rows, metric)))
            except XRBenchError as exc:
                _log.info("no scatter for %s: %s", t.title, exc)
        figs.extend(sidecar_figures(t))
        out.append(figs)
    return out


#: the figures drawn from the measured rows' per-example files: (caption, plots function,
#: keyword arguments); the gallery shows one pair per measured row (entry), the first of the
#: ``xrbench.stages.GALLERY_PAIRS`` (4) its entry keeps, to keep the page light (``xrbench
#: plot gallery`` shows 3 by default)
SIDECAR_FIGURES = (
    ("Loss landscapes (PROTOCOL 5.6)", "landscape_figure", {}),
    ("Insertion and Adv-Insertion curves (PROTOCOL 5.4)", "insertion_figure", {}),
    ("Saliency gallery, 1 manipulated pair per measured row, the first of the pairs its "
     "entry keeps (PROTOCOL 5.2)", "gallery_figure", {"pairs": 1}),
)


def sidecar_figures(table: Table) -> list[Figure]:
    """The :data:`SIDECAR_FIGURES` of a table's measured rows read from disk (each row's
    per-example file beside its entry; duplicates left out). A figure some row lacks the data
    for (an entry made before the curves or the gallery existed) is left out and logged."""
    from xrbench import plots
    from xrbench.errors import XRBenchError
    from xrbench.leaderboard.examples import read_examples

    rows = [r for r in table.rows if not r.reported and r.path is not None
            and r.duplicate is None]
    if not rows:
        return []
    try:
        items = [(r.entry, read_examples(r.path, r.entry)) for r in rows]
    except XRBenchError as exc:
        _log.info("no figures from the per-example files of %s: %s", table.title, exc)
        return []
    figs: list[Figure] = []
    for caption, name, kwargs in SIDECAR_FIGURES:
        try:
            figs.append((f"{caption}: {table.title}", getattr(plots, name)(items, **kwargs)))
        except XRBenchError as exc:
            _log.info("no %s for %s: %s", name, table.title, exc)
    return figs


def render_html(board: Board, *, intervals: bool = False,
                figures: Sequence[Sequence[Figure]] | None = None,
                title: str = "xrbench leaderboard") -> str:
    """The page (module docstring). ``figures``: per table (same order as
    ``board.tables``), the ``(caption, png_bytes)`` figures to embed under it; default
    :func:`default_figures`. ``intervals``: each value's 95% interval under it."""
    from xrbench import __version__

    if figures is None:
        figures = default_figures(board)
    if len(figures) != len(board.tables):
        raise ValueError(f"figures: {len(figures)} lists for {len(board.tables)} tables")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src {script_hash()}; base-uri 'none'; form-action 'none'")
    inputs = ", ".join(board.inputs) or "entries given in memory"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_e(title)}</h1>",
           f'<p class="meta">{board.n_entries} entries from {_e(inputs)}; reported rows: '
           f"{_e(board.reported_mode)}; xrbench {_e(__version__)}. One table per dataset, "
           "model, explainer, profile and protocol version (PROTOCOL 8). Click a column "
           "header to sort.</p>"]
    if board.superseded:  # one sentence, code marks as in markdown
        out.append(f'<p class="meta">{_e(superseded_note(board)).replace("`", "")}</p>')
    if board.skipped:
        items = "".join(f"<li>{_e(s.path)}: {_e(s.reason)}</li>" for s in board.skipped)
        out.append(f'<div class="warn"><p>Skipped files (not valid entries):</p>'
                   f"<ul>{items}</ul></div>")
    if board.duplicates:
        items = "".join(f"<li>{_e(d.number)}: {_e(d.source)} {_e(d.defense)} seed "
                        f"{_e(d.seed)}: {_e('; '.join(d.files))}</li>"
                        for d in board.duplicates)
        out.append(f'<div class="warn"><p>Duplicated rows (the same source, defense and seed '
                   f"in several files; all shown, none merged):</p><ul>{items}</ul></div>")
    toc = "".join(f'<li><a href="#t{i}">{_e(t.title)}</a></li>'
                  for i, t in enumerate(board.tables, 1))
    out.append(f"<nav><ul>{toc}</ul></nav>")
    for i, (t, figs) in enumerate(zip(board.tables, figures), 1):
        notes = "".join(f"<li>{_e(n)}</li>" for n in table_notes(t))
        out.append(f'<section id="t{i}"><h2>{_e(t.title)}</h2>'
                   f'<div class="wide">{_table_html(t, intervals)}</div>'
                   f'<ul class="notes">{notes}</ul>{_correlations_html(t)}'
                   + "".join(_figure_html(c, png) for c, png in figs) + "</section>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"
