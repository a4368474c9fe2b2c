"""E6's statistics: from ESS traces along delimited text to the drop at each boundary, the
boundary-aligned profile, the paper's hierarchy of modulation across mixers, and the relation of
the drop to recall (docs/method.md, E6).

`aggregate` is rule aggregate_e6: the workflow's script reads the files and calls it; the
notebooks only plot and tabulate its tables. Every interval is ess.paper.stats's percentile
bootstrap, and "significant" is ess.paper.stats.excludes_zero of it, the one definition used across
the project.

Inputs:

- traces: one row per (model, task, seed, layer, position) with ESS columns (`layer_traces`);
  task is a delimiter or a control;
- sequences: {(model, delimiter, seed): ess.paper.e6.delimiters.DelimitedSequence}, its `.controls`
  holding the control sequences built from the same passages.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ess.outputs import TAU_PREFIX
from ess.paper.e6.boundaries import as_trace, bound_flags, boundary_profile, delimiter_drop
from ess.paper.e6.delimiters import DelimitedSequence
from ess.paper.stats import (
    bootstrap_indices,
    bootstrap_mean_ci,
    correlation_with_ci,
    excludes_zero,
    minimum_detectable_effect,
)

ALL_LAYERS = -1  # the mean over layers, "average ESS"
LAYER_GROUPS = ("early", "middle", "late")
MEASURES = ("drop", "drop_vs_control")
METRICS = ("ess_tolerance", "ess_entropy")  # analysed at every layer; the taus over layers only
KEYS = ("model", "delimiter", "control", "seed", "layer", "metric")  # of boundary_drops' rows
RECALL_COLUMNS = ("recall_gain", "recall_gain_lo", "recall_gain_hi", "ppl_ratio", "n_second")


# ---------------------------------------------------------------------------------------------
# Traces


def head_means(ess: pd.DataFrame, values: Sequence[str], length: int) -> pd.DataFrame:
    """One ESS table reduced to what E6's statistics read: per (model, task, seed, layer,
    position), the mean of `values` over the heads/channels (and mixers) and at_bound, whether
    any of them is at the bound min(i, L-i) on ess_tolerance (ess.paper.e6.boundaries.bound_flags).

    ess: one row per (model, task, seed, layer, mixer, head, position), as rule measure_e6_ess
    writes it; every head of a layer must be in this table (a layer is never split between
    jobs). length: L of the sequence. Rule aggregate_e6 reduces each file as it reads it.
    """
    keys = ["model", "task", "seed", "layer", "position"]
    flagged = ess[keys].assign(
        at_bound=bound_flags(ess["ess_tolerance"].to_numpy(), ess["position"].to_numpy(), length)
    )
    means = ess.groupby(keys, as_index=False)[list(values)].mean()
    at_bound = flagged.groupby(keys, as_index=False)["at_bound"].any()
    return means.merge(at_bound, on=keys)


def read_head_means(paths: Sequence[str | Path], lengths: Mapping[tuple[str, int], int]):
    """`head_means` of every ESS table in `paths`, each reduced as it is read, concatenated:
    memory holds one table and the reduced traces, never every head of every file.

    lengths: {(model, seed): L} of each sequence (a table's model and seed are its labels).
    Returns one row per (model, task, seed, layer, position) with METRICS, the tau columns, tss
    and at_bound.
    """
    frames = []
    for path in paths:
        table = pd.read_parquet(path)
        taus = [column for column in table.columns if column.startswith(TAU_PREFIX)]
        model, seed = table["model"].iloc[0], int(table["seed"].iloc[0])
        values = [*METRICS, *taus, "tss"]
        frames.append(head_means(table, values, lengths[model, seed]))
        del table  # before the next file is read
    return pd.concat(frames, ignore_index=True)


def layer_traces(per_layer: pd.DataFrame, values: Sequence[str]) -> pd.DataFrame:
    """`head_means` of every layer plus layer ALL_LAYERS: the mean of those over layers, at_bound
    where any layer has a head at the bound."""
    over_layers = per_layer.groupby(["model", "task", "seed", "position"], as_index=False).agg(
        **{value: (value, "mean") for value in values}, at_bound=("at_bound", "any")
    )
    keys = ["model", "task", "seed", "layer", "position"]
    frame = pd.concat([per_layer, over_layers.assign(layer=ALL_LAYERS)], ignore_index=True)
    return frame[[*keys, *values, "at_bound"]]


def layer_groups(layers: Sequence[int]) -> dict[int, str]:
    """Each analysed layer's group: the sorted layers cut into thirds (np.array_split), named
    LAYER_GROUPS; with fewer than 3 layers the later groups stay empty."""
    chunks = np.array_split(np.sort(np.asarray(layers, dtype=np.int64)), len(LAYER_GROUPS))
    return {
        int(layer): name
        for name, chunk in zip(LAYER_GROUPS, chunks, strict=True)
        for layer in chunk
    }


def group_traces(traces: pd.DataFrame, values: Sequence[str]) -> pd.DataFrame:
    """Traces per layer group: the mean over each model's early / middle / late layers
    (`layer_groups`), and group "all" = layer ALL_LAYERS. Columns: model, task, seed, group,
    position, values."""
    frames = [traces[traces["layer"] == ALL_LAYERS].drop(columns="layer").assign(group="all")]
    for _model, model_traces in traces[traces["layer"] != ALL_LAYERS].groupby("model"):
        groups = layer_groups(model_traces["layer"].unique())
        labelled = model_traces.assign(group=model_traces["layer"].map(groups))
        frames.append(
            labelled.groupby(["model", "task", "seed", "group", "position"], as_index=False)[
                list(values)
            ].mean()
        )
    keys = ["model", "task", "seed", "group", "position"]
    return pd.concat(frames, ignore_index=True)[[*keys, *values]]


def check_controls(
    sequences: Mapping[tuple[str, str, int], DelimitedSequence], reference: str
) -> None:
    """The controls of every delimiter's sequence must equal those of `reference`'s, from which
    they were captured: a control must not depend on the delimiter."""
    for (model, delimiter, seed), sequence in sequences.items():
        for control, built in sequence.controls.items():
            captured = sequences[model, reference, seed].controls[control].input_ids
            if not np.array_equal(built.input_ids, captured):
                raise ValueError(
                    f"control {control!r} of {delimiter!r} ({model}, seed {seed}) differs from "
                    f"the one captured with {reference!r}: controls must not depend on the "
                    "delimiter"
                )


# ---------------------------------------------------------------------------------------------
# The drop at every boundary, and its summaries


def boundary_drops(
    traces: pd.DataFrame,
    sequences: Mapping[tuple[str, str, int], DelimitedSequence],
    controls: Sequence[str],
    metrics: Sequence[str],
    before: int,
    after: int,
) -> pd.DataFrame:
    """ess.paper.e6.boundaries.delimiter_drop for every (model, delimiter, seed, layer, control,
    metric): one row per boundary, with those keys as columns. traces: `layer_traces` (its at_bound
    column flags near_end boundaries)."""
    trace_of = dict(tuple(traces.groupby(["model", "task", "seed", "layer"])))
    frames, keys = [], []
    for (model, delimiter, seed), sequence in sequences.items():
        for layer in sorted(traces.loc[traces["model"] == model, "layer"].unique()):
            for control in controls:
                reference = sequence.controls[control]
                for metric in metrics:
                    main = trace_of[model, delimiter, seed, layer]
                    other = trace_of[model, control, seed, layer]
                    drops = delimiter_drop(
                        main,
                        sequence.boundaries,
                        other,
                        reference.boundaries,
                        before=before,
                        after=after,
                        at_bound=main,
                        control_at_bound=other,
                        seq_len=sequence.length,
                        control_seq_len=reference.length,
                        value=metric,
                    )
                    frames.append(drops)
                    keys.append((model, delimiter, control, seed, layer, metric))
    table = pd.concat(frames, ignore_index=True)
    rows_per_frame = [len(frame) for frame in frames]
    for name, values in zip(KEYS, zip(*keys, strict=True), strict=True):
        table[name] = pd.Series(values).repeat(rows_per_frame).to_numpy()  # once, not per frame
    return table


def summarise(
    values: np.ndarray, n_boot: int, confidence: float, seed: int
) -> dict[str, float | int | bool]:
    """n, mean, lo, hi (ess.paper.stats.bootstrap_mean_ci), mde
    (ess.paper.stats.minimum_detectable_effect of that interval) and significant
    (ess.paper.stats.excludes_zero); NaN values are left out, an empty sample gives NaN."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "lo": nan, "hi": nan, "mde": nan, "significant": False}
    mean, lo, hi = bootstrap_mean_ci(x, n_boot, confidence, seed)
    mde = minimum_detectable_effect(lo, hi, confidence) if x.size > 1 else float("nan")
    return {
        "n": int(x.size),
        "mean": mean,
        "lo": lo,
        "hi": hi,
        "mde": mde,
        "significant": excludes_zero(lo, hi),
    }


def summarise_drops_by(
    boundaries: pd.DataFrame,
    keys: Sequence[str],
    n_boot: int,
    confidence: float,
    seed: int,
    measures: Sequence[str] = MEASURES,
) -> pd.DataFrame:
    """Per group of `keys`, per measure and per boundary class ("interior", and "near_end":
    a head at the bound min(i, L-i) in its windows): `summarise` over boundaries (seeds
    pooled)."""
    rows = []
    for key, group in boundaries.groupby(list(keys)):
        for name, near in (("interior", False), ("near_end", True)):
            chosen = group[group["near_end"] == near]
            for measure in measures:
                row = dict(zip(keys, key, strict=True)) | {"measure": measure, "boundaries": name}
                rows.append(row | summarise(chosen[measure], n_boot, confidence, seed))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The boundary-aligned profile


def boundary_profiles(
    traces: pd.DataFrame,
    sequences: Mapping[tuple[str, str, int], DelimitedSequence],
    controls: Sequence[str],
    offsets: Sequence[int],
    metrics: Sequence[str],
    near_end: pd.DataFrame,
) -> pd.DataFrame:
    """ESS at each offset from each interior boundary, delimited and in each control.

    traces: `group_traces` output (a `group` column). near_end: one row per (model, delimiter,
    seed, boundary) with a bool near_end (`boundary_drops`' flag on the mean over layers: a
    head of some layer at the bound in the windows, in some condition); those boundaries are
    left out. Returns one row per (model, delimiter, condition, seed, group, boundary, offset,
    metric): value (ess.paper.e6.boundaries.boundary_profile).
    """
    trace_of = dict(tuple(traces.groupby(["model", "task", "seed", "group"])))
    flagged = near_end.groupby(["model", "delimiter", "seed", "boundary"])["near_end"].any()
    rows = [pd.DataFrame(columns=["boundary", "offset", "split", "value"])]
    for (model, delimiter, seed), sequence in sequences.items():
        conditions = {"delimited": (delimiter, sequence)}
        conditions |= {c: (c, sequence.controls[c]) for c in controls}
        interior = ~flagged.loc[model, delimiter, seed].sort_index().to_numpy(bool)
        groups = traces.loc[traces["model"] == model, "group"].unique()
        for (condition, (task, built)), group, metric in itertools.product(
            conditions.items(), groups, metrics
        ):
            trace, _ = as_trace(trace_of[model, task, seed, group], built.length, metric)
            profile = boundary_profile(
                trace, built.boundaries, built.passage_spans, built.length, offsets
            )
            profile = profile[interior[profile["boundary"].to_numpy()]]
            keys = dict(model=model, delimiter=delimiter, condition=condition, seed=seed)
            rows.append(profile.assign(**keys, group=group, metric=metric))
    return pd.concat(rows, ignore_index=True)


def summarise_profiles(
    profiles: pd.DataFrame, n_boot: int, confidence: float, seed: int
) -> pd.DataFrame:
    """Mean ESS at each offset over boundaries (seeds pooled), with `summarise`'s interval,
    per (model, delimiter, condition, group, metric, offset)."""
    keys = ["model", "delimiter", "condition", "group", "metric", "offset"]
    rows = [
        dict(zip(keys, key, strict=True)) | summarise(group["value"], n_boot, confidence, seed)
        for key, group in profiles.groupby(keys)
    ]
    columns = [*keys, "n", "mean", "lo", "hi", "mde", "significant"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# The hierarchy of modulation, and the drop against recall


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-a of two (n,) vectors: (concordant - discordant pairs) / (n (n-1) / 2);
    a tie in either counts as neither."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got {x.shape}, {y.shape}")
    i, j = np.triu_indices(x.size, k=1)
    return float(np.sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])) / i.size)


