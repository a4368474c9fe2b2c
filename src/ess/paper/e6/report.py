"""What E6's figures and tables state, from the tables of ess.paper.e6.modulation.aggregate (rule
aggregate_e6): the tables themselves, the verdict on the paper's drop-recall claim, and the
text of the captions (docs/method.md, E6). The notebooks plot and format what these return.

Inputs are the aggregate's tables: by_model (`e6_drop.parquet`: one row per model, delimiter,
control, metric, measure and boundary class, with n, mean, lo, hi, mde, significant and the
model's recall columns), correlation (`e6_recall_correlation.parquet`), traces and boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from ess.outputs import TAU_PREFIX, tau_of
from ess.paper.publish import interval_text
from ess.paper.stats import positive_verdict
from ess.paper.synthetic.verdicts import Verdict

RECALL_CLAIM = "a larger ESS drop at delimiters goes with better recall across models"


def metric_label(metric: str) -> str:
    """How captions name an ESS column: "tolerance-ESS", "entropy-ESS", or "tau 0.001" for a
    tau column (ess.outputs.tau_column)."""
    if metric.startswith(TAU_PREFIX):
        return f"tau {tau_of(metric):g}"
    return {"ess_tolerance": "tolerance-ESS", "ess_entropy": "entropy-ESS"}.get(metric, metric)


# ---------------------------------------------------------------------------------------------
# Tables


def delimiter_drop_table(by_model: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Table e6_delimiter_drop: per model, delimiter and control (interior boundaries, the mean
    over layers at `metric`), the drop and the drop vs control with their intervals, and the
    model's recall. Columns: model, delimiter, control, metric, n_boundaries, drop_mean, drop_lo,
    drop_hi, drop_vs_control_mean, drop_vs_control_lo, drop_vs_control_hi, recall_gain,
    recall_gain_lo, recall_gain_hi, ppl_ratio."""
    data = by_model[(by_model["boundaries"] == "interior") & (by_model["metric"] == metric)]
    wide = data.pivot_table(
        index=["model", "delimiter", "control"], columns="measure", values=["n", "mean", "lo", "hi"]
    )
    wide.columns = [f"{measure}_{stat}" for stat, measure in wide.columns]
    recall_columns = ["recall_gain", "recall_gain_lo", "recall_gain_hi", "ppl_ratio"]
    recall = data.groupby("model")[recall_columns].first()
    table = wide.reset_index().merge(recall.reset_index(), on="model", how="left")
    table = table.rename(columns={"drop_n": "n_boundaries"}).drop(columns="drop_vs_control_n")
    columns = ["model", "delimiter", "control", "n_boundaries"]
    columns += [f"{m}_{s}" for m in ("drop", "drop_vs_control") for s in ("mean", "lo", "hi")]
    table = table[columns + recall_columns]
    table["n_boundaries"] = table["n_boundaries"].astype(int)
    table.insert(3, "metric", metric)
    return table


def drop_by_tau_table(by_model: pd.DataFrame, control: str, measure: str) -> pd.DataFrame:
    """Table e6_drop_by_tau: per model and delimiter (interior boundaries, the mean over layers,
    against `control`), `measure` at every tau column and at entropy-ESS. Columns: model,
    delimiter, metric (categorical: the taus from the largest, then ess_entropy), n, mean, lo,
    hi, mde, significant; sorted by model, delimiter and metric. ess_tolerance is left out: its
    tau is one of the tau columns."""
    data = by_model[
        (by_model["boundaries"] == "interior")
        & (by_model["control"] == control)
        & (by_model["measure"] == measure)
        & (by_model["metric"] != "ess_tolerance")
    ]
    metrics = [m for m in data["metric"].unique() if m.startswith(TAU_PREFIX)]
    if not metrics:
        raise ValueError(
            f"by_model has no {TAU_PREFIX} rows: rerun rules measure_e6_ess and aggregate_e6"
        )
    metrics = [*sorted(metrics, key=tau_of, reverse=True), "ess_entropy"]
    table = data[["model", "delimiter", "metric", "n", "mean", "lo", "hi", "mde", "significant"]]
    table = table.assign(metric=pd.Categorical(table["metric"], metrics))
    return table.sort_values(["model", "delimiter", "metric"])


