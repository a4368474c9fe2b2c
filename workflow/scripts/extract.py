"""Rule extract: ESS of a group of layers' operators (params.layers) at every split position of
every head/channel, with the theoretical state size, as a long table (one row per layer x mixer x
head x position). Attention goes through the dense path, SSMs through their realisation
(ess.hf.layer_ess).
"""

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from workflow_job import record, start

from ess.hf import layer_ess, load_operators
from ess.provenance import atomic_output

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
channels = slice(None, None, smk.params.channel_stride)  # heads (attention) or channels (SSM)
ops = load_operators(smk.input.operators, layers=smk.params.layers)

frames = []
for done, layer in enumerate(smk.params.layers, start=1):
    layer_started = time.time()
    layer_ops = [op for op in ops if op.layer == layer]
    kinds = ", ".join(op.kind for op in layer_ops)
    logging.info("layer %d (%d of %d): %s, started", layer, done, len(smk.params.layers), kinds)
    for mixer_index, op in enumerate(layer_ops):  # a zamba2 layer holds two mixers
        result, state_size = layer_ess(
            op,
            channels,
            tol=smk.params.tolerance,
            relative=smk.params.relative,
            position_stride=smk.params.position_stride,
            device=smk.params.device,
        )
        split = result.positions.cpu().numpy()
        n_heads = result.tolerance.shape[0]
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
    # Progress in the job's log (`ess status` shows its last line): one line per layer.
    logging.info(
        "layer %d (%d of %d): %d mixer(s), %d channels x %d positions in %.1f s; elapsed %.1f s",
        layer,
        done,
        len(smk.params.layers),
        len(layer_ops),
        n_heads,
        len(split),
        time.time() - layer_started,
        time.time() - started,
    )

with atomic_output(Path(smk.output.ess)) as temporary:
    pd.concat(frames, ignore_index=True).to_parquet(temporary, index=False)
record(smk, [smk.output.ess], inputs=[smk.input.operators], started=started)
