"""The correlation answer under every leaderboard table (PROTOCOL.md 5.7): closed forms,
ties, degenerate resamples and the fewer-than-4 sentence."""

from __future__ import annotations

import math
from typing import Any

import pytest

from xrbench.leaderboard.analysis import (MIN_ROWS, Metric, correlate, correlated_metrics,
                                          format_correlation, rps_eps_for, table_correlations)

EXPL_END = next(m for m in correlated_metrics() if m.key == "expl_end")


def _e(pgd: float | None, expl_end: float | None, **metrics: Any) -> dict[str, Any]:
    m: dict[str, Any] = dict(metrics)
    if pgd is not None:
        m["pgd_acc"] = {"value": pgd}
    if expl_end is not None:
        m["expl_end"] = {"value": expl_end}
    return {"metrics": m}


def test_perfectly_monotone_rows_give_plus_and_minus_one() -> None:
    up = [_e(p, 1e-5 * (1 + p) ** 2) for p in (0.0, 10.0, 20.0, 30.0, 40.0)]  # monotone, not linear
    c = correlate(up, EXPL_END, None)
    assert c.n == 5 and c.note is None
    assert c.spearman == pytest.approx(1.0) and c.kendall == pytest.approx(1.0)
    # every resample of a monotone set is monotone too (or constant, and left out)
    assert c.spearman_ci.lo == pytest.approx(1.0) and c.spearman_ci.hi == pytest.approx(1.0)
    assert c.kendall_ci.lo == pytest.approx(1.0) and c.kendall_ci.hi == pytest.approx(1.0)
    assert 0 < c.resamples_used < c.resamples  # some resamples draw one row 5 times
    down = [_e(p, 1.0 / (1 + p)) for p in (0.0, 10.0, 20.0, 30.0, 40.0)]
    c = correlate(down, EXPL_END, None)
    assert c.spearman == pytest.approx(-1.0) and c.kendall == pytest.approx(-1.0)
    assert c.spearman_ci.hi == pytest.approx(-1.0)
    assert format_correlation(c).startswith("Expl@end: Spearman -1.00 [-1.00, -1.00], "
                                            "Kendall -1.00 [-1.00, -1.00] (n = 5)")


def test_a_hand_computed_case_with_a_tie() -> None:
    # PGD 0, 0, 10, 20 (a tie: ranks 1.5, 1.5, 3, 4); Expl@end ranks 2, 1, 4, 3.
    # Spearman = Pearson of ranks: dx = -1, -1, 0.5, 1.5; dy = -0.5, -1.5, 1.5, 0.5;
    # sum dx dy = 0.5 + 1.5 + 0.75 + 0.75 = 3.5; sum dx^2 = 4.5; sum dy^2 = 5
    # -> 3.5 / sqrt(22.5) = 0.737865.
    # Kendall tau-b: of the 6 pairs, 1 tied in x; concordant 4, discordant 1
    # -> (4 - 1) / sqrt(5 * 6) = 0.547723.
    rows = [_e(0.0, 2e-5), _e(0.0, 1e-5), _e(10.0, 4e-5), _e(20.0, 3e-5)]
    c = correlate(rows, EXPL_END, None)
    assert c.spearman == pytest.approx(3.5 / math.sqrt(22.5), abs=1e-12)
    assert c.kendall == pytest.approx(3 / math.sqrt(30), abs=1e-12)
    assert c.spearman_ci is not None and -1 <= c.spearman_ci.lo <= c.spearman_ci.hi <= 1
    # seeded: the same rows give the same interval, to the bit
    again = correlate(rows, EXPL_END, None)
    assert (again.spearman_ci, again.kendall_ci) == (c.spearman_ci, c.kendall_ci)


def test_fewer_than_four_rows_print_a_sentence_not_a_number() -> None:
    rows = [_e(0.0, 1e-5), _e(10.0, 2e-5), _e(20.0, 3e-5)]
    c = correlate(rows, EXPL_END, None)
    assert MIN_ROWS == 4 and c.n == 3
    assert c.spearman is None and c.kendall is None and c.spearman_ci is None
    line = format_correlation(c)
    assert line == ("Expl@end: 3 rows with both values: fewer than 4, no correlation printed "
                    "(n = 3)")
    assert not any(ch.isdigit() for ch in line.split(":")[1].replace("4", "").replace("3", ""))
    # rows missing one of the two values do not count
    c = correlate(rows + [_e(None, 4e-5), _e(30.0, None)], EXPL_END, None)
    assert c.n == 3 and c.spearman is None


def test_constant_values_are_undefined_not_nan() -> None:
    flat = [_e(0.0, v) for v in (1e-5, 2e-5, 3e-5, 4e-5, 5e-5)]  # every PGD accuracy 0
    c = correlate(flat, EXPL_END, None)
    assert c.spearman is None and c.kendall is None
    assert c.note == "undefined: PGD accuracy is the same in all 5 rows"
    assert "nan" not in format_correlation(c).lower()
    same = [_e(p, 1e-5) for p in (0.0, 1.0, 2.0, 3.0)]
    assert correlate(same, EXPL_END, None).note == "undefined: Expl@end is the same in all 4 rows"


def test_mostly_degenerate_resamples_give_no_interval() -> None:
    # x differs in one row only, y in another: a resample is constant in x with chance
    # (5/6)^6, in y likewise, in either with about 0.58 > 1/2
    rows = [_e(0.0, 1e-5), _e(0.0, 2e-5)] + [_e(0.0, 1e-5)] * 3 + [_e(10.0, 1e-5)]
    c = correlate(rows, EXPL_END, None)
    assert c.spearman is not None and -1 <= c.spearman < 0
    assert 300 < c.resamples_used < 500 and c.spearman_ci is None
    assert c.note.startswith("no interval: only ")
    assert "nan" not in format_correlation(c).lower()


def test_table_correlations_pick_the_metrics_the_rows_have() -> None:
    rows = [_e(p, 1e-5 * (i + 1), insertion={"value": 50.0 - p},
               rps={"cosine": {"8/255": {"value": 0.9}, "16/255": {"value": 0.5 + p / 100}}})
            for i, p in enumerate((0.0, 5.0, 10.0, 20.0))]
    assert rps_eps_for(rows) == "8/255"
    cs = table_correlations(rows, "measured", "16/255")
    assert [c.label for c in cs.items] == ["Expl@end", "RPS cos 16/255", "Insertion"]
    assert [round(c.spearman, 12) for c in cs.items] == [1.0, 1.0, -1.0]
    # no PGD accuracy (Joo et al. report none): a note, no numbers
    joo = [{"metrics": {"insertion": {"value": 40.0}}} for _ in range(6)]
    cs = table_correlations(joo, "reported: Joo et al. 2023, Table 1", None)
    assert cs.items == [] and cs.note == "the source reports no PGD accuracy"


def test_rps_eps_is_the_one_every_row_shares() -> None:
    both = {"cosine": {"4/255": {"value": 1}, "8/255": {"value": 1}, "16/255": {"value": 1}}}
    only16 = {"cosine": {"16/255": {"value": 1}}}
    assert rps_eps_for([{"metrics": {"rps": both}}, {"metrics": {"rps": only16}}]) == "16/255"
    assert rps_eps_for([{"metrics": {"rps": both}}]) == "8/255"
    assert rps_eps_for([{"metrics": {}}]) is None
    assert isinstance(correlated_metrics()[0], Metric)
    # the correlated metrics are the columns that declare it, in column order
    assert [m.key for m in correlated_metrics()] == [
        "expl_start", "expl_end", "expl_end_worst", "rps_cosine", "insertion", "adv_insertion",
        "retrieval"]
