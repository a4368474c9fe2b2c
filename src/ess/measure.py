"""The ESS of a layer's operator (docs/method.md §2, §3.5).

`layer_ess` is the one way from an `ess.layers.LayerOperator` to ESS: attention (T) goes
through the dense path; a recurrence (A, B, C) through whichever exact path costs less for its
L, N and splits (`cheaper_path`): the realisation path, O(L N^3), or its T materialised row by
row and the dense path, O(L^4) (the eigenvalues at every split), which wins when N is not
small against L. Both the synthetic runs (ess.paper.synthetic.model_ess: per layer, every split of
each of n test sequences) and E6 (the captured layers of one sequence, at the splits its statistics
read) call it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from ess.dense_path import effective_state_size
from ess.kernels import materialise_by_rows
from ess.layers import Channels, LayerOperator
from ess.metric import EssResult
from ess.realisation_path import effective_state_size_ssm

TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)

# How a recurrence's ESS is computed (layer_ess's `path`): the cheaper of the two, or one.
SSM_PATHS = ("cheaper", "realisation", "dense")

# Memory for the materialised operators of one chunk of channels on the dense path (float64).
DENSE_CHUNK_BYTES = 2**30


# Seconds of each path on one CPU thread (float64), fitted to timings of GLA (2 channels) and
# S6 (32-64 channels) layers at L 64-1024, N 8-128 (benchmarks/README.md, "Which exact path"):
# the realisation path pays a batched call per step, plus per channel and step a QR and an SVD
# of N-sized matrices (N^1.5 where call overheads dominate, N^3 beyond); the dense path per
# channel builds T row by row (L^2 N), sweeps the Gram matrices (L^2) and takes the eigenvalues
# at each split, O(min(i, L-i)^3), O(L^4) in all. Within 2-3x of the timings: both paths are
# exact, so an estimate off by that much costs time, never accuracy.
REALISATION_SECONDS_PER_STEP = 5.8e-4
REALISATION_SECONDS_PER_N1_5 = 2.1e-6
REALISATION_SECONDS_PER_N3 = 4.2e-9
DENSE_SECONDS_PER_L2 = 1.35e-6
DENSE_SECONDS_PER_L2_N = 1.5e-8
DENSE_SECONDS_PER_L4 = 2.9e-12


def realisation_seconds(length: int, n: int, channels: int) -> float:
    """Estimated time of the realisation path for `channels` recurrences of length L, state N."""
    per_step = REALISATION_SECONDS_PER_N1_5 * n**1.5 + REALISATION_SECONDS_PER_N3 * n**3
    return length * (REALISATION_SECONDS_PER_STEP + channels * per_step)


def materialise_seconds(length: int, n: int, channels: int) -> float:
    """Estimated time of building T row by row (L^2 N) for `channels` recurrences."""
    return channels * length**2 * DENSE_SECONDS_PER_L2_N * n


def dense_seconds(length: int, n: int, n_splits: int, channels: int) -> float:
    """Estimated time of the dense path (T row by row, then ess.dense_path) for `channels`
    recurrences of length L, state N, measured at n_splits of the L-1 splits."""
    per_channel = length**2 * DENSE_SECONDS_PER_L2 + materialise_seconds(length, n, 1)
    per_channel += DENSE_SECONDS_PER_L4 * length**4 * n_splits / (length - 1)
    return channels * per_channel


def cheaper_path(length: int, n: int, n_splits: int, channels: int = 1) -> str:
    """ "dense" or "realisation": the exact path estimated to be faster for `channels` diagonal
    recurrences of length L and state size N measured at n_splits splits (`dense_seconds`,
    `realisation_seconds`)."""
    dense = dense_seconds(length, n, n_splits, channels)
    return "dense" if dense < realisation_seconds(length, n, channels) else "realisation"


def layer_ess(
    op: LayerOperator,
    channels: Channels = slice(None),
    tol: float = 1e-3,
    relative: bool = True,
    position_stride: int = 1,
    device: str | torch.device = "cpu",
    positions: Iterable[int] | None = None,
    spectrum: bool = False,
    path: str = "cheaper",
) -> tuple[EssResult, np.ndarray]:
    """ESS of every head/channel of one layer at the split positions 1, 1 + stride, ..., or at
    `positions` (splits in 1 .. L-1; position_stride is then not used).

    Attention has no small realisation: T (..., H, L, L) goes through the dense path
    (ess.dense_path.effective_state_size) by its eigenvalue route, since both tolerance- and
    entropy-ESS are wanted (the count route, entropy=False, would skip the entropy). A
    recurrence goes through its realisation (ess.realisation_path.effective_state_size_ssm)
    or through its T, built row by row, and the dense path: `path` "cheaper" picks by
    `cheaper_path` (a dense A always takes the realisation), "realisation" or "dense" force
    one. Both are exact; S6's skip D, on T's diagonal, is left out of either.
    spectrum=True keeps the singular values: tolerance-ESS at any other tau is then
    ess.metric.tolerance_ess of them, at no further decomposition (the dense path pads them
    with zeros to min(i, L-i)). `channels` picks heads/channels (LayerOperator.matrix).

    Returns the EssResult ((..., H, P): batch dims, then heads/channels) and the TSS at each
    evaluated split (LayerOperator.tss): (P,) int64.
    """
    if path not in SSM_PATHS:
        raise ValueError(f"path must be one of {SSM_PATHS}, got {path!r}")
    if op.kind != "ssm":  # attention and dense: no diagonal realisation, T itself
        T = op.matrix(channels).to(device)
        length = T.shape[-1]
        wanted = range(1, length, position_stride) if positions is None else positions
        result = effective_state_size(
            T, tol=tol, relative=relative, positions=wanted, spectrum=spectrum
        )
    else:
        A, B, C = (x.to(device) for x in op.realisation(channels))
        length, n = B.shape[-2:]
        wanted = list(range(1, length, position_stride) if positions is None else positions)
        diagonal = A.shape[-2:] == B.shape[-2:] and A.dim() <= B.dim()
        if path == "cheaper":
            channels = B[..., 0, 0].numel()
            path = cheaper_path(length, n, len(wanted), channels) if diagonal else "realisation"
        if path == "dense":
            result = _dense_ssm_ess(A, B, C, tol, relative, wanted, spectrum)
        else:
            result = effective_state_size_ssm(
                A, B, C, tol=tol, relative=relative, positions=wanted, spectrum=spectrum
            )
    split = result.positions.cpu().numpy()
    state_size = op.tss  # one number, or one per split 1 .. L-1 (attention)
    if torch.is_tensor(state_size):
        return result, state_size[split - 1].numpy()
    return result, np.full(len(split), state_size)


def _dense_ssm_ess(
    A: Tensor,
    B: Tensor,
    C: Tensor,
    tol: float,
    relative: bool,
    positions: list[int],
    spectrum: bool,
) -> EssResult:
    """The dense path on the T of a diagonal realisation A, B, C (..., L, N), built row by
    row in float64 (ess.kernels.materialise_by_rows), in chunks of channels whose T fit
    DENSE_CHUNK_BYTES. Returns the EssResult of `effective_state_size` on all of them."""
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], C.shape[:-2])
    length, n = B.shape[-2:]
    A, B, C = (
        x.to(torch.float64).expand(*batch, length, n).reshape(-1, length, n) for x in (A, B, C)
    )
    chunk = max(1, DENSE_CHUNK_BYTES // (8 * length * (length + n)))
    parts = [
        effective_state_size(
            materialise_by_rows(A[lo : lo + chunk], B[lo : lo + chunk], C[lo : lo + chunk]),
            tol=tol,
            relative=relative,
            positions=positions,
            spectrum=spectrum,
            check_causal=False,
        )
        for lo in range(0, A.shape[0], chunk)
    ]

    def joined(name: str) -> Tensor | None:
        values = [getattr(part, name) for part in parts]
        if values[0] is None:
            return None
        joined_values = torch.cat(values)
        return joined_values.reshape(*batch, *joined_values.shape[1:])

    return EssResult(
        tolerance=joined("tolerance"),
        entropy=joined("entropy"),
        positions=parts[0].positions,
        spectrum=joined("spectrum"),
    )
