"""Rule aggregate (E6): merge the per-layer ESS tables and measure the ESS drop at each
delimiter against each control (ess.delimiters.delimiter_drop), with bootstrap CIs
(ess.delimiters.summarise_drops) and the correlation with bigram recall across models
(ess.stats.correlation_with_ci).

Layer -1 stands for the mean over layers ("average ESS", docs/method.md §2.4); every trace is the
mean over the heads/channels of a layer.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sequence_io import read_sequence
from workflow_job import record, start

from ess.delimiters import delimiter_drop, summarise_drops
from ess.provenance import atomic_output
from ess.stats import correlation_with_ci

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
METRICS = ("ess_tolerance", "ess_entropy")
MEASURES = ("drop", "drop_vs_control")
ALL_LAYERS = -1


def write(frame: pd.DataFrame, path: str) -> None:
    with atomic_output(Path(path)) as temporary:
        if path.endswith(".csv"):
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)


# --- traces: mean over heads per layer, and over layers ---------------------------------------
ess = pd.concat([pd.read_parquet(path) for path in smk.input.ess], ignore_index=True)
keys = ["model", "task", "seed", "layer", "position"]
per_layer = ess.groupby(keys, as_index=False)[[*METRICS, "tss"]].mean()
over_layers = (
    per_layer.groupby(["model", "task", "seed", "position"], as_index=False)[[*METRICS, "tss"]]
    .mean()
    .assign(layer=ALL_LAYERS)
)
traces = pd.concat([per_layer, over_layers], ignore_index=True)[[*keys, *METRICS, "tss"]]

# --- sequences: the boundaries of each delimiter and of its controls --------------------------
sequences = {}
for path in smk.input.sequences:
    parts = Path(path).parts  # results/sequences/{model}/{delimiter}/seed{seed}.json
    model, delimiter, seed = parts[-3], parts[-2], int(Path(path).stem.removeprefix("seed"))
    sequences[model, delimiter, seed] = read_sequence(path)
reference = p.delimiters[0]  # the controls were captured from this delimiter's sequence file
for (model, delimiter, seed), sequence in sequences.items():
    for control in p.controls:
        captured = sequences[model, reference, seed].controls[control].input_ids
        if not np.array_equal(sequence.controls[control].input_ids, captured):
            raise ValueError(
                f"control {control!r} of {delimiter!r} ({model}, seed {seed}) differs from the "
                f"one captured with {reference!r}: controls must not depend on the delimiter"
            )

# --- the drop at every boundary -------------------------------------------------------------
trace_of = {key: frame for key, frame in traces.groupby(["model", "task", "seed", "layer"])}
rows = []
for (model, delimiter, seed), sequence in sequences.items():
    for layer in sorted(traces.loc[traces["model"] == model, "layer"].unique()):
        for control in p.controls:
            for metric in METRICS:
                drops = delimiter_drop(
                    trace_of[model, delimiter, seed, layer],
                    sequence.boundaries,
                    trace_of[model, control, seed, layer],
                    sequence.controls[control].boundaries,
                    before=p.before,
                    after=p.after,
                    boundary_margin=p.boundary_margin,
                    seq_len=sequence.length,
                    control_seq_len=sequence.controls[control].length,
                    value=metric,
                )
                rows.append(
                    drops.assign(
                        model=model,
                        delimiter=delimiter,
                        control=control,
                        seed=seed,
                        layer=layer,
                        metric=metric,
                    )
                )
boundaries = pd.concat(rows, ignore_index=True)

# --- bootstrap CIs over boundaries (seeds pooled) -------------------------------------------
group_keys = ["model", "delimiter", "control", "metric", "layer"]
summaries = []
for key, group in boundaries.groupby(group_keys):
    for measure in MEASURES:
        summary = summarise_drops(group, measure, p.n_boot, p.confidence, p.seed)
        summary = summary.rename_axis("boundaries").reset_index()
        summaries.append(summary.assign(**dict(zip(group_keys, key, strict=True)), measure=measure))
by_layer = pd.concat(summaries, ignore_index=True)
by_layer = by_layer[[*group_keys, "measure", "boundaries", "n", "mean", "lo", "hi"]]

# --- per model (mean over layers), with bigram recall ---------------------------------------
by_model = by_layer[by_layer["layer"] == ALL_LAYERS].drop(columns="layer")
if smk.input.recall:
    recall = pd.DataFrame([json.loads(Path(path).read_text()) for path in smk.input.recall])
    # with several seeds: the mean gain, and the mean of the per-seed token-bootstrap bounds
    # (wider than the interval of the mean over seeds: a conservative band)
    recall = recall.groupby("model", as_index=False)[
        ["recall_gain", "recall_gain_lo", "recall_gain_hi", "ppl_ratio", "ppl_first", "ppl_second"]
    ].mean()
    by_model = by_model.merge(recall, on="model", how="left")
else:
    by_model = by_model.assign(
        recall_gain=np.nan, recall_gain_lo=np.nan, recall_gain_hi=np.nan, ppl_ratio=np.nan
    )

# --- correlation of the drop with recall across models --------------------------------------
correlations = []
interior = by_model[by_model["boundaries"] == "interior"]
for (delimiter, control, metric, measure), group in interior.groupby(
    ["delimiter", "control", "metric", "measure"]
):
    group = group.dropna(subset=["mean", "recall_gain"])
    row = {"delimiter": delimiter, "control": control, "metric": metric, "measure": measure}
    row |= {"method": p.correlation, "n_models": len(group), "r": np.nan, "lo": np.nan}
    row |= {"hi": np.nan, "note": ""}
    try:
        r, lo, hi = correlation_with_ci(
            group["mean"], group["recall_gain"], p.correlation, p.n_boot, p.seed, p.confidence
        )
        row |= {"r": r, "lo": lo, "hi": hi}
    except ValueError as error:  # fewer than 3 models, or a constant column
        row["note"] = str(error)
    correlations.append(row)
correlation = pd.DataFrame(correlations)

out = smk.output
write(traces, out.traces)
write(boundaries, out.boundaries)
for frame, paths in (
    (by_layer, (out.by_layer, out.by_layer_csv)),
    (by_model, (out.by_model, out.by_model_csv)),
    (correlation, (out.correlation, out.correlation_csv)),
):
    for path in paths:
        write(frame, path)
outputs = [out.traces, out.boundaries, out.by_layer, out.by_layer_csv, out.by_model]
outputs += [out.by_model_csv, out.correlation, out.correlation_csv]
record(
    smk,
    outputs,
    inputs=[*smk.input.ess, *smk.input.sequences, *smk.input.recall],
    started=started,
    seeds={"bootstrap": p.seed},
)
