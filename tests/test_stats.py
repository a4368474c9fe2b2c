"""ess.stats: seeded bootstrap intervals."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ess.stats import (
    bootstrap_mean_ci,
    correlation_with_ci,
    pearson_rows,
    positive_verdict,
    spearman_rows,
)


def test_bootstrap_ci_covers_the_true_mean():
    sample = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    mean, lo, hi = bootstrap_mean_ci(sample, n_boot=2000, seed=0)
    assert mean == pytest.approx(sample.mean())
    assert lo < 3.0 < hi
    assert lo < mean < hi
    assert hi - lo < 1.0


def test_bootstrap_is_deterministic_for_a_seed():
    sample = np.random.default_rng(2).exponential(size=50)
    assert bootstrap_mean_ci(sample, seed=7) == bootstrap_mean_ci(sample, seed=7)
    assert bootstrap_mean_ci(sample, seed=7) != bootstrap_mean_ci(sample, seed=8)


def test_bootstrap_wider_for_higher_confidence():
    sample = np.random.default_rng(3).normal(size=100)
    _, lo90, hi90 = bootstrap_mean_ci(sample, confidence=0.9)
    _, lo99, hi99 = bootstrap_mean_ci(sample, confidence=0.99)
    assert lo99 < lo90 and hi90 < hi99


def test_bootstrap_single_value():
    assert bootstrap_mean_ci([2.5]) == (2.5, 2.5, 2.5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "at least 1"),
        ([1.0, np.nan], "non-finite.*index 1"),
        ([1.0, np.inf], "non-finite"),
        ([[1.0, 2.0]], "1-D"),
    ],
)
def test_bootstrap_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_mean_ci(values)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_mean_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=1.0)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_perfect_correlation_is_one(method):
    x = np.arange(20.0)
    assert correlation_with_ci(x, 2 * x + 1, method=method) == (1.0, 1.0, 1.0)
    assert correlation_with_ci(x, -x, method=method) == (-1.0, -1.0, -1.0)


def test_spearman_sees_a_monotone_curve_as_one():
    x = np.linspace(0.1, 3.0, 30)
    r, _, _ = correlation_with_ci(x, np.exp(3 * x), method="spearman")
    assert r == pytest.approx(1.0)
    assert correlation_with_ci(x, np.exp(3 * x), method="pearson")[0] < 0.95


def test_correlation_ci_covers_a_noisy_correlation_and_is_seeded():
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    y = 0.6 * x + 0.8 * rng.normal(size=200)  # true r = 0.6
    r, lo, hi = correlation_with_ci(x, y, n_boot=1000, seed=3)
    assert lo < 0.6 < hi and lo < r < hi
    assert correlation_with_ci(x, y, n_boot=1000, seed=3) == (r, lo, hi)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        ([1, 2, 3], [1, 2, 3, 4], {}, "same length"),
        ([1, 2], [1, 2], {}, "at least 3"),
        ([1, 1, 1], [1, 2, 3], {}, "x is constant"),
        ([1, 2, np.nan], [1, 2, 3], {}, "x has 1 non-finite"),
        ([1, 2, 3], [1, 2, 3], {"method": "kendall"}, "method"),
    ],
)
def test_correlation_rejects_bad_input(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        correlation_with_ci(x, y, **kwargs)


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (2, 12), elements=finite))
def test_row_correlations_match_numpy_and_scipy(xy):
    from scipy.stats import spearmanr

    x, y = xy
    assume(np.ptp(x) > 1e-3 and np.ptp(y) > 1e-3)
    assert pearson_rows(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
    assert spearman_rows(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)


def test_row_correlation_of_a_constant_row_is_nan():
    assert np.isnan(pearson_rows(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize(
    ("lo", "hi", "verdict"),
    [
        (0.1, 0.9, "held"),
        (-0.9, -0.1, "opposite"),
        (-0.1, 0.9, "not shown"),
        (0.0, 0.9, "not shown"),  # touching 0 is not excluding it (excludes_zero)
        (np.nan, np.nan, "untested"),
        (0.1, np.nan, "untested"),
    ],
)
def test_positive_verdict_reads_the_interval(lo, hi, verdict):
    assert positive_verdict(lo, hi) == verdict
