"""Rule aggregate_synthetic: every run's scores, ESS and curves in three tables
(ess.synthetic.runs_table): per run (mean over layers at ess.tolerance), per layer and tau, and
per training step."""

import json
from pathlib import Path

import pandas as pd
from workflow_job import record, start

from ess.provenance import atomic_output
from ess.synthetic import runs_table

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
metrics = [json.loads(Path(path).read_text()) for path in smk.input.metrics]
for m in metrics:  # the structured labels of the grid (ess.experiments.Labels) join the scores
    m.update(smk.params.labels[m["run"]])
    del m["spec"]
layers = pd.concat([pd.read_parquet(path) for path in smk.input.ess], ignore_index=True)
runs, layers = runs_table(pd.DataFrame(metrics), layers, smk.params.tolerance)
curves = pd.concat(
    [
        pd.read_csv(path).assign(run=run)
        for path, run in zip(smk.input.curves, smk.params.runs, strict=True)
    ],
    ignore_index=True,
)
for frame, path in (
    (runs, smk.output.runs),
    (layers, smk.output.layers),
    (curves, smk.output.curves),
):
    with atomic_output(Path(path)) as temporary:
        frame.to_parquet(temporary, index=False)
record(
    smk,
    [smk.output.runs, smk.output.layers, smk.output.curves],
    inputs=[*smk.input.metrics, *smk.input.curves, *smk.input.ess],
    started=started,
)