# ---------------------------------------------------------------------------------------------
# The drop against recall: the paper's claim


def recall_correlation_verdict(row: pd.Series) -> tuple[str, str]:
    """(label, verdict) of one drop-recall correlation (a row of the aggregate's correlation
    table): verdict ess.paper.stats.positive_verdict of its interval ("held", "opposite", "not
    shown" or "untested": fewer than 3 models with measured recall, or a constant column)."""
    verdict = positive_verdict(row["lo"], row["hi"])
    if verdict == "untested":
        return f"r not computed ({row['n_measured']} model(s) with measured recall)", verdict
    label = (
        f"{row['method']} r = {interval_text(row['r'], row['lo'], row['hi'])}, "
        f"{row['n_measured']} of {row['n_models']} models"
    )
    return label, verdict


def recall_claim(verdicts: Iterable[str], models: Sequence[str]) -> str:
    """The sentence on RECALL_CLAIM from the verdicts of its delimiter/control pairs
    (`recall_correlation_verdict`): it holds if every tested pair "held", partly holds (k of n
    parts, as ess.paper.synthetic.verdicts words it) if some did, and is not tested when no pair
    could be (too few models)."""
    tested = [verdict for verdict in verdicts if verdict != "untested"]
    if not tested:
        return (
            f"The paper's claim ({RECALL_CLAIM}) is not tested here: the correlation needs at "
            f"least 3 models and this run has {len(models)} ({', '.join(models)})."
        )
    n_held = sum(verdict == "held" for verdict in tested)
    partly = f"partly holds ({n_held} of {len(tested)} parts)"
    held = "holds" if n_held == len(tested) else partly if n_held else "does not hold"
    return (
        f"The paper's claim ({RECALL_CLAIM}) {held}: the correlation's CI lies above 0 for "
        f"{n_held} of {len(tested)} delimiter/control pairs ({len(models)} models)."
    )


def recall_verdict(
    pairs: Mapping[tuple[str, str], tuple[str, str]], models: Sequence[str]
) -> Verdict:
    """RECALL_CLAIM as a `Verdict` (the record results/summary.md reads), decided as
    `recall_claim` words it. pairs: {(delimiter, control): (label, verdict)} of
    `recall_correlation_verdict`; the evidence lists each pair's label and verdict."""
    evidence = "; ".join(
        f"{delimiter} vs {control}: {label} ({verdict})"
        for (delimiter, control), (label, verdict) in pairs.items()
    )
    tested = [verdict for _, verdict in pairs.values() if verdict != "untested"]
    if not tested:
        verdict = f"untested (the correlation needs at least 3 models, this run has {len(models)})"
        return Verdict(RECALL_CLAIM, verdict, evidence or "no delimiter/control pair")
    n_held = sum(verdict == "held" for verdict in tested)
    if n_held == len(tested):
        verdict = "holds"
    elif n_held:
        verdict = f"partly holds ({n_held} of {len(tested)} parts)"
    else:
        verdict = "does not hold"
    return Verdict(RECALL_CLAIM, verdict, f"{evidence}; {len(models)} models")


def positive_drops_text(drops: pd.DataFrame) -> str:
    """Per model, the delimiter/control pairs whose drop is significant (its interval excludes
    0) and positive: "m1: eos vs removed, ...; m2: none". drops: one row per model, delimiter
    and control (model, delimiter, control, mean, significant)."""
    pairs = {model: [] for model in sorted(drops["model"].unique())}
    for row in drops[drops["significant"] & (drops["mean"] > 0)].itertuples():
        pairs[row.model].append(f"{row.delimiter} vs {row.control}")
    return "; ".join(f"{model}: {', '.join(found) or 'none'}" for model, found in pairs.items())


