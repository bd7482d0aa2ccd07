"""What the benchmarks share (pytest-benchmark): the short mode and the board of ratios that
``benchmarks/conftest.py`` prints at the end of the run (its fixture ``ratios``).

A benchmark times two ways of doing the same work side by side in one run and registers
their ratio with the session fixture ``ratios``::

    def test_batched(benchmark, ratios):
        benchmark(run_batched)
        ratios.record("relex/batched", benchmark, per=N_IMAGES)   # seconds per image

    def test_looped(benchmark, ratios):
        benchmark(run_looped)
        ratios.record("relex/looped", benchmark, per=N_IMAGES)
        ratios.ratio("batched RelEx vs one image at a time", "relex/looped",
                     "relex/batched", at_least=10.0)

``ratio(name, numerator, denominator)`` is seconds(numerator) / seconds(denominator) of
two recorded keys (each its benchmark's fastest round), computed at the end of the session (whichever test ran last); ``at_least`` or
``at_most`` is its target (PASS or MISS in the table; a miss never fails the run: timings
are no test). The table (markdown) is printed in pytest's terminal summary, also with
``-q``; with ``--benchmark-disable`` nothing is timed and the table says so.

``XRBENCH_BENCH_SHORT=1`` (:data:`SHORT`) makes every benchmark small (fewer pairs, images,
iterations and rounds) so that the whole folder runs in about a minute, for CI:
``XRBENCH_BENCH_SHORT=1 python -m pytest benchmarks/ -q``. Short-mode ratios are noisier
and, where the batch is smaller, lower than the full run's (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: ``XRBENCH_BENCH_SHORT=1``: the short mode (CI), every benchmark small
SHORT = os.environ.get("XRBENCH_BENCH_SHORT", "").strip() not in ("", "0")

T = TypeVar("T")


def pick(full: T, short: T) -> T:
    """``short`` in the short mode (:data:`SHORT`), else ``full``."""
    return short if SHORT else full


@dataclass
class _Ratio:
    name: str
    numerator: str
    denominator: str
    at_least: float | None
    at_most: float | None
    note: str


@dataclass
class RatioBoard:
    """Seconds of recorded benchmarks (fastest round, by key) and the ratios declared
    between them."""

    seconds: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, _Ratio] = field(default_factory=dict)

    def record(self, key: str, benchmark: Any, per: int = 1) -> float | None:
        """Keep ``benchmark``'s seconds (its fastest round, the one least disturbed by other
        work on the machine; divided by ``per``: seconds per pair or image when the two
        sides run different numbers of items) under ``key``. None, and nothing kept, when
        benchmarks are disabled (``--benchmark-disable``)."""
        stats = getattr(benchmark, "stats", None)
        if getattr(benchmark, "disabled", False) or stats is None:
            return None
        self.seconds[key] = float(stats.stats.min) / per
        return self.seconds[key]

    def ratio(self, name: str, numerator: str, denominator: str, *,
              at_least: float | None = None, at_most: float | None = None,
              note: str = "") -> None:
        """Declare the ratio ``seconds(numerator) / seconds(denominator)`` under ``name``, with
        its target (``at_least`` or ``at_most``, or none: reported only). Declaring the
        same name again replaces it."""
        self.ratios[name] = _Ratio(name, numerator, denominator, at_least, at_most, note)

    def value(self, name: str) -> float | None:
        """The ratio ``name`` from the seconds recorded so far, None if a side is missing."""
        r = self.ratios[name]
        num, den = self.seconds.get(r.numerator), self.seconds.get(r.denominator)
        return None if num is None or not den else num / den

    def table(self) -> list[str]:
        """Markdown lines: ratio | measured | target | result | note."""
        lines = ["| ratio | measured | target | result | note |", "|---|---|---|---|---|"]
        for name, r in self.ratios.items():
            v = self.value(name)
            if r.at_least is not None:
                target, ok = f">= {r.at_least:g}x", None if v is None else v >= r.at_least
            elif r.at_most is not None:
                target, ok = f"<= {r.at_most:g}x", None if v is None else v <= r.at_most
            else:
                target, ok = "(reported)", None
            shown = "not measured" if v is None else f"{v:.2f}x"
            result = "" if ok is None else ("PASS" if ok else "MISS")
            lines.append(f"| {name} | {shown} | {target} | {result} | {r.note} |")
        return lines
