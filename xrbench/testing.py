"""Helpers for users' own tests: the regression guard as one assertion.

    from xrbench.testing import assert_no_regression

    def test_my_defense_did_not_regress(tmp_path):
        res = api.evaluate("my_defense", profile="smoke", out=tmp_path, device="cpu")
        assert_no_regression("xrbench-baselines", res.path, mode="training")

It runs the same judgement as ``xrbench regress`` (:mod:`xrbench.leaderboard.regress`;
docs/ci.md explains the modes and bands) and raises ``AssertionError`` with the table of the
rows that failed, so pytest shows which metric moved, by how much and what band it left.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from .leaderboard import regress as _rg

__all__ = ["assert_no_regression"]


def assert_no_regression(baseline: str | os.PathLike[str], current: str | os.PathLike[str], *,
                         mode: str = "scoring", rtol: float = _rg.DEFAULT_RTOL,
                         atol: float = _rg.DEFAULT_ATOL,
                         metrics: Mapping[str, str] | Iterable[str] | None = None,
                         k: float = _rg.DEFAULT_K, fail_on_improvement: bool = False,
                         spread: str | os.PathLike[str] | None = None,
                         only_current: bool = False) -> _rg.Report:
    """Fail (``AssertionError``) unless every entry of ``current`` (an entry file or a folder
    of entries) is within its band of the same entry in ``baseline`` and both hold the same
    entries; as ``xrbench regress BASELINE CURRENT``.

    ``mode``: ``"scoring"`` (same checkpoint, tight band ``max(atol, rtol * |baseline|)``)
    or ``"training"`` (retrained checkpoint, band from the baseline's interval and seed
    spread). ``metrics``: per-metric tolerances, ``{"expl_end": "1e-3", "clean_acc":
    "abs:1"}`` or ``["expl_end=1e-3"]`` (names or globs; relative unless ``abs:``). ``spread``:
    a folder of more baseline seeds (besides ``baseline/spread/``). ``only_current``: judge
    only the baseline entries that ``current`` holds (a test that scores one defense of a
    larger baseline); a missing entry is then not a failure. Returns the report when it
    passes.
    """
    items = ([f"{n}={t}" for n, t in metrics.items()] if isinstance(metrics, Mapping)
             else list(metrics or []))
    settings = _rg.Settings(mode=mode, rtol=rtol, atol=atol, k=k,
                            metric_tolerances=_rg.parse_metric_tolerances(items),
                            fail_on_improvement=fail_on_improvement)
    cur, _ = _rg.load_side(current, split_spread=True)
    base, extra = _rg.load_side(baseline, split_spread=True)
    if spread is not None:
        extra += _rg.load_side(spread, with_examples=False)[0]
    if only_current:
        keys = {_rg.entry_key(s.entry) for s in cur}
        base = [s for s in base if _rg.entry_key(s.entry) in keys]
    report = _rg.regress(base, cur, settings, extra)
    if report.failed:
        raise AssertionError("metric regression against " + os.fspath(baseline) + "\n"
                             + _rg.render(report, show="failed"))
    return report
