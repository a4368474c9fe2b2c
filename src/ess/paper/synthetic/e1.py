"""E1: accuracy tracks ESS/kv better than TSS/kv (docs/method.md §4).

Its runs (every task difficulty x mixer x TSS x seed; attention once) are also E2's and E8's.
The table: Spearman and Pearson correlations of accuracy with ESS/kv and TSS/kv per task and
pooled, with the paired bootstrap of their difference over cells (`correlation_difference_table`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from ess.paper.publish import interval_text
from ess.paper.stats import (
    CORRELATION_METHODS,
    groups_to_decide,
    paired_correlation_difference,
    positive_verdict,
)
from ess.paper.synthetic.captions import bootstrap_text, tasks_text, unique
from ess.paper.synthetic.grid import (
    Experiment,
    Labels,
    attention_only,
    run_labels,
)
from ess.paper.synthetic.tables import (
    COLUMN_LABELS,
    correlations,
)
from ess.paper.synthetic.verdicts import Verdict


def runs(synthetic: dict) -> Iterator[tuple[Labels, dict, dict]]:
    """E1 (shared by E2 and E8): every task difficulty x mixer x TSS x seed; attention once."""
    e1 = synthetic["e1"]
    for task, difficulties in e1["tasks"].items():
        for difficulty in difficulties:
            for mixer in e1["mixers"]:
                sizes = e1["state_sizes"][:1] if attention_only(mixer) else e1["state_sizes"]
                for state_size in sizes:
                    for seed in synthetic["seeds"]:
                        labels = run_labels(task, difficulty, mixer, state_size, seed)
                        yield labels, {"state_size": state_size}, {}


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


# The labels that make a cell: a run without its seed (ess.paper.synthetic.grid.cell_key).
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


E1_CLAIM = "test accuracy correlates much better with ESS/kv than with TSS/kv"


def correlation_verdict(
    table: pd.DataFrame, better: str, worse: str, method: str = "spearman", claim: str = E1_CLAIM
) -> Verdict:
    """Does accuracy correlate better with `better` than with `worse`? Decided by the paired
    difference r(better) - r(worse) and its cell-bootstrap interval (docs/method.md E1).

    table: `accuracy_correlations(..., paired=(better, worse))` rows of one group: the two
    correlation rows and the difference row (x `difference_name(better, worse)`).
    "holds": the difference's interval lies above 0; "does not hold": below 0; "inconclusive
    (the difference's interval contains 0)" otherwise, with the cells (and runs) that would
    decide it at the observed difference; "undefined" when a correlation is NaN.
    """
    rows = table[table["method"] == method].set_index("x")
    name = difference_name(better, worse)
    if name not in rows.index:
        raise ValueError(f"no paired-difference row {name!r}: use accuracy_correlations(paired=)")
    b, w, d = rows.loc[better], rows.loc[worse], rows.loc[name]
    label = {x: COLUMN_LABELS.get(x, x) for x in (better, worse)}
    if np.isnan(b["r"]) or np.isnan(w["r"]) or np.isnan(d["r"]):
        notes = "; ".join(f"{label[x]}: {rows.loc[x, 'note']}" for x in (better, worse))
        return Verdict(claim, "undefined", f"{method} r {notes}")
    evidence = (
        f"{method} r = {interval_text(b['r'], b['low'], b['high'])} with {label[better]} vs "
        f"{interval_text(w['r'], w['low'], w['high'])} with {label[worse]} over "
        f"{int(b['n'])} runs; paired difference {interval_text(d['r'], d['low'], d['high'])} "
        f"(cells of seeds resampled, {int(d['cells'])} cells)"
    )
    verdict = positive_verdict(d["low"], d["high"])
    if verdict == "not shown":
        needed = d["cells_to_decide"]
        if np.isfinite(needed):
            evidence += (
                f"; at this difference about {int(needed)} cells ({int(d['runs_to_decide'])} "
                f"runs) would decide it"
            )
        return Verdict(claim, "inconclusive (the difference's interval contains 0)", evidence)
    return Verdict(claim, "holds" if verdict == "held" else "does not hold", evidence)


def grid_text(synthetic: dict, labels: list[Labels]) -> str:
    """E1's grid in words (E2's and E8's too): tasks, mixers, TSS values, attention's KV cache."""
    mixers = ", ".join(unique(label.mixer for label in labels))
    sizes = sorted({label.state_size for label in labels if label.state_size is not None})
    attention = unique(label.mixer for label in labels if label.state_size is None)
    cache = f" ({', '.join(attention)}: the KV cache)" if attention else ""
    return f"{tasks_text(synthetic, labels)}; mixers {mixers}; TSS {sizes}{cache}"


EXPERIMENT = Experiment(
    name="e1",
    claim=E1_CLAIM,
    figures=("e1_accuracy_vs_ess",),
    tables=("e1_correlations",),
    runs=runs,
    verdict=correlation_verdict,
    grid_text=grid_text,
    settings_parts=lambda settings: [bootstrap_text(settings)],
)
