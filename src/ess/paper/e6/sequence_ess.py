"""E6's measurement: ESS of every captured mixer of a model along one token sequence, at the
split positions the statistics use (ess.paper.e6.boundaries.trace_positions), as one long table.

Attention goes through the dense path, SSMs through their realisation (ess.measure.layer_ess).
Each row is one head/channel at one split: ess_tolerance (at `tolerance`), ess_entropy and the
theoretical state size tss, with tolerance-ESS at every tau of `tolerances` read off the same
singular values (columns ess.outputs.tau_column, docs/method.md §3.5).

What is measured is what is stored: `capture_channels` keeps only every channel_stride-th
channel of a mamba-1 layer before its operator file is written, and `operator_bytes` gives the
size of that file from the model's shape (docs/method.md, "Operator files at paper scale").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ess.layers import LayerOperator
from ess.measure import layer_ess
from ess.metric import tolerance_ess
from ess.outputs import tau_column

log = logging.getLogger(__name__)


# The captured factors are stored in float32 whatever dtype the model ran in (ess.hf).
STORED_DTYPE = torch.float32


def capture_channels(ops: Sequence[LayerOperator], channel_stride: int) -> list[LayerOperator]:
    """`ops` with every channel_stride-th channel of each mamba-1 layer kept (channels 0, s,
    2s, ...), the rest dropped: the channels E6 measures (models.<m>.channel_stride), before the
    operator file is written. dt (L, D) -> (L, D'), a (D, N) -> (D', N), D (D,) -> (D',) and u
    (L, D) -> (L, D'), D' = ceil(D / s); B, C (L, N) are shared by all channels and kept.
    meta["channel_stride"] records s (mixer_ess then measures every channel kept). Attention
    heads and mamba-2 heads are kept whole: they share keys or B, C by groups.
    """
    if channel_stride < 1:
        raise ValueError(f"channel_stride must be >= 1, got {channel_stride}")
    kept = []
    for op in ops:
        if channel_stride == 1 or op.meta.get("mixer") != "mamba":
            kept.append(op)
            continue
        every = slice(None, None, channel_stride)
        tensors = dict(op.tensors)
        for name in ("a", "D"):
            tensors[name] = op.tensors[name][every].contiguous()
        for name in ("dt", "u"):
            if name in tensors:
                tensors[name] = op.tensors[name][:, every].contiguous()
        meta = {**op.meta, "channel_stride": channel_stride}
        kept.append(LayerOperator(op.layer, op.kind, tensors, meta))
    return kept


def operator_bytes(
    kind: str,
    n_layers: int,
    seq_len: int,
    n_heads: int,
    state_size: int,
    n_kv_heads: int | None = None,
    channel_stride: int = 1,
    dtype: torch.dtype = STORED_DTYPE,
) -> int:
    """Bytes of the tensors in one operator file (one model, one sequence; the safetensors
    header, a few kB, is not counted).

    kind "attention": per layer q (H, L, d) and k (H_kv, L, d), d = state_size (head_dim),
    H_kv = n_kv_heads (default H). kind "mamba": per layer, with D' = ceil(n_heads /
    channel_stride) channels kept by `capture_channels` and N = state_size (d_state): dt
    (L, D'), a (D', N), D (D',), B and C (L, N).
    """
    element = torch.finfo(dtype).bits // 8
    if kind == "attention":
        per_layer = (n_heads + (n_kv_heads or n_heads)) * seq_len * state_size
    elif kind == "mamba":
        kept = math.ceil(n_heads / channel_stride)
        per_layer = seq_len * kept + kept * state_size + kept + 2 * seq_len * state_size
    else:
        raise ValueError(f"operator_bytes: kind must be 'attention' or 'mamba', got {kind!r}")
    return n_layers * per_layer * element


def mixer_ess(
    op: LayerOperator,
    mixer: int,
    positions: np.ndarray,
    channel_stride: int,
    tolerance: float,
    tolerances: Sequence[float],
    relative: bool,
    device: str,
) -> pd.DataFrame:
    """ESS of one mixer (every channel_stride-th head/channel) at `positions`.

    mixer: its index within the layer (a zamba2 layer holds two). An operator subsampled at
    capture (meta["channel_stride"], `capture_channels`) holds every k-th channel already:
    channel_stride must be a multiple of k. Returns one row per head and position: layer, mixer,
    kind, head (its index in the layer), position, ess_tolerance, ess_entropy, tss, and a
    tau_column per tau of `tolerances`.
    """
    captured = op.meta.get("channel_stride", 1)
    if channel_stride % captured:
        raise ValueError(
            f"layer {op.layer} was captured with channel_stride {captured}; channel_stride "
            f"{channel_stride} is not a multiple of it (capture again with the new stride)"
        )
    result, state_size = layer_ess(
        op,
        slice(None, None, channel_stride // captured),
        tol=tolerance,
        relative=relative,
        device=device,
        positions=positions.tolist(),
        spectrum=True,
    )
    split = result.positions.cpu().numpy()
    n_heads = result.tolerance.shape[0]
    columns = {
        "layer": op.layer,
        "mixer": mixer,
        "kind": op.kind,
        "head": np.repeat(np.arange(n_heads) * channel_stride, len(split)),
        "position": np.tile(split, n_heads),
        "ess_tolerance": result.tolerance.cpu().numpy().reshape(-1),
        "ess_entropy": result.entropy.cpu().numpy().reshape(-1),
        "tss": np.tile(state_size, n_heads),
    }
    for tau in tolerances:
        at_tau = tolerance_ess(result.spectrum, tau, relative)
        columns[tau_column(tau)] = at_tau.cpu().numpy().reshape(-1)
    return pd.DataFrame(columns)


def sequence_ess(
    ops: Sequence[LayerOperator],
    layers: Sequence[int],
    positions: np.ndarray,
    labels: Mapping[str, object],
    channel_stride: int,
    tolerance: float,
    tolerances: Sequence[float],
    relative: bool,
    device: str,
) -> pd.DataFrame:
    """`mixer_ess` of every mixer of `layers` (in that order) captured from one sequence.

    ops: ess.layers.load_operators of the sequence; labels: constant columns put first (model, task,
    seed). Logs one line per layer with its time: the job's progress, which `ess status` shows.
    """
    frames = []
    for done, layer in enumerate(layers, start=1):
        started = time.time()
        layer_ops = [op for op in ops if op.layer == layer]
        for mixer, op in enumerate(layer_ops):
            table = mixer_ess(
                op, mixer, positions, channel_stride, tolerance, tolerances, relative, device
            )
            frames.append(table)
        log.info(
            "%s, layer %d (%d of %d): %s, %d splits in %.1f s",
            ", ".join(f"{key} {value}" for key, value in labels.items()),
            layer,
            done,
            len(layers),
            ", ".join(op.kind for op in layer_ops),
            len(positions),
            time.time() - started,
        )
    table = pd.concat(frames, ignore_index=True)
    for position, (key, value) in enumerate(labels.items()):
        table.insert(position, key, value)
    return table
