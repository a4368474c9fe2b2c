"""Rule extract: ESS of one layer's operator(s) at every split position of every head/channel,
with the theoretical state size, as a long table (one row per mixer x head x position).

Attention layers have no small realisation: T is materialised per head
(ess.hf.layer_operator_matrix) and goes through ess.metric.effective_state_size. SSM layers go
through their time-varying realisation (ess.hf.layer_realisation,
ess.metric.effective_state_size_ssm); T is never materialised.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from workflow_job import record, start

from ess.hf import layer_operator_matrix, layer_realisation, load_operators, tss
from ess.metric import effective_state_size, effective_state_size_ssm
from ess.provenance import atomic_output

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
layer = int(smk.wildcards.layer)
device = torch.device(smk.params.device)
channels = slice(None, None, smk.params.channel_stride)  # heads (attention) or channels (SSM)
ops = [op for op in load_operators(smk.input.operators) if op.layer == layer]
if not ops:
    raise ValueError(f"{smk.input.operators} holds no operator of layer {layer}")

frames = []
for mixer_index, op in enumerate(ops):
    if op.kind == "attention":
        T = layer_operator_matrix(op, channels).to(device)  # (heads, L, L)
        length = T.shape[-1]
        positions = range(1, length, smk.params.position_stride)
        result = effective_state_size(
            T, tol=smk.params.tolerance, relative=smk.params.relative, positions=positions
        )
    else:
        A, B, C = (x.to(device) for x in layer_realisation(op, channels))  # (channels, L, N)
        length = B.shape[-2]
        positions = range(1, length, smk.params.position_stride)
        result = effective_state_size_ssm(
            A, B, C, tol=smk.params.tolerance, relative=smk.params.relative, positions=positions
        )
    split = result.positions.cpu().numpy()
    n_heads = result.tolerance.shape[0]
    state_size = tss(op, length)  # per position (attention) or one number (SSM)
    if torch.is_tensor(state_size):
        state_size = state_size[split].numpy()
    else:
        state_size = np.full(len(split), state_size)
    frames.append(
        pd.DataFrame(
            {
                "model": smk.wildcards.model,
                "task": smk.wildcards.task,
                "seed": int(smk.wildcards.seed),
                "layer": layer,
                "mixer": mixer_index,
                "kind": op.kind,
                "head": np.repeat(np.arange(n_heads) * smk.params.channel_stride, len(split)),
                "position": np.tile(split, n_heads),
                "ess_tolerance": result.tolerance.cpu().numpy().reshape(-1),
                "ess_entropy": result.entropy.cpu().numpy().reshape(-1),
                "tss": np.tile(state_size, n_heads),
            }
        )
    )

with atomic_output(Path(smk.output.ess)) as temporary:
    pd.concat(frames, ignore_index=True).to_parquet(temporary, index=False)
record(smk, [smk.output.ess], inputs=[smk.input.operators], started=started)
