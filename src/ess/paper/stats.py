"""Seeded bootstrap confidence intervals for means and correlations.

Every function is pure: the same arguments (seed included) give the same numbers. Intervals are
percentile bootstrap intervals: resample the observations with replacement n_boot times (pairs
together for a correlation), recompute the statistic, and take the (1-c)/2 and (1+c)/2
quantiles of the resampled statistics. A cluster bootstrap (`cluster_bootstrap_rows`) draws
whole groups of observations instead (E1: a cell with all its seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CORRELATION_METHODS = ("pearson", "spearman")


def _finite_vector(values: Sequence[float] | np.ndarray, name: str, min_size: int) -> np.ndarray:
    """values as a 1-D float64 array; ValueError if empty, too short, not 1-D or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {array.size}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite values (NaN or inf), first at index {bad[0]}: "
            f"{array[bad[0]]}"
        )
    return array


def _check_bootstrap_args(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """(lo, hi) quantiles of bootstrap statistics; resamples giving NaN are left out."""
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) int64 indices drawn with replacement by numpy's default_rng(seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile-bootstrap confidence interval.

    values: (n,) finite numbers, n >= 1 (n = 1 gives lo = hi = mean).
    """
    x = _finite_vector(values, "values", min_size=1)
    _check_bootstrap_args(n_boot, confidence)
    means = x[bootstrap_indices(x.size, n_boot, seed)].mean(axis=1)
    lo, hi = _percentile_interval(means, confidence)
    return float(x.mean()), lo, hi


def bootstrap_mean_difference_ci(
    first: np.ndarray, second: np.ndarray, n_boot: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(second) - mean(first), the two samples resampled
    independently (bootstrap_indices with seeds seed and seed + 1). NaN, NaN when one is empty."""
    _check_bootstrap_args(n_boot, confidence)
    if first.size == 0 or second.size == 0:
        return float("nan"), float("nan")
    differences = second[bootstrap_indices(second.size, n_boot, seed + 1)].mean(axis=1)
    differences = differences - first[bootstrap_indices(first.size, n_boot, seed)].mean(axis=1)
    return _percentile_interval(differences, confidence)


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair. x, y: (..., n) -> (...); NaN where a row is constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=-1) / denominator
    return np.where(denominator > 0, np.clip(r, -1.0, 1.0), np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair: Pearson r of the (average-tie) ranks. (..., n) -> (...)."""
    # Imported here: scipy.stats takes ~0.5 s to import, paid by every training and ESS job
    # that imports ess.paper.synthetic.tables without ranking anything.
    from scipy.stats import rankdata

    return pearson_rows(rankdata(x, axis=-1), rankdata(y, axis=-1))


def correlation_with_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    method: str = "pearson",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(r, lo, hi): a correlation and its paired percentile-bootstrap confidence interval.

    x, y: (n,) finite numbers, n >= 3, neither constant. method: "pearson" or "spearman".
    Pairs (x_k, y_k) are resampled together; resamples in which x or y is constant (r
    undefined) are left out of the interval.
    """
    if method not in CORRELATION_METHODS:
        raise ValueError(f"method must be one of {CORRELATION_METHODS}, got {method!r}")
    xs = _finite_vector(x, "x", min_size=3)
    ys = _finite_vector(y, "y", min_size=3)
    if xs.size != ys.size:
        raise ValueError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    for name, values in (("x", xs), ("y", ys)):
        if np.ptp(values) == 0:
            raise ValueError(f"{name} is constant ({values[0]}): its correlation is undefined")
    _check_bootstrap_args(n_boot, confidence)
    correlate = pearson_rows if method == "pearson" else spearman_rows
    r = float(correlate(xs, ys))
    idx = bootstrap_indices(xs.size, n_boot, seed)
    lo, hi = _percentile_interval(correlate(xs[idx], ys[idx]), confidence)
    return r, lo, hi


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether an interval [lo, hi] excludes 0: the project's one test of "significant" (a
    bootstrap interval of a mean or a difference, at the configured confidence). False for a
    NaN bound."""
    return bool((lo > 0.0 and hi > 0.0) or (lo < 0.0 and hi < 0.0))


def positive_verdict(lo: float, hi: float) -> str:
    """The verdict on a claim that a quantity is positive, from its interval [lo, hi]: "held"
    (the interval excludes 0, `excludes_zero`, and lies above it), "opposite" (it excludes 0
    and lies below), "not shown" (it contains 0) or "untested" (a NaN bound: nothing was
    estimated, e.g. a correlation over fewer than 3 values)."""
    if np.isnan(lo) or np.isnan(hi):
        return "untested"
    if not excludes_zero(lo, hi):
        return "not shown"
    return "held" if lo > 0 else "opposite"


def minimum_detectable_effect(
    lo: float, hi: float, confidence: float = 0.95, power: float = 0.8
) -> float:
    """The smallest true effect a design detects with probability `power` (two-sided test at
    1 - confidence), read off an interval it produced: the interval's half-width is
    z_c * SE with z_c the (1 + c)/2 normal quantile, and MDE = (z_c + z_power) * SE. Under a
    normal sampling distribution (n of a few tens of boundaries); 0.8 power at 95% gives
    MDE = 1.43 half-widths."""
    if not 0.0 < confidence < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"confidence and power must be in (0, 1), got {confidence}, {power}")
    from statistics import NormalDist

    z_c = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    z_p = NormalDist().inv_cdf(power)
    return float((z_c + z_p) * (hi - lo) / (2.0 * z_c))


def _group_rows(groups: Sequence | np.ndarray) -> list[np.ndarray]:
    """The row indices of each distinct value of `groups`, groups in order of first appearance."""
    codes = {}
    for i, group in enumerate(groups):
        codes.setdefault(group, []).append(i)
    return [np.asarray(rows, dtype=np.int64) for rows in codes.values()]


def cluster_bootstrap_rows(
    groups: Sequence | np.ndarray, n_boot: int, seed: int
) -> list[np.ndarray]:
    """The rows of n_boot cluster resamples: each draws len(set(groups)) groups with
    replacement (numpy's default_rng(seed), `bootstrap_indices`) and keeps every row of each
    drawn group, so rows of one group (a cell's seeds) stay together. Returns n_boot index
    arrays; all of one length when every group has as many rows."""
    rows = _group_rows(groups)
    draws = bootstrap_indices(len(rows), n_boot, seed)
    sizes = {len(r) for r in rows}
    if len(sizes) == 1:  # equal groups: one (n_boot, n_groups * k) gather
        table = np.stack(rows)
        return list(table[draws].reshape(n_boot, -1))
    return [np.concatenate([rows[g] for g in draw]) for draw in draws]


def paired_correlation_difference(
    better: Sequence[float] | np.ndarray,
    worse: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray,
    method: str = "spearman",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(d, lo, hi): d = corr(better, y) - corr(worse, y) and its paired cluster-bootstrap
    percentile interval.

    better, worse, y: (n,) finite numbers, n >= 3, none constant; groups: (n,) labels of the
    clusters (E1: the cell of each run, so a cell's seeds are drawn together). Each resample
    draws the groups with replacement (`cluster_bootstrap_rows`) and computes both
    correlations on the same rows, so their shared noise cancels in the difference; resamples
    where a column is constant (a correlation undefined) are left out of the interval.
    """
    if method not in CORRELATION_METHODS:
        raise ValueError(f"method must be one of {CORRELATION_METHODS}, got {method!r}")
    columns = {
        name: _finite_vector(values, name, min_size=3)
        for name, values in (("better", better), ("worse", worse), ("y", y))
    }
    sizes = {v.size for v in columns.values()} | {len(groups)}
    if len(sizes) != 1:
        raise ValueError(f"better, worse, y and groups must have one length, got {sorted(sizes)}")
    for name, values in columns.items():
        if np.ptp(values) == 0:
            raise ValueError(f"{name} is constant ({values[0]}): its correlation is undefined")
    _check_bootstrap_args(n_boot, confidence)
    correlate = pearson_rows if method == "pearson" else spearman_rows
    b, w, yy = columns.values()
    difference = float(correlate(b, yy) - correlate(w, yy))
    resamples = cluster_bootstrap_rows(groups, n_boot, seed)
    if len({r.size for r in resamples}) == 1:
        idx = np.stack(resamples)
        stats = correlate(b[idx], yy[idx]) - correlate(w[idx], yy[idx])
    else:
        stats = np.array([correlate(b[i], yy[i]) - correlate(w[i], yy[i]) for i in resamples])
    lo, hi = _percentile_interval(stats, confidence)
    return difference, lo, hi


def groups_to_decide(
    estimate: float,
    lo: float,
    hi: float,
    n_groups: int,
    confidence: float = 0.95,
    power: float = 0.8,
) -> float:
    """How many groups (E1: cells of seeds) a design like this one needs for an interval
    that excludes 0 with probability `power`, if the true effect is the observed `estimate`.

    The standard error is read off the interval's half on the side of 0 (SE = (estimate - lo)
    / z_c for a positive estimate, (hi - estimate) / z_c for a negative one; the whole width
    / 2 z_c, as `minimum_detectable_effect`, if the estimate lies outside [lo, hi]), since a
    percentile-bootstrap interval can be skewed and that side decides. It shrinks as
    1/sqrt(groups), so n = n_groups ((z_c + z_power) SE / |estimate|)^2, rounded up (at least
    1; it can exceed n_groups for an interval that already excludes 0, which then did so with
    less than `power`). inf when the estimate is 0 (no number of groups decides a null
    effect), NaN for a NaN input. Under a normal sampling distribution, and at the run's own
    variance between groups (further cells drawn like these)."""
    if not 0.0 < confidence < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"confidence and power must be in (0, 1), got {confidence}, {power}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if not all(np.isfinite([estimate, lo, hi])):
        return float("nan")
    if estimate == 0.0:
        return float("inf")
    from statistics import NormalDist

    z_c = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    z_p = NormalDist().inv_cdf(power)
    toward_zero = estimate - lo if estimate > 0 else hi - estimate
    half_width = toward_zero if lo <= estimate <= hi else (hi - lo) / 2.0
    standard_error = half_width / z_c
    needed = n_groups * ((z_c + z_p) * standard_error / abs(estimate)) ** 2
    return float(max(1, int(np.ceil(needed - 1e-9))))
