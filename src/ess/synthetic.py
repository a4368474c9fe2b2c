"""The statistics of the synthetic-task experiments (docs/method.md §4, E1-E5, E7, E8), pandas
only: the runs table the figures read, the runs of each experiment, correlations with bootstrap
intervals, failure modes, and the per-experiment tables. Whether a claim held is decided in
ess.verdicts; what a run is, in ess.experiments.

A model's ESS is the mean over its layers of ess.measure.model_ess. State utilisation is
ESS / TSS, and the memory load of a task (ess.experiments.memory_items) normalises both: ESS/kv
and TSS/kv for MQAR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ess.stats import (
    CORRELATION_METHODS,
    correlation_with_ci,
    groups_to_decide,
    paired_correlation_difference,
)

FAILURE_MODES = ("learned", "saturation", "collapse")


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


def failure_mode(
    accuracy: float, utilisation: float, learned_accuracy: float, saturation_utilisation: float
) -> str:
    """E2's label of one run: "learned" if accuracy >= learned_accuracy, otherwise
    "saturation" (ESS / TSS >= saturation_utilisation: the state is full) or "collapse"
    (the state is there but unused). Both thresholds are ours; the paper gives none."""
    if accuracy >= learned_accuracy:
        return "learned"
    return "saturation" if utilisation >= saturation_utilisation else "collapse"


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


def _undefined_correlation(pairs: pd.DataFrame) -> str:
    """Why the correlation of the two columns of `pairs` is undefined; "" if it is defined."""
    if len(pairs) < 3:
        return f"undefined: {len(pairs)} runs (needs at least 3)"
    constant = [column for column in pairs.columns if pairs[column].nunique() < 2]
    return f"undefined: {', '.join(constant)} constant" if constant else ""


def correlation_table(
    runs: pd.DataFrame,
    y: str,
    xs: Sequence[str],
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`correlations` of runs[y] with each runs[x], defined or not.

    Returns one row per (x, method): x, method, r, low, high, n, note. Runs where x or y is
    NaN or infinite are left out (n counts the rest). Where the correlation is undefined
    (fewer than 3 runs, x or y constant) r, low and high are NaN and note says why, else "".
    """
    tables = []
    for x in xs:
        pairs = runs[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
        note = _undefined_correlation(pairs)
        if note:
            nan = float("nan")
            rows = [(x, m, nan, nan, nan, len(pairs)) for m in methods]
            table = pd.DataFrame(rows, columns=["x", "method", "r", "low", "high", "n"])
        else:
            table = correlations(pairs, y, [x], methods, n_boot, confidence, seed)
        tables.append(table.assign(note=note))
    return pd.concat(tables, ignore_index=True)


# The labels that make a cell: a run without its seed (ess.experiments.cell_key).
CELL_COLUMNS = ("task", "difficulty", "mixer", "state_size", "variant")


def run_cells(runs: pd.DataFrame) -> list[tuple]:
    """The cell of each run, from its CELL_COLUMNS labels (state_size NaN for attention)."""
    labels = runs[list(CELL_COLUMNS)].astype(str)
    return list(labels.itertuples(index=False, name=None))


def difference_name(better: str, worse: str) -> str:
    """The x of a paired-difference row: "ess_per_item - tss_per_item" (`is_difference`)."""
    return f"{better} - {worse}"


def is_difference(table: pd.DataFrame) -> pd.Series:
    """Which rows of a correlation table are paired differences (x `difference_name`)."""
    return table["x"].str.contains(" - ", regex=False)


def correlation_difference_table(
    runs: pd.DataFrame,
    y: str,
    better: str,
    worse: str,
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    power: float = 0.8,
) -> pd.DataFrame:
    """corr(better, y) - corr(worse, y) over runs, by each method, with its paired
    cell-bootstrap interval (`paired_correlation_difference`: a run's cell, `run_cells`, is
    drawn with all its seeds) and the cells a design like this one needs to decide it at the
    observed difference (`groups_to_decide` at `power`; runs_to_decide = that x runs per cell).

    Returns one row per method: x (`difference_name`), method, r (the difference), low, high,
    n (runs), cells, cells_to_decide, runs_to_decide, note. Runs where a column is NaN or
    infinite are left out; where a correlation is undefined the numbers are NaN and note says
    why (as `correlation_table`).
    """
    pairs = runs[[better, worse, y, *CELL_COLUMNS]].replace([np.inf, -np.inf], np.nan)
    pairs = pairs.dropna(subset=[better, worse, y])
    note = _undefined_correlation(pairs[[better, worse, y]])
    groups = run_cells(pairs)
    n_cells = len(set(groups))
    rows = []
    for method in methods:
        nan = float("nan")
        r, low, high, needed = nan, nan, nan, nan
        if not note:
            r, low, high = paired_correlation_difference(
                pairs[better].to_numpy(),
                pairs[worse].to_numpy(),
                pairs[y].to_numpy(),
                groups,
                method=method,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
            needed = groups_to_decide(r, low, high, n_cells, confidence, power)
        rows.append(
            {
                "x": difference_name(better, worse),
                "method": method,
                "r": r,
                "low": low,
                "high": high,
                "n": len(pairs),
                "cells": n_cells,
                "cells_to_decide": needed,
                "runs_to_decide": needed * len(pairs) / n_cells if n_cells else nan,
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def accuracy_correlations(
    runs: pd.DataFrame,
    xs: Sequence[str] = ("ess_per_item", "tss_per_item"),
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """E1: `correlation_table` of test_accuracy with each x over runs, per task and, unless
    there is exactly one task, over all runs (task "all"); with paired = (better, worse), also
    the `correlation_difference_table` of the two in each of those groups (E1's test).

    runs: one row per run with task, test_accuracy and the xs (and CELL_COLUMNS if paired).
    Returns task, x, method, r, low, high, n, note (and, if paired, cells, cells_to_decide and
    runs_to_decide, NaN on the correlation rows).
    """
    groups = list(runs.groupby("task", sort=True))
    if len(groups) != 1:
        groups.append(("all", runs))
    boot = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    tables = []
    for task, group in groups:
        table = correlation_table(group, "test_accuracy", xs, methods, **boot)
        if paired is not None:
            difference = correlation_difference_table(
                group, "test_accuracy", *paired, methods=methods, **boot
            )
            table = pd.concat([table, difference], ignore_index=True)
        tables.append(table.assign(task=task))
    table = pd.concat(tables, ignore_index=True)
    return table[["task", *table.columns.drop("task")]]


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of an `accuracy_correlations` table over all its runs: task "all", or the
    only task."""
    tasks = table["task"].unique()
    return table[table["task"] == ("all" if "all" in tasks else tasks[0])]


FAILURE_COLUMNS = [
    "run",
    "task",
    "difficulty",
    "memory_items",
    "mixer",
    "state_size",
    "seed",
    "tss",
    "ess_tolerance",
    "utilisation",
    "test_accuracy",
]


def failure_mode_table(
    runs: pd.DataFrame, learned_accuracy: float, saturation_utilisation: float
) -> pd.DataFrame:
    """E2: the runs with a state of fixed size (state_size set; attention's KV cache is not
    one), each labelled by `failure_mode`: FAILURE_COLUMNS and failure_mode."""
    modes = runs.loc[runs["state_size"].notna(), FAILURE_COLUMNS].reset_index(drop=True)
    modes["failure_mode"] = [
        failure_mode(accuracy, utilisation, learned_accuracy, saturation_utilisation)
        for accuracy, utilisation in zip(modes["test_accuracy"], modes["utilisation"], strict=True)
    ]
    return modes


def hardest(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows at each task's hardest difficulty: the most memory_items."""
    most = runs.groupby("task")["memory_items"].transform("max")
    return runs[runs["memory_items"] == most]


# The mixers in the order of the figures' legends; each keeps one colour in every figure.
MIXER_ORDER = ("SA", "LA", "WLA", "GLA", "S6", "GLA-S6")


def mixer_colour(mixer: str) -> str:
    """Matplotlib colour "C<k>" of a mixer by its place in MIXER_ORDER; grey for any other."""
    return f"C{MIXER_ORDER.index(mixer)}" if mixer in MIXER_ORDER else "0.3"


def mixer_label(mixer: str, variant: str) -> str:
    """How a mixer pattern and variant are named in figures: "GLA-S6", "GLA-S6 (alpha1)"."""
    return mixer if variant == "base" else f"{mixer} ({variant})"


def seed_means(
    runs: pd.DataFrame,
    by: Sequence[str] = ("mixer", "variant", "state_size"),
    columns: Sequence[str] = ("tss", "ess_tolerance", "utilisation", "test_accuracy"),
) -> pd.DataFrame:
    """Means over seeds: one row per `by` group with n_seeds and the means of `columns`."""
    groups = runs.groupby(list(by), sort=True)
    means = groups[list(columns)].mean()
    return means.assign(n_seeds=groups["seed"].nunique()).reset_index()


def regulariser_table(runs: pd.DataFrame) -> pd.DataFrame:
    """E4 runs (with their labels reg_lambda and reg_layers: "all" or the regularised layers,
    "0+1") sorted by mixer, layers (all first), lambda and seed."""
    order = ["mixer", "reg_layers", "reg_lambda", "seed"]
    return runs.sort_values(order, key=_all_first).reset_index(drop=True)


def _all_first(column: pd.Series) -> pd.Series:
    return column.replace({"all": ""}) if column.name == "reg_layers" else column


def reference_runs(runs: pd.DataFrame, like: pd.DataFrame, mixer: str = "LA") -> pd.DataFrame:
    """The base runs of `mixer` at the task, difficulty, state_size and seed of any row of
    `like` (e.g. E4's LA reference among the E1 runs)."""
    keys = ["task", "difficulty", "state_size", "seed"]
    candidates = runs[(runs["mixer"] == mixer) & (runs["variant"] == "base")]
    return candidates.merge(like[keys].drop_duplicates(), on=keys).reset_index(drop=True)


DISTILLATION_COLUMNS = [
    "run",
    "task",
    "difficulty",
    "seed",
    "teacher",
    "teacher_ess_tolerance",
    "teacher_test_accuracy",
    "state_size",
    "tss",
    "ess_tolerance",
    "test_accuracy",
    "test_distillation_loss",
]


def distillation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """E5's students (runs with a teacher): DISTILLATION_COLUMNS, by teacher and student TSS."""
    students = runs.loc[runs["teacher"].notna(), DISTILLATION_COLUMNS]
    return students.sort_values(["teacher", "state_size"]).reset_index(drop=True)


def layer_table(layers: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per run x layer at one tau (rows of synthetic_layers): run, mixer, seed, layer,
    layer_mixer, tss, ess_tolerance, ess_entropy, utilisation, test_accuracy."""
    at_tol = layers[np.isclose(layers["tolerance"], tolerance)]
    if at_tol.empty and not layers.empty:
        raise ValueError(
            f"no ESS at tolerance {tolerance}; measured: {sorted(layers['tolerance'].unique())}"
        )
    columns = ["run", "mixer", "seed", "layer", "layer_mixer", "tss", "ess_tolerance"]
    columns += ["ess_entropy", "utilisation", "test_accuracy"]
    return at_tol[columns].sort_values(["mixer", "seed", "layer"]).reset_index(drop=True)


def hybrid_table(per_layer: pd.DataFrame) -> pd.DataFrame:
    """E7, one row per run from `layer_table` rows: mixer (the pattern), seed, test_accuracy
    and per layer i: layer{i}_mixer, layer{i}_ess (tolerance-ESS), layer{i}_utilisation."""
    names = {"layer_mixer": "mixer", "ess_tolerance": "ess", "utilisation": "utilisation"}
    table = per_layer.groupby("run")[["mixer", "seed", "test_accuracy"]].first()
    for layer in sorted(per_layer["layer"].unique()):
        rows = per_layer[per_layer["layer"] == layer].set_index("run")[list(names)]
        rows.columns = [f"layer{layer}_{names[c]}" for c in rows.columns]
        table = table.join(rows)
    return table.reset_index().sort_values(["mixer", "seed"], ignore_index=True)


HYBRID_COLUMN_NAMES = {"mixer": "pattern", "test_accuracy": "accuracy"}
HYBRID_LAYER_COLUMN_NAMES = {"mixer": "mixer", "ess": "ESS", "utilisation": "ESS/TSS"}


def hybrid_column_name(column: str) -> str:
    """The shown name of a `hybrid_table` column: layer0_ess -> "layer 0 ESS", mixer ->
    "pattern", test_accuracy -> "accuracy"; any other column keeps its name."""
    if column in HYBRID_COLUMN_NAMES or not column.startswith("layer"):
        return HYBRID_COLUMN_NAMES.get(column, column)
    layer, _, value = column.removeprefix("layer").partition("_")
    return f"layer {layer} {HYBRID_LAYER_COLUMN_NAMES[value]}"


def _per_item(level: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`model_level` rows with the run labels and ESS/kv, entropy-ESS/kv and TSS/kv."""
    level = level.join(labels, on="run")
    level["ess_per_item"] = level["ess_tolerance"] / level["memory_items"]
    level["entropy_per_item"] = level["ess_entropy"] / level["memory_items"]
    level["tss_per_item"] = level["tss"] / level["memory_items"]
    return level


def tolerance_correlations(
    layers: pd.DataFrame,
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """E8: `accuracy_correlations` of test accuracy with ESS/kv at each tau of `layers`
    (largest first), with entropy-ESS/kv and with TSS/kv; for each ESS measure also its paired
    difference with TSS/kv (x "ess_per_item - tss_per_item", E1's test at that measure).

    layers: per run x layer x tau rows (synthetic_layers) of the runs to correlate over, with
    memory_items, test_accuracy and CELL_COLUMNS. Returns measure ("tolerance-ESS",
    "entropy-ESS", "TSS"), tolerance (NaN but for tolerance-ESS), task, x, method, r, low,
    high, n, note, cells, cells_to_decide, runs_to_decide (the last three on difference rows).
    """
    columns = ["memory_items", "test_accuracy", *CELL_COLUMNS]
    labels = layers.groupby("run")[columns].first()
    boot = {"methods": methods, "n_boot": n_boot, "confidence": confidence, "seed": seed}
    taus = sorted(layers["tolerance"].unique(), reverse=True)
    tables = []
    for tau in taus:
        level = _per_item(model_level(layers, tau), labels)
        paired = ("ess_per_item", "tss_per_item")
        table = accuracy_correlations(level, ["ess_per_item"], paired=paired, **boot)
        tables.append(table.assign(measure="tolerance-ESS", tolerance=tau))
    level = _per_item(model_level(layers, taus[0]), labels)
    for measure, x in (("entropy-ESS", "entropy_per_item"), ("TSS", "tss_per_item")):
        paired = (x, "tss_per_item") if measure != "TSS" else None
        table = accuracy_correlations(level, [x], paired=paired, **boot)
        tables.append(table.assign(measure=measure, tolerance=float("nan")))
    table = pd.concat(tables, ignore_index=True)
    return table[["measure", "tolerance", *table.columns.drop(["measure", "tolerance"])]]


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
