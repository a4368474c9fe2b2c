"""Rule measure_synthetic_ess: the ESS of every layer of a trained synthetic-task model on the
first n test sequences, at every tau (ess.measure.model_ess)."""

from pathlib import Path

import torch
from workflow_job import record, start

from ess.measure import model_ess
from ess.provenance import atomic_output
from ess.tasks import load_split
from ess.train import load_checkpoint

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
model = load_checkpoint(smk.input.model)
inputs, _ = load_split(smk.input.test)
table = model_ess(
    model, inputs[: smk.params.n_sequences], smk.params.tolerances, smk.params.relative
)
table.insert(0, "run", smk.wildcards.run)
print(table.to_string(), flush=True)
with atomic_output(Path(smk.output.ess)) as temporary:
    table.to_parquet(temporary, index=False)
record(smk, [smk.output.ess], inputs=[smk.input.model, smk.input.test], started=started)