# ---------------------------------------------------------------------------------------------
# The traces of one sequence


def delimiter_splits(boundaries: pd.DataFrame, model: str, delimiter: str, seed: int) -> list[int]:
    """The split right after each delimiter of one sequence, ascending: the first token n of
    the next passage (column next_start of the aggregate's boundaries table)."""
    chosen = boundaries[
        (boundaries["model"] == model)
        & (boundaries["delimiter"] == delimiter)
        & (boundaries["seed"] == seed)
    ]
    return sorted(int(n) for n in chosen["next_start"].unique())


def trace_length(traces: pd.DataFrame, model: str, task: str) -> int:
    """The length a trace covers: its last evaluated split + 1 (L when split L-1 is evaluated).
    traces: rows of one seed and layer (model, task, position)."""
    chosen = traces[(traces["model"] == model) & (traces["task"] == task)]
    return int(chosen["position"].max()) + 1


# ---------------------------------------------------------------------------------------------
# Captions


def design_text(
    by_model: pd.DataFrame, metric: str = "ess_tolerance", measure: str = "drop_vs_control"
) -> str:
    """One sentence stating the design's power, for captions: the interior boundaries per model
    and delimiter (min-max) and the minimum detectable drop (ess.paper.e6.modulation.summarise's
    mde: 80% power, two-sided at the interval's confidence) per control, from a per-model
    summary."""
    rows = by_model[
        (by_model["boundaries"] == "interior")
        & (by_model["metric"] == metric)
        & (by_model["measure"] == measure)
    ]
    if rows.empty:
        return ""
    parts = [
        f"vs {control} {group['mde'].min():.2f}-{group['mde'].max():.2f}"
        for control, group in rows.groupby("control")
    ]
    return (
        f"Design: {rows['n'].min()}-{rows['n'].max()} interior boundaries per model and "
        f"delimiter (seeds pooled); minimum detectable {measure.replace('_', ' ')} "
        f"({metric_label(metric)}, mean over layers; 80% power at the CI's confidence) "
        f"{'; '.join(parts)} state dimensions across models and delimiters."
    )


def settings_text(settings: dict) -> str:
    """One line stating the config behind E6's numbers, for captions ("" without settings).

    settings: the dict the workflow passes to the E6 notebooks (n_tokens, position_stride,
    offsets, seeds, tolerance, relative, recall_orders, before, after, n_boot,
    confidence, and per model dtype and add_bos).
    """
    if not settings:
        return ""
    mode = "relative" if settings["relative"] else "absolute"
    bos = settings.get("add_bos") or {}
    offsets = settings.get("offsets")
    where = f"every {settings['position_stride']}-th split"
    if offsets:
        where = f"the drop's windows and offsets {list(offsets)} from every delimiter plus {where}"
    recall = (
        f"recall on {settings['recall_orders']} orders, " if "recall_orders" in settings else ""
    )
    return (
        f"L = {settings['n_tokens']} tokens, ESS at {where}, "
        f"seeds {settings['seeds']}, tolerance-ESS tau = {settings['tolerance']:g} ({mode}), "
        f"{recall}"
        f"drop = mean ESS over all {settings['before']} splits before minus all "
        f"{settings['after']} after each delimiter, the same splits in the controls; "
        "boundaries where a head is at the bound min(i, L-i) in the windows left out, "
        f"{settings['n_boot']} bootstrap resamples, {settings['confidence']:.0%} CI, "
        "dtype "
        + ", ".join(f"{model}: {dtype}" for model, dtype in settings["dtype"].items())
        + "; bos first: "
        + ", ".join(f"{model}: {'yes' if first else 'no'}" for model, first in bos.items())
    )
