"""Rule measure_e6_ess: ESS of a group of layers' operators (params.layers), every
channel_stride-th head/channel, for each seed's sequence, at the split positions E6's statistics
use (ess.paper.e6.boundaries.trace_positions), one long table per seed
(ess.paper.e6.sequence_ess)."""

from pathlib import Path

import torch
from workflow_job import record, start

from ess.layers import load_operators
from ess.outputs import atomic_output
from ess.paper.e6.boundaries import trace_positions
from ess.paper.e6.sequence_ess import sequence_ess
from ess.paper.e6.sequences import read_sequence

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
torch.set_num_threads(smk.threads)
for seed, operators, sequence_file, output in zip(
    p.seeds, smk.input.operators, smk.input.sequences, smk.output.ess, strict=True
):
    sequence = read_sequence(sequence_file, p.condition)
    positions = trace_positions(
        sequence.boundaries,
        sequence.passage_spans,
        sequence.length,
        p.offsets,
        p.position_stride,
        p.before,
        p.after,
    )
    table = sequence_ess(
        load_operators(operators, layers=p.layers),
        p.layers,
        positions,
        labels={"model": smk.wildcards.model, "task": smk.wildcards.task, "seed": int(seed)},
        channel_stride=p.channel_stride,
        tolerance=p.tolerance,
        tolerances=p.tolerances,
        relative=p.relative,
        device=p.device,
    )
    with atomic_output(Path(output)) as temporary:
        table.to_parquet(temporary, index=False)
    record(
        smk,
        [output],
        inputs=[operators, sequence_file],
        started=started,
        n_positions=len(positions),
        n_boundaries=len(sequence.boundaries),
    )
    print(
        f"seed {seed}: {len(positions)} splits, {len(sequence.boundaries)} boundaries", flush=True
    )
