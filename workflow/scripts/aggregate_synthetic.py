"""Rule aggregate_synthetic: every run's scores, ESS and curves in three tables
(ess.paper.synthetic.tables.runs_table): per run (mean over layers at ess.tolerance), per layer and
tau, and per training step (each run's curve in at most synthetic.curve_points rows, block means,
ess.paper.synthetic.tables.read_curves: bounded memory at paper.yaml's 1,944 runs x 35,000
steps)."""

import json
from pathlib import Path

from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.synthetic.tables import aggregate_tables

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
metrics = [json.loads(Path(path).read_text()) for path in smk.input.metrics]
for (
    m
) in metrics:  # the structured labels of the grid (ess.paper.synthetic.grid.Labels) join the scores
    m.update(smk.params.labels[m["run"]])
    del m["spec"]
runs, layers, curves = aggregate_tables(
    metrics,
    smk.input.ess,
    smk.input.curves,
    smk.params.runs,
    smk.params.tolerance,
    smk.params.curve_points,
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
