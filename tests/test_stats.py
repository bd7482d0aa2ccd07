"""Bootstrap intervals and rank correlations, PROTOCOL.md section 5.7."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from xrbench.metrics.stats import (bootstrap_ci, bootstrap_ci_grouped, kendall_tau_b_rows,
                                   rank_correlations, spearman_rows, summarize)


def test_bootstrap_contains_mean_is_seeded_and_shrinks() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(2.0, 1.0, 30), rng.normal(2.0, 1.0, 3000)
    m, lo, hi = bootstrap_ci(small, seed=1)
    assert m == pytest.approx(small.mean())
    assert lo < m < hi
    assert bootstrap_ci(small, seed=1) == (m, lo, hi)
    assert bootstrap_ci(small, seed=2) != (m, lo, hi)
    m2, lo2, hi2 = bootstrap_ci(large, seed=1)
    assert lo2 < m2 < hi2
    assert (hi2 - lo2) < (hi - lo) / 5  # width ~ 1/sqrt(N): 10x narrower, allow slack
    # about 2 * 1.96 * sigma / sqrt(N)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 / np.sqrt(3000), rel=0.15)


def test_bootstrap_tensor_input_constant_and_edge_cases() -> None:
    assert bootstrap_ci(torch.full((7,), 0.3)) == (pytest.approx(0.3),) * 3
    m, lo, hi = bootstrap_ci(torch.full((7,), 0.3))
    assert lo == hi == m
    assert bootstrap_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(np.isnan(bootstrap_ci([])))
    m, lo, hi = bootstrap_ci(np.arange(10.0), statistic=np.median)
    assert m == 4.5 and lo <= m <= hi
    assert summarize(np.arange(4.0))["n"] == 4


def test_grouped_equals_plain_with_one_pair_per_victim() -> None:
    v = np.random.default_rng(3).random(40)
    plain = bootstrap_ci(v, seed=5)
    grouped = bootstrap_ci_grouped(v, np.arange(40), seed=5)
    np.testing.assert_allclose(grouped, plain, rtol=1e-12)


def test_grouped_resamples_victims() -> None:
    rng = np.random.default_rng(4)
    victims = np.repeat(np.arange(20), 19)                 # 20 victims x 19 targets
    effect = rng.normal(0.0, 1.0, 20)[victims]             # strong victim effect
    v = effect + 0.05 * rng.normal(size=victims.size)
    m, lo, hi = bootstrap_ci_grouped(torch.tensor(v), torch.tensor(victims), seed=0)
    _, plo, phi = bootstrap_ci(v, seed=0)
    assert m == pytest.approx(v.mean())
    assert lo < m < hi
    assert (hi - lo) > 3 * (phi - plo)  # pairs of one victim are not independent
    assert bootstrap_ci_grouped(v, victims, seed=0) == bootstrap_ci_grouped(v, victims, seed=0)
    # the resampled statistic is the pooled mean: constant values give a point
    assert bootstrap_ci_grouped(np.full(6, 2.0), [0, 0, 1, 1, 1, 2]) == (2.0, 2.0, 2.0)


def test_vectorised_rank_correlations_match_scipy() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.random((3, 15)), rng.random((3, 15))
    x[:, 2], y[:, 4] = x[:, 3], y[:, 5]  # ties
    for i in range(3):
        assert spearman_rows(x, y)[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic)
        assert kendall_tau_b_rows(x, y)[i] == pytest.approx(sps.kendalltau(x[i], y[i]).statistic)


def test_rank_correlations_monotone_and_degenerate() -> None:
    x = np.arange(8.0)
    res = rank_correlations(x, np.exp(x), n_resamples=300)
    for name in ("spearman", "kendall"):
        assert res[name]["value"] == pytest.approx(1.0)
        assert res[name]["lo"] == pytest.approx(1.0) and res[name]["hi"] == pytest.approx(1.0)
    neg = rank_correlations(x, -x ** 3, n_resamples=300)
    assert neg["kendall"]["value"] == pytest.approx(-1.0)
    noisy = rank_correlations(x, x + np.array([0, 3, -2, 1, 0, -3, 2, 0.5]), seed=1)
    assert noisy["spearman"]["lo"] <= noisy["spearman"]["value"] <= noisy["spearman"]["hi"]
    assert noisy == rank_correlations(x, x + np.array([0, 3, -2, 1, 0, -3, 2, 0.5]), seed=1)
    for bad in (rank_correlations([1.0, 2.0], [2.0, 1.0]),
                rank_correlations([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])):
        assert bad["spearman"]["value"] is None and bad["kendall"]["hi"] is None


def test_rank_correlations_do_not_depend_on_row_order() -> None:
    """A table (rows by Expl@end) and a figure (rows by file) must print the same interval."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=9), rng.normal(size=9)
    perm = rng.permutation(9)
    assert rank_correlations(x, y, seed=0) == rank_correlations(x[perm], y[perm], seed=0)
