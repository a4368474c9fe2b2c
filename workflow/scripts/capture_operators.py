"""Rule capture_operators: run the model ONCE on the task's token sequence and save the factors
of every layer's operator (ess.hf.capture_operators, ess.hf.save_operators)."""

from pathlib import Path

from sequence_io import read_sequence
from workflow_job import load_model, record, start

from ess.hf import capture_operators, save_operators
from ess.provenance import atomic_output

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
sequence = read_sequence(smk.input.sequence, smk.params.condition)
model = load_model(smk)
ops = capture_operators(model, sequence.input_ids)
with atomic_output(Path(smk.output.operators)) as temporary:
    save_operators(ops, temporary)
record(
    smk,
    [smk.output.operators],
    inputs=[smk.input.model, smk.input.sequence],
    started=started,
    n_tokens=sequence.length,
    n_operators=len(ops),
)