def hierarchy_test(
    samples: Mapping[str, np.ndarray],
    order: Sequence[str],
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, float | int | bool | str]:
    """Does modulation fall along `order` (the paper's SA > GLA > WLA > LA)?

    samples: {model: its per-boundary drops}; order: the models, highest modulation first.
    tau = Kendall's tau of the models' mean drops against the stated order (1 = exactly that
    order, -1 = reversed). Interval: resample each model's boundaries with replacement
    (ess.paper.stats.bootstrap_indices, seed + the model's index) and recompute tau. p_permutation:
    the share of the n! orderings of the models whose tau is >= the observed one (exact; the
    chance that a random order agrees as well). Returns tau, lo, hi, p_permutation, significant
    (ess.paper.stats.excludes_zero of the interval), n_models, order, means.
    """
    missing = [model for model in order if model not in samples]
    if missing:
        raise ValueError(f"hierarchy models {missing} have no drops; have {sorted(samples)}")
    if len(order) < 2:
        raise ValueError(f"the hierarchy needs at least 2 models, got {list(order)}")
    values = [np.asarray(samples[model], dtype=float) for model in order]
    values = [v[np.isfinite(v)] for v in values]
    empty = [model for model, v in zip(order, values, strict=True) if v.size == 0]
    if empty:
        raise ValueError(f"hierarchy models {empty} have no finite drops")
    stated = -np.arange(len(order), dtype=float)  # first = highest
    means = np.array([v.mean() for v in values])
    tau = kendall_tau(means, stated)
    boot = np.stack(
        [v[bootstrap_indices(v.size, n_boot, seed + k)].mean(axis=1) for k, v in enumerate(values)],
        axis=1,
    )  # (n_boot, models)
    taus = np.array([kendall_tau(row, stated) for row in boot])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (float(q) for q in np.quantile(taus, [alpha, 1.0 - alpha]))
    permuted = [
        kendall_tau(means, stated[list(p)]) for p in itertools.permutations(range(len(order)))
    ]
    return {
        "order": " > ".join(order),
        "n_models": len(order),
        "tau": tau,
        "lo": lo,
        "hi": hi,
        "p_permutation": float(np.mean(np.asarray(permuted) >= tau - 1e-12)),
        "significant": excludes_zero(lo, hi),
        "means": ", ".join(f"{m}: {x:.3f}" for m, x in zip(order, means, strict=True)),
    }


