"""E6's measurement: ESS of every captured mixer of a model along one token sequence, at the
split positions the statistics use (ess.boundaries.trace_positions), as one long table.

Attention goes through the dense path, SSMs through their realisation (ess.measure.layer_ess).
Each row is one head/channel at one split: ess_tolerance (at `tolerance`), ess_entropy and the
theoretical state size tss, with tolerance-ESS at every tau of `tolerances` read off the same
singular values (columns ess.modulation.tau_column, docs/method.md §3.5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ess.layers import LayerOperator
from ess.measure import layer_ess
from ess.metric import tolerance_ess
from ess.modulation import tau_column

log = logging.getLogger(__name__)


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

    mixer: its index within the layer (a zamba2 layer holds two). Returns one row per head and
    position: layer, mixer, kind, head (its index in the layer), position, ess_tolerance,
    ess_entropy, tss, and a tau_column per tau of `tolerances`.
    """
    result, state_size = layer_ess(
        op,
        slice(None, None, channel_stride),
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
