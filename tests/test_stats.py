"""ess.paper.stats: seeded bootstrap intervals."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ess.paper.stats import (
    bootstrap_mean_ci,
    cluster_bootstrap_rows,
    correlation_with_ci,
    groups_to_decide,
    minimum_detectable_effect,
    paired_correlation_difference,
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


def test_cluster_bootstrap_keeps_a_groups_rows_together():
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    for rows in cluster_bootstrap_rows(groups, n_boot=50, seed=3):
        assert rows.size == 9
        for block in rows.reshape(3, 3):  # each drawn group is one whole block of 3 rows
            assert block.tolist() in ([0, 1, 2], [3, 4, 5], [6, 7, 8])
    unequal = cluster_bootstrap_rows(["a", "b", "b"], n_boot=20, seed=0)
    assert {tuple(sorted(set(r.tolist()))) for r in unequal} <= {(0,), (1, 2), (0, 1, 2)}
    assert all(r.size in (2, 3, 4, 6) for r in unequal)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_paired_difference_of_identical_columns_is_zero(method):
    x = np.random.default_rng(4).normal(size=30)
    y = x + np.random.default_rng(5).normal(size=30)
    groups = np.repeat(np.arange(10), 3)
    assert paired_correlation_difference(x, x, y, groups, method, n_boot=300) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_paired_difference_is_positive_when_only_the_first_ranks_accuracy(method):
    """20 cells of 3 seeds: accuracy rises with the first column exactly (its rank order is
    perfect), while the second is accuracy plus noise as large as its spread."""
    rng = np.random.default_rng(6)
    accuracy = np.repeat(np.linspace(0.05, 1.0, 20), 3) + rng.normal(0, 0.01, 60)
    first = 2.0 * accuracy + 1.0
    second = accuracy + rng.normal(0, 0.4, 60)
    groups = np.repeat(np.arange(20), 3)
    d, lo, hi = paired_correlation_difference(first, second, accuracy, groups, method, n_boot=500)
    r_first = correlation_with_ci(first, accuracy, method)[0]
    r_second = correlation_with_ci(second, accuracy, method)[0]
    assert d == pytest.approx(r_first - r_second) and r_first == pytest.approx(1.0)
    assert 0.0 < lo <= d <= hi
    reversed_d, reversed_lo, reversed_hi = paired_correlation_difference(
        second, first, accuracy, groups, method, n_boot=500
    )
    assert (reversed_d, reversed_lo, reversed_hi) == pytest.approx((-d, -hi, -lo))


def test_paired_difference_is_seeded_and_resamples_cells():
    rng = np.random.default_rng(7)
    y = rng.uniform(size=24)
    a, b = y + rng.normal(0, 0.3, 24), y + rng.normal(0, 0.3, 24)
    groups = np.repeat(np.arange(8), 3)
    first = paired_correlation_difference(a, b, y, groups, n_boot=200, seed=1)
    assert first == paired_correlation_difference(a, b, y, groups, n_boot=200, seed=1)
    assert first != paired_correlation_difference(a, b, y, groups, n_boot=200, seed=2)
    # the cells change what is resampled (the interval), not the estimate
    per_run = paired_correlation_difference(a, b, y, np.arange(24), n_boot=200, seed=1)
    assert first[0] == per_run[0] and first[1:] != per_run[1:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], [0, 1, 2]), "one length"),
        (([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0, 1, 2]), "worse is constant"),
        (([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0, 1, 2]), "non-finite"),
    ],
)
def test_paired_difference_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        paired_correlation_difference(*args)


def test_groups_to_decide_scales_with_the_interval_and_the_effect():
    # an interval of half-width 1.96 SE: SE = 0.1 at 95%; n = 20 (2.80 SE / 0.1)^2 = 157
    z = 1.959963984540054
    lo, hi = 0.1 - z * 0.1, 0.1 + z * 0.1
    assert groups_to_decide(0.1, lo, hi, 20) == 157.0
    # an effect already decided at this size needs no more groups than n (and at least 1)
    assert groups_to_decide(0.5, 0.3, 0.7, 20) <= 20
    # twice the effect: a quarter of the groups; the sign does not matter
    assert groups_to_decide(-0.2, -0.2 - z * 0.1, -0.2 + z * 0.1, 20) == 40.0
    assert groups_to_decide(0.0, -0.1, 0.1, 20) == float("inf")
    assert np.isnan(groups_to_decide(float("nan"), 0.0, 1.0, 20))
    # consistent with minimum_detectable_effect: at the MDE the current n is what is needed
    mde = minimum_detectable_effect(lo, hi)
    assert groups_to_decide(mde, mde - z * 0.1, mde + z * 0.1, 20) == 20.0
    # a skewed interval: the half toward 0 sets the standard error
    assert groups_to_decide(0.1, 0.1 - z * 0.1, 0.9, 20) == 157.0
    assert groups_to_decide(-0.1, -0.9, -0.1 + z * 0.1, 20) == 157.0
