"""Rule measure_synthetic_ess: the ESS of every layer of each trained model of one cell (its
seeds) on the first n test sequences, at every tau (ess.paper.synthetic.model_ess), on
synthetic.ess.device; each recurrence by the cheaper exact path for its L and N."""

from pathlib import Path

import torch
from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.synthetic.model_ess import model_ess
from ess.paper.training.tasks import load_split
from ess.paper.training.train import load_checkpoint

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
inputs, _ = load_split(smk.input.test)
runs = zip(smk.params.runs, smk.input.models, smk.output.ess, strict=True)
for run, model_path, output in runs:
    table = model_ess(
        load_checkpoint(model_path),
        inputs[: smk.params.n_sequences],
        smk.params.tolerances,
        smk.params.relative,
        device=smk.params.device,
    )
    table.insert(0, "run", run)
    print(table.to_string(), flush=True)
    with atomic_output(Path(output)) as temporary:
        table.to_parquet(temporary, index=False)
    record(smk, [output], inputs=[model_path, smk.input.test], started=started)
