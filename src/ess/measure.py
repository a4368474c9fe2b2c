"""The ESS of a layer's operator (docs/method.md §2, §3.5), and of a trained synthetic-task model.

`layer_ess` is the one way from an `ess.layers.LayerOperator` to ESS: attention (T) goes
through the dense path, every recurrence (A, B, C) through the realisation path. Both the
synthetic runs (`model_ess`: per layer, every split of each of n test sequences) and E6 (the
captured layers of one sequence, at the splits its statistics read) call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ess.dense_path import effective_state_size
from ess.layers import Channels, LayerOperator
from ess.metric import EssResult, tolerance_ess
from ess.models import LanguageModel
from ess.realisation_path import effective_state_size_ssm

TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def layer_ess(
    op: LayerOperator,
    channels: Channels = slice(None),
    tol: float = 1e-3,
    relative: bool = True,
    position_stride: int = 1,
    device: str | torch.device = "cpu",
    positions: Iterable[int] | None = None,
    spectrum: bool = False,
) -> tuple[EssResult, np.ndarray]:
    """ESS of every head/channel of one layer at the split positions 1, 1 + stride, ..., or at
    `positions` (splits in 1 .. L-1; position_stride is then not used).

    Attention has no small realisation: T (..., H, L, L) goes through the dense path
    (ess.dense_path.effective_state_size) by its eigenvalue route, since both tolerance- and
    entropy-ESS are wanted (the count route, entropy=False, would skip the entropy). A
    recurrence goes through its realisation (ess.realisation_path.effective_state_size_ssm);
    T is never built, and S6's skip D, on T's diagonal, is left out. spectrum=True keeps the
    singular values: tolerance-ESS at any other tau is then ess.metric.tolerance_ess of them,
    at no further decomposition. `channels` picks heads/channels (LayerOperator.matrix).

    Returns the EssResult ((..., H, P): batch dims, then heads/channels) and the TSS at each
    evaluated split (LayerOperator.tss): (P,) int64.
    """
    if op.kind != "ssm":  # attention and dense: no diagonal realisation, T itself
        T = op.matrix(channels).to(device)
        length = T.shape[-1]
        wanted = range(1, length, position_stride) if positions is None else positions
        result = effective_state_size(
            T, tol=tol, relative=relative, positions=wanted, spectrum=spectrum
        )
    else:
        A, B, C = (x.to(device) for x in op.realisation(channels))
        length = B.shape[-2]
        wanted = range(1, length, position_stride) if positions is None else positions
        result = effective_state_size_ssm(
            A, B, C, tol=tol, relative=relative, positions=wanted, spectrum=spectrum
        )
    split = result.positions.cpu().numpy()
    state_size = op.tss  # one number, or one per split 1 .. L-1 (attention)
    if torch.is_tensor(state_size):
        return result, state_size[split - 1].numpy()
    return result, np.full(len(split), state_size)


@torch.no_grad()
def model_ess(
    model: LanguageModel,
    inputs: Tensor,
    tolerances: Sequence[float] = TOLERANCES,
    relative: bool = True,
) -> pd.DataFrame:
    """Average ESS of each layer of `model` on inputs: (n, L) token sequences.

    Every split of every sequence, from one spectrum per split, so that tolerance-ESS at every
    tau and entropy-ESS come from one computation (E8). One row per layer and tolerance tau:
    layer, layer_mixer (SA, GLA, ...), tss (mean TSS over split positions: N for a recurrence,
    the mean KV-cache length for attention), tolerance, ess_tolerance and ess_entropy (means
    over sequences, heads/channels and split positions), utilisation (ess_tolerance / tss).
    """
    if len(tolerances) == 0:
        raise ValueError("tolerances must name at least one tau")
    model.eval()
    rows = []
    for op in model.operators(inputs):
        result, state_size = layer_ess(op, spectrum=True)
        tss = float(state_size.mean())
        entropy = result.entropy.mean().item()
        for tol in tolerances:
            ess = tolerance_ess(result.spectrum, tol, relative).to(torch.float64).mean().item()
            rows.append(
                {
                    "layer": op.layer,
                    "layer_mixer": op.meta["mixer"],
                    "tss": tss,
                    "tolerance": float(tol),
                    "ess_tolerance": ess,
                    "ess_entropy": entropy,
                    "utilisation": ess / tss,
                }
            )
    return pd.DataFrame(rows)