def recall_correlation(
    drops: pd.DataFrame, method: str, n_boot: int, seed: int, confidence: float
) -> dict[str, float | int | str]:
    """Correlation of the mean drop with bigram recall over the models whose recall gain is
    measured: its interval excludes 0 (ess.paper.stats.excludes_zero).

    drops: one row per model with mean (the drop), recall_gain, recall_gain_lo, recall_gain_hi.
    Returns n_models (all with both numbers), n_measured (those used), r, lo, hi, and note
    (why r is NaN: fewer than 3 measured models or a constant column).
    """
    rows = drops.dropna(subset=["mean", "recall_gain"])
    # a boolean array, not a list: an empty list would select no columns, not no rows
    mask = np.array(
        [excludes_zero(lo, hi) for lo, hi in rows[["recall_gain_lo", "recall_gain_hi"]].to_numpy()],
        dtype=bool,
    )
    measured = rows.loc[mask]
    out = {"method": method, "n_models": len(rows), "n_measured": len(measured)}
    out |= {"models": ", ".join(measured["model"]), "r": np.nan, "lo": np.nan, "hi": np.nan}
    try:
        r, lo, hi = correlation_with_ci(
            measured["mean"], measured["recall_gain"], method, n_boot, seed, confidence
        )
        return out | {"r": r, "lo": lo, "hi": hi, "note": ""}
    except ValueError as error:  # fewer than 3 models, or a constant column
        return out | {"note": str(error)}


