"""Rule capture_operators: run the model ONCE on each seed's token sequence of the task and save
the factors of every layer's operator (ess.hf.capture_operators), with only the mamba channels
E6 measures kept (ess.paper.e6.sequence_ess.capture_channels, models.<m>.channel_stride), one file
per seed (ess.layers.save_operators). The capture finds each layer's mixer by discovery
(docs/method.md §5) and fails if T u misses a mixer's own output; the largest relative error
goes into the manifest."""

from pathlib import Path

from workflow_job import load_model, record, start

from ess.hf import capture_operators
from ess.layers import save_operators
from ess.outputs import atomic_output
from ess.paper.e6.sequence_ess import capture_channels
from ess.paper.e6.sequences import read_sequence

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
model = load_model(smk)
for sequence_file, output in zip(smk.input.sequences, smk.output.operators, strict=True):
    sequence = read_sequence(sequence_file, smk.params.condition)
    ops = capture_channels(capture_operators(model, sequence.input_ids), smk.params.channel_stride)
    with atomic_output(Path(output)) as temporary:
        save_operators(ops, temporary)
    record(
        smk,
        [output],
        inputs=[smk.input.model, sequence_file],
        started=started,
        n_tokens=sequence.length,
        n_operators=len(ops),
        max_check_error=max(
            (op.meta["check_error"] for op in ops if "check_error" in op.meta), default=None
        ),
    )
    print(f"{output}: {len(ops)} operators", flush=True)
