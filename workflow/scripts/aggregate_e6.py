"""Rule aggregate (E6): read the ESS tables, sequences and recall scores, and write what the
statistics of ess.modulation make of them: the drop at every boundary (per layer and over
layers, at every tau and entropy-ESS), its bootstrap summaries, the boundary-aligned profile per
layer group, the hierarchy test and the correlation of the drop with recall.

Layer -1 stands for the mean over layers ("average ESS", docs/method.md §2.4); every trace is the
mean over the heads/channels of a layer.
"""

import json
from pathlib import Path

import pandas as pd
from workflow_job import record, start

from ess import modulation
from ess.provenance import atomic_output
from ess.sequence_files import read_sequence

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
METRICS = ["ess_tolerance", "ess_entropy"]  # every layer


def write(frame: pd.DataFrame, path: str) -> None:
    with atomic_output(Path(path)) as temporary:
        if path.endswith(".csv"):
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)


ess = pd.concat([pd.read_parquet(path) for path in smk.input.ess], ignore_index=True)
tau_metrics = [column for column in ess.columns if column.startswith("ess_tau_")]
traces = modulation.layer_traces(ess, [*METRICS, *tau_metrics, "tss"])

sequences = {}
for path in smk.input.sequences:
    parts = Path(path).parts  # results/sequences/{model}/{delimiter}/seed{seed}.json
    seed = int(Path(path).stem.removeprefix("seed"))
    sequences[parts[-3], parts[-2], seed] = read_sequence(path)
modulation.check_controls(sequences, reference=p.delimiters[0])

# --- the drop at every boundary: every layer at METRICS, the mean over layers at every tau --
windows = dict(before=p.before, after=p.after, boundary_margin=p.boundary_margin)
boundaries = pd.concat(
    [
        modulation.boundary_drops(traces, sequences, p.controls, METRICS, **windows),
        modulation.boundary_drops(
            traces[traces["layer"] == modulation.ALL_LAYERS],
            sequences,
            p.controls,
            tau_metrics,
            **windows,
        ),
    ],
    ignore_index=True,
)
stats = dict(n_boot=p.n_boot, confidence=p.confidence, seed=p.seed)
by_layer = modulation.summarise_drops_by(
    boundaries, ["model", "delimiter", "control", "metric", "layer"], **stats
)

# --- per model (mean over layers), with bigram recall -----------------------------------------
by_model = by_layer[by_layer["layer"] == modulation.ALL_LAYERS].drop(columns="layer")
recall_columns = ["recall_gain", "recall_gain_lo", "recall_gain_hi", "ppl_ratio", "n_second"]
recall = pd.DataFrame(
    [json.loads(Path(path).read_text()) for path in smk.input.recall],
    columns=["model", *recall_columns],
)
by_model = by_model.merge(recall, on="model", how="left")
by_layer = by_layer[by_layer["metric"].isin(METRICS)]

# --- the drop against recall, over the models whose recall is measured -------------------------
interior = by_model[(by_model["boundaries"] == "interior") & by_model["metric"].isin(METRICS)]
correlation = modulation.recall_correlations(
    interior, p.correlation, p.n_boot, p.seed, p.confidence
)

# --- the boundary-aligned profile per layer group -----------------------------------------------
profiles = modulation.boundary_profiles(
    modulation.group_traces(traces, METRICS),
    sequences,
    p.controls,
    p.offsets,
    METRICS,
    p.boundary_margin,
)
profile = modulation.summarise_profiles(profiles, **stats)

# --- the hierarchy: each delimiter, and all pooled, against the first control ------------------
main_metrics = boundaries[boundaries["metric"].isin(METRICS)]  # every tau: e6_drop_by_tau
hierarchy = modulation.hierarchy_table(main_metrics, p.hierarchy, p.controls[0], **stats)

out = smk.output
for frame, paths in (
    (traces, (out.traces,)),
    (boundaries, (out.boundaries,)),
    (by_layer, (out.by_layer, out.by_layer_csv)),
    (by_model, (out.by_model, out.by_model_csv)),
    (correlation, (out.correlation, out.correlation_csv)),
    (profile, (out.profile, out.profile_csv)),
    (hierarchy, (out.hierarchy, out.hierarchy_csv)),
):
    for path in paths:
        write(frame, path)
record(
    smk,
    [path for name, path in out.items() if name != "manifests"],
    inputs=[*smk.input.ess, *smk.input.sequences, *smk.input.recall],
    started=started,
    seeds={"bootstrap": p.seed},
)