def recall_correlations(
    by_model: pd.DataFrame, method: str, n_boot: int, seed: int, confidence: float
) -> pd.DataFrame:
    """`recall_correlation` per (delimiter, control, metric, measure) of a per-model summary
    (one row per model in each group, with its recall columns)."""
    keys = ["delimiter", "control", "metric", "measure"]
    return pd.DataFrame(
        [
            dict(zip(keys, key, strict=True))
            | recall_correlation(group, method, n_boot, seed, confidence)
            for key, group in by_model.groupby(keys)
        ]
    )


def hierarchy_table(
    boundaries: pd.DataFrame,
    order: Sequence[str],
    control: str,
    n_boot: int,
    confidence: float,
    seed: int,
    measure: str = "drop_vs_control",
) -> pd.DataFrame:
    """`hierarchy_test` of the interior boundaries' `measure` (mean over layers, against
    `control`) per metric, for each delimiter and for all delimiters pooled ("all").
    Empty when `order` is empty."""
    if not order:
        return pd.DataFrame()
    chosen = boundaries[
        (boundaries["layer"] == ALL_LAYERS)
        & ~boundaries["near_end"].astype(bool)
        & (boundaries["control"] == control)
        & boundaries["model"].isin(order)
    ]
    rows = []
    for metric, by_metric in chosen.groupby("metric"):
        parts = [*by_metric.groupby("delimiter"), ("all", by_metric)]
        for delimiter, group in parts:
            samples = {m: g[measure].to_numpy() for m, g in group.groupby("model")}
            row = {"metric": metric, "delimiter": delimiter, "control": control}
            rows.append(row | hierarchy_test(samples, order, n_boot, confidence, seed))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Rule aggregate_e6: every table above from the ESS tables, the sequences and recall


