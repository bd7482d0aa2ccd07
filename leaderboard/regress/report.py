"""The regression guard's report as text (:func:`render`, what ``xrbench regress`` prints):
per entry a header and a table of its metrics, then a summary line.
"""

from __future__ import annotations

from xrbench.errors import XRBenchError
from xrbench.identity import key_text

from .entry import Report


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _allowed(m: object) -> str:
    """The band a row was judged by: ``[lo, hi]`` around the baseline's number, for a
    per-example array the per-value half-width (``+-x``), ``-`` where none applies (a
    metric only one side has)."""
    lo, hi, band = getattr(m, "lo"), getattr(m, "hi"), getattr(m, "band_from") or ""
    if lo is not None:
        return f"[{_g(lo)}, {_g(hi)}]"
    return band.split(" (", 1)[0] + " per value" if band.startswith("+-") else "-"


def render(report: Report, show: str = "all") -> str:
    """The report as text: per entry a header line (with notes) and a tabulate table of its
    metrics (``show``: ``all`` rows, only ``failed`` ones, or every row that is not ``ok``:
    ``changed``), then a summary line."""
    from tabulate import tabulate

    if show not in ("all", "failed", "changed"):
        raise XRBenchError(f"show must be all, failed or changed, not {show!r}")
    lines: list[str] = []
    for e in report.entries:
        mark = "FAIL" if e.failed else "ok"
        lines.append(f"== {key_text(e.key)}: {e.status} [{mark}]")
        lines += [f"   note: {n}" for n in e.notes]
        rows = [m for m in e.metrics if show == "all" or (show == "failed" and m.failed)
                or (show == "changed" and m.verdict != "ok")]
        hidden = len(e.metrics) - len(rows)
        if rows:
            lines.append(tabulate(
                [(m.metric, m.better or "-", _g(m.baseline), _g(m.current),
                  "-" if m.baseline is None or m.current is None
                  else f"{m.current - m.baseline:+.3g}",
                  _allowed(m), m.band_from or "-",
                  m.verdict + (" FAIL" if m.failed else ""), m.detail) for m in rows],
                headers=["metric", "better", "baseline", "current", "change", "allowed",
                         "band from", "verdict", "detail"],
                tablefmt="simple", disable_numparse=True))
        if hidden:
            lines.append(f"   ({hidden} more metric{'s' if hidden != 1 else ''} "
                         f"{'ok' if show == 'changed' else 'not failed'}, not shown; "
                         "--show all lists every row)")
        lines.append("")
    c = report.counts()
    status = "FAILED" if report.failed else "passed"
    n_entries = {s: sum(e.status == s for e in report.entries)
                 for s in ("compared", "missing", "extra", "not comparable")}
    lines.append(f"regress ({report.settings.mode} mode): {status}; entries: "
                 + ", ".join(f"{v} {k}" for k, v in n_entries.items())
                 + "; metrics: " + (", ".join(f"{v} {k}" for k, v in c.items() if v) or "none"))
    if report.failed:
        fails = report.failures()
        lines.append("failed: " + "; ".join(fails[:12]) + (f"; and {len(fails) - 12} more"
                                                          if len(fails) > 12 else ""))
    return "\n".join(lines)
