"""The tables the synthetic experiments share (docs/method.md §4), pandas only: the runs table
the figures read (built by rule aggregate_synthetic), the runs of each experiment, correlations
with bootstrap intervals, seed means and training curves. Each experiment's own tables and its
verdict are in its module (ess.paper.synthetic.e1, ...); what a run is, in
ess.paper.synthetic.grid.

A model's ESS is the mean over its layers of ess.paper.synthetic.model_ess. State utilisation is
ESS / TSS, and the memory load of a task (ess.paper.synthetic.grid.memory_items) normalises both:
ESS/kv and TSS/kv for MQAR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ess.paper.stats import (
    CORRELATION_METHODS,
    correlation_with_ci,
)

ESS_COLUMNS = ("tss", "ess_tolerance", "ess_entropy", "utilisation")


def model_level(layers: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per run at one tau: the mean over layers. layers: rows of `model_ess` with a
    "run" column. Returns run, tss, ess_tolerance, ess_entropy, utilisation."""
    at_tol = layers[np.isclose(layers["tolerance"], tolerance)]
    if at_tol.empty:
        raise ValueError(
            f"no ESS at tolerance {tolerance}; measured: {sorted(layers['tolerance'].unique())}"
        )
    return at_tol.groupby("run", as_index=False)[list(ESS_COLUMNS)].mean()


def runs_table(
    metrics: pd.DataFrame, layers: pd.DataFrame, tolerance: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run and one per run x layer x tau, both with the run's labels.

    metrics: one row per run (run, labels, memory_items, test scores; a distillation run names
    its teacher's run); layers: rows of `model_ess` with a run column. The run rows get the
    mean over layers at `tolerance` (ESS_COLUMNS), ess_per_item and tss_per_item (ESS/kv and
    TSS/kv for MQAR), and for a student the teacher's ess_tolerance and test_accuracy.
    """
    missing = set(metrics["run"]) ^ set(layers["run"])
    if missing:
        raise ValueError(f"runs without both scores and ESS: {sorted(missing)}")
    runs = metrics.merge(model_level(layers, tolerance), on="run", validate="one_to_one")
    runs["ess_per_item"] = runs["ess_tolerance"] / runs["memory_items"]
    runs["tss_per_item"] = runs["tss"] / runs["memory_items"]
    teachers = runs.set_index("run")[["ess_tolerance", "test_accuracy"]].add_prefix("teacher_")
    runs = runs.join(teachers, on="teacher")
    per_layer = layers.merge(metrics, on="run", validate="many_to_one")
    return runs, per_layer


def correlations(
    runs: pd.DataFrame,
    y: str,
    xs: Sequence[str],
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Correlation of runs[y] with each runs[x] by each method, with bootstrap CIs over runs.

    Returns one row per (x, method): x, method, r, low, high, n.
    """
    rows = []
    for x in xs:
        for method in methods:
            r, low, high = correlation_with_ci(
                runs[x].to_numpy(),
                runs[y].to_numpy(),
                method=method,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
            rows.append(
                {"x": x, "method": method, "r": r, "low": low, "high": high, "n": len(runs)}
            )
    return pd.DataFrame(rows)


COLUMN_LABELS = {
    "ess_per_item": "ESS/kv",
    "tss_per_item": "TSS/kv",
    "entropy_per_item": "entropy-ESS/kv",
    "test_accuracy": "test accuracy",
    "ess_per_item - tss_per_item": "ESS/kv - TSS/kv",
    "entropy_per_item - tss_per_item": "entropy-ESS/kv - TSS/kv",
}


def experiment_runs(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Rows of a runs or layers table whose comma-joined `experiments` name `experiment`."""
    names = runs["experiments"].fillna("").str.split(",")
    return runs[[experiment in row for row in names]].reset_index(drop=True)


def seed_means(
    runs: pd.DataFrame,
    by: Sequence[str] = ("mixer", "variant", "state_size"),
    columns: Sequence[str] = ("tss", "ess_tolerance", "utilisation", "test_accuracy"),
) -> pd.DataFrame:
    """Means over seeds: one row per `by` group with n_seeds and the means of `columns`."""
    groups = runs.groupby(list(by), sort=True)
    means = groups[list(columns)].mean()
    return means.assign(n_seeds=groups["seed"].nunique()).reset_index()


def downsampled_curve(curve: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """One run's per-step curve (step, loss, accuracy, lr, test_accuracy, ...) in at most
    max_points rows: consecutive blocks of k = ceil(steps / max_points) steps, each row the
    block's mean loss, accuracy and lr at the block's last step, and the block's last test
    score (evaluations are sparse). A curve of at most max_points steps comes back as it is."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    k = -(-len(curve) // max_points)
    if k <= 1:
        return curve
    block = np.arange(len(curve)) // k
    groups = curve.groupby(block, sort=True)
    reduced = groups[["loss", "accuracy", "lr"]].mean()
    reduced.insert(0, "step", groups["step"].last())
    reduced["test_accuracy"] = groups["test_accuracy"].last()  # last non-null of the block
    return reduced.reset_index(drop=True)


def read_curves(paths: Sequence[str], runs: Sequence[str], max_points: int) -> pd.DataFrame:
    """The curves.csv of every run, each `downsampled_curve` as it is read (so that memory
    holds one full curve at a time), with a run column: one table."""
    curves = [
        downsampled_curve(pd.read_csv(path), max_points).assign(run=run)
        for path, run in zip(paths, runs, strict=True)
    ]
    return pd.concat(curves, ignore_index=True)


def aggregate_tables(
    metrics: list[dict],
    ess_paths: Sequence[str],
    curve_paths: Sequence[str],
    runs: Sequence[str],
    tolerance: float,
    curve_points: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rule aggregate_synthetic's three tables: `runs_table` of the runs' metrics (with their
    labels) and their ESS parquet files, and `read_curves` of their curves.csv files (in the
    order of `runs`). Memory: the metrics and ESS rows (a few per run) and one full curve at a
    time beside the reduced ones."""
    layers = pd.concat([pd.read_parquet(path) for path in ess_paths], ignore_index=True)
    run_rows, layer_rows = runs_table(pd.DataFrame(metrics), layers, tolerance)
    return run_rows, layer_rows, read_curves(curve_paths, runs, curve_points)


def smoothed_curves(curves: pd.DataFrame, window: int) -> pd.DataFrame:
    """Training curves (run, step, loss, accuracy, ...) with loss and accuracy replaced by
    their trailing means over `window` steps, per run (fewer at a run's start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    curves = curves.sort_values(["run", "step"]).reset_index(drop=True)
    rolling = curves.groupby("run")[["loss", "accuracy"]].rolling(window, min_periods=1).mean()
    curves[["loss", "accuracy"]] = rolling.reset_index(level=0, drop=True)
    return curves
