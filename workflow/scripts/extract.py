"""Rule extract: ESS of a group of layers' operators (params.layers) of every head/channel, for
each seed's sequence, at the split positions E6's statistics use (ess.delimiters.trace_positions:
the profile offsets around every boundary, plus a coarse stride), with the theoretical state
size, as a long table (one row per layer x mixer x head x position). Attention goes through the
dense path, SSMs through their realisation (ess.measure.layer_ess). Columns: ess_tolerance (tau =
params.tolerance), ess_entropy, and ess_tau_<tau> for each of params.tolerances, read off the same
singular values.
"""

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from workflow_job import record, start

from ess.delimiters import trace_positions
from ess.layers import load_operators
from ess.measure import layer_ess
from ess.metric import tolerance_ess
from ess.provenance import atomic_output
from ess.sequence_files import read_sequence

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
torch.set_num_threads(smk.threads)
channels = slice(None, None, p.channel_stride)  # heads (attention) or channels (SSM)


def tau_column(tau: float) -> str:
    return f"ess_tau_{tau:.0e}"


def layer_table(op, mixer_index: int, positions: np.ndarray, seed: int) -> pd.DataFrame:
    """ESS of one mixer at `positions`, one row per head/channel and position."""
    result, state_size = layer_ess(
        op,
        channels,
        tol=p.tolerance,
        relative=p.relative,
        device=p.device,
        positions=positions.tolist(),
        spectrum=True,
    )
    split = result.positions.cpu().numpy()
    n_heads = result.tolerance.shape[0]
    columns = {
        "model": smk.wildcards.model,
        "task": smk.wildcards.task,
        "seed": seed,
        "layer": op.layer,
        "mixer": mixer_index,
        "kind": op.kind,
        "head": np.repeat(np.arange(n_heads) * p.channel_stride, len(split)),
        "position": np.tile(split, n_heads),
        "ess_tolerance": result.tolerance.cpu().numpy().reshape(-1),
        "ess_entropy": result.entropy.cpu().numpy().reshape(-1),
        "tss": np.tile(state_size, n_heads),
    }
    for tau in p.tolerances:
        at_tau = tolerance_ess(result.spectrum, tau, p.relative)
        columns[tau_column(tau)] = at_tau.cpu().numpy().reshape(-1)
    return pd.DataFrame(columns)


for seed, operators, sequence_file, output in zip(
    p.seeds, smk.input.operators, smk.input.sequences, smk.output.ess, strict=True
):
    sequence = read_sequence(sequence_file, p.condition)
    positions = trace_positions(
        sequence.boundaries, sequence.passage_spans, sequence.length, p.offsets, p.position_stride
    )
    ops = load_operators(operators, layers=p.layers)
    frames = []
    for done, layer in enumerate(p.layers, start=1):
        layer_started = time.time()
        layer_ops = [op for op in ops if op.layer == layer]
        for mixer_index, op in enumerate(layer_ops):  # a zamba2 layer holds two mixers
            frames.append(layer_table(op, mixer_index, positions, int(seed)))
        # Progress in the job's log (`ess status` shows its last line): one line per layer.
        logging.info(
            "seed %s, layer %d (%d of %d): %s, %d splits in %.1f s; elapsed %.1f s",
            seed,
            layer,
            done,
            len(p.layers),
            ", ".join(op.kind for op in layer_ops),
            len(positions),
            time.time() - layer_started,
            time.time() - started,
        )
    with atomic_output(Path(output)) as temporary:
        pd.concat(frames, ignore_index=True).to_parquet(temporary, index=False)
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