def all_boundary_drops(
    traces: pd.DataFrame,
    sequences: Mapping[tuple[str, str, int], DelimitedSequence],
    controls: Sequence[str],
    before: int,
    after: int,
) -> pd.DataFrame:
    """`boundary_drops` of every layer at METRICS, and of the mean over layers (ALL_LAYERS) at
    every tau column of `traces` (`tau_column`; e6_drop_by_tau reads the mean over layers
    only)."""
    taus = [column for column in traces.columns if column.startswith(TAU_PREFIX)]
    windows = dict(before=before, after=after)
    over_layers = traces[traces["layer"] == ALL_LAYERS]
    return pd.concat(
        [
            boundary_drops(traces, sequences, controls, METRICS, **windows),
            boundary_drops(over_layers, sequences, controls, taus, **windows),
        ],
        ignore_index=True,
    )


def aggregate(
    per_layer: pd.DataFrame,
    sequences: Mapping[tuple[str, str, int], DelimitedSequence],
    recall: Sequence[Mapping],
    controls: Sequence[str],
    before: int,
    after: int,
    offsets: Sequence[int],
    hierarchy: Sequence[str],
    correlation: str,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """E6's statistics, as rule aggregate_e6 writes them.

    per_layer: `head_means` of every ESS table (every model, task and seed), concatenated: one
    row per (model, task, seed, layer, position) with METRICS, tau columns, tss and at_bound;
    sequences: as for `boundary_drops`; recall: one record per model (model and
    RECALL_COLUMNS, as rule bigram_recall writes them); controls: the first is the hierarchy's;
    the rest are the e6 and stats config values of the same names. Returns:

    - traces: `layer_traces` (mean over heads; layer ALL_LAYERS = the mean over layers);
    - boundaries: `all_boundary_drops`, one row per boundary;
    - by_layer: `summarise_drops_by` per model, delimiter, control, metric (METRICS) and layer;
    - by_model: the same on the mean over layers at every metric and tau, with the model's
      recall columns;
    - correlation: `recall_correlations` of the interior rows of by_model at METRICS;
    - profile: `summarise_profiles` of the per-layer-group profiles at METRICS, interior
      boundaries only;
    - hierarchy: `hierarchy_table` at METRICS against controls[0].
    """
    stats = dict(n_boot=n_boot, confidence=confidence, seed=seed)
    taus = [column for column in per_layer.columns if column.startswith(TAU_PREFIX)]
    traces = layer_traces(per_layer, [*METRICS, *taus, "tss"])
    boundaries = all_boundary_drops(traces, sequences, controls, before, after)
    keys = ["model", "delimiter", "control", "metric", "layer"]
    by_layer = summarise_drops_by(boundaries, keys, **stats)
    by_model = by_layer[by_layer["layer"] == ALL_LAYERS].drop(columns="layer")
    recall_table = pd.DataFrame(list(recall), columns=["model", *RECALL_COLUMNS])
    by_model = by_model.merge(recall_table, on="model", how="left")
    interior = by_model[(by_model["boundaries"] == "interior") & by_model["metric"].isin(METRICS)]
    grouped = group_traces(traces, METRICS)
    near_end = boundaries[boundaries["layer"] == ALL_LAYERS]
    profiles = boundary_profiles(grouped, sequences, controls, offsets, METRICS, near_end)
    main = boundaries[boundaries["metric"].isin(METRICS)]
    return {
        "traces": traces,
        "boundaries": boundaries,
        "by_layer": by_layer[by_layer["metric"].isin(METRICS)],
        "by_model": by_model,
        "correlation": recall_correlations(interior, correlation, n_boot, seed, confidence),
        "profile": summarise_profiles(profiles, **stats),
        "hierarchy": hierarchy_table(main, hierarchy, controls[0], **stats),
    }
