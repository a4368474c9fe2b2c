"""The realisation path (docs/method.md §3.2): ESS of the operator of a time-varying
realisation x_t = A_t x_{t-1} + B_t u_t, y_t = C_t . x_t, never materialised.

H_i = O_i R_i with R_i = [A_{i-1}..A_1 B_0, ..., A_{i-1} B_{i-2}, B_{i-1}]   (N x i)
                   O_i = rows C_t^T A_t .. A_i for t = i .. L-1              ((L-i) x N)
Reachability  P_i = R_i R_i^T:  P_{i+1} = A_i P_i A_i^T + B_i B_i^T,   P_0 = 0
Observability O_i^T O_i = A_i^T W_i A_i with
              W_i = C_i C_i^T + A_{i+1}^T W_{i+1} A_{i+1},             W_L = 0
With P_i = F_i F_i^T and W_i = G_i G_i^T:  s(H_i) = s(G_i^T A_i F_i), an N x N matrix.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ess.metric import (
    EssResult,
    _check_finite,
    _check_tol,
    _own_threads,
    _result,
    _split_positions,
    _worker_pool,
)

# Memory the SSM path may use for its stored square-root Gramians before it splits the batch.
SSM_FACTOR_BUDGET_BYTES = 2 * 1024**3


def _check_realisation(A: Tensor, B: Tensor, C: Tensor) -> tuple[bool, torch.Size]:
    """Validate shapes; return (A is diagonal, broadcast batch shape)."""
    for name, x in (("A", A), ("B", B), ("C", C)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if B.dim() < 2 or C.dim() < 2 or B.shape[-2:] != C.shape[-2:]:
        raise ValueError(
            f"B and C must both have shape (..., L, N) with the same L and N, got B "
            f"{tuple(B.shape)} and C {tuple(C.shape)}"
        )
    length, n = B.shape[-2:]
    fits_dense = A.dim() >= 3 and A.shape[-3:] == (length, n, n)
    fits_diagonal = A.dim() >= 2 and A.shape[-2:] == (length, n)
    if fits_dense and fits_diagonal:  # L == N: only the number of dims can tell
        fits_diagonal = A.dim() <= B.dim()
    if fits_diagonal:
        diagonal, a_batch = True, A.shape[:-2]
    elif fits_dense:
        diagonal, a_batch = False, A.shape[:-3]
    else:
        raise ValueError(
            f"A must have shape (..., L, N) (diagonal transitions) or (..., L, N, N) (dense) with "
            f"L={length}, N={n} from B and C, got {tuple(A.shape)}"
        )
    try:
        batch = torch.broadcast_shapes(a_batch, B.shape[:-2], C.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"batch dimensions of A {tuple(a_batch)}, B {tuple(B.shape[:-2])} and C "
            f"{tuple(C.shape[:-2])} do not broadcast"
        ) from None
    for name, x in (("A", A), ("B", B), ("C", C)):
        _check_finite(name, x)
    return diagonal, batch


def _apply_transition(A_t: Tensor, X: Tensor, diagonal: bool, transpose: bool = False) -> Tensor:
    """A_t X (or A_t^T X). A_t: (..., N) diagonal or (..., N, N) dense; X: (..., N, k)."""
    if diagonal:
        return A_t[..., :, None] * X
    return (A_t.mT if transpose else A_t) @ X


def _compress(X: Tensor) -> Tensor:
    """Square-root factor of X X^T: (b, N, k) -> lower-triangular (b, N, N), by a QR of X^T."""
    return torch.linalg.qr(X.mT, mode="r").R.mT


def _square_root_gramians(A: Tensor, B: Tensor, C: Tensor, diagonal: bool) -> tuple[Tensor, Tensor]:
    """F_i (P_i = F F^T) and G_i (W_i = G G^T) for i = 0 .. L-1.

    A: (b, L, N) or (b, L, N, N); B, C: (b, L, N) float64 -> F, G: (b, L, N, N).
    The forward (F) and backward (G) recursions are independent; each step compresses
    [A_i F_i, B_i] and [C_i, A_{i+1}^T G_{i+1}] (N x (N+1)) back to N x N with one batched QR
    of both, so a step costs one library call whatever the batch size.
    """
    b, length, n = B.shape
    F = B.new_zeros(b, length, n, n)
    G = B.new_zeros(b, length, n, n)
    f = B.new_zeros(b, n, n)  # F_0 = 0: nothing reached before the first input
    g = B.new_zeros(b, n, n)  # G_L = 0: nothing observed after the last output
    for i in range(length):
        j = length - 1 - i
        F[:, i] = f
        carried = _apply_transition(A[:, j + 1], g, diagonal, transpose=True) if i else g
        reach = torch.cat([_apply_transition(A[:, i], f, diagonal), B[:, i, :, None]], dim=-1)
        observe = torch.cat([C[:, j, :, None], carried], dim=-1)
        f, g = _compress(torch.cat([reach, observe])).split(b)
        G[:, j] = g
    return F, G


def _hankel_singular_values(
    A: Tensor, F: Tensor, G: Tensor, split: Tensor, diagonal: bool, block: int = 8
) -> Tensor:
    """s(H_i) = s(G_i^T A_i F_i) at the split positions. A: (b, L, N[, N]); F, G: (b, L, N, N)
    -> (b, P, N). A few positions at a time: the temporaries then stay in cache, which is what
    lets two threads run this at twice the speed of one (with 256 positions a block they are
    bound by memory bandwidth and gain nothing; measured here)."""
    blocks = []
    for idx in split.split(block):
        M = G[:, idx].mT @ _apply_transition(A[:, idx], F[:, idx], diagonal)
        blocks.append(torch.linalg.svdvals(M))
    return torch.cat(blocks, dim=1)


def _realisation_spectra(A: Tensor, B: Tensor, C: Tensor, split: Tensor, diagonal: bool):
    """s(H_i) of a batch of realisations: (b, L, N[, N]), (b, L, N), (b, L, N) -> (b, P, N)."""
    F, G = _square_root_gramians(A, B, C, diagonal)
    return _hankel_singular_values(A, F, G, split, diagonal)


def effective_state_size_ssm(
    A: Tensor,
    B: Tensor,
    C: Tensor,
    tol: float = 1e-3,
    relative: bool = True,
    positions: Iterable[int] | Tensor | None = None,
    spectrum: bool = False,
) -> EssResult:
    """ESS of the operator of x_t = A_t x_{t-1} + B_t u_t, y_t = C_t . x_t, never materialised.

    A: (..., L, N) diagonal transitions or (..., L, N, N) dense ones; B, C: (..., L, N);
       batch dims broadcast (when L == N, a dense A needs at least one more dim than B).
       T[t, j] = C_t^T A_t .. A_{j+1} B_j (j < t), T[t, t] = C_t . B_t.
    Other arguments as in `effective_state_size`. Exact (orthogonal square-root recursions in
    float64), O(L N^3) time and O(L N^2) memory per channel; channels go in chunks, one thread
    per core, and the chunks in flight keep the stored factors under SSM_FACTOR_BUDGET_BYTES.
    Returns EssResult with tolerance/entropy of shape (..., P).
    """
    _check_tol(tol)
    diagonal, batch = _check_realisation(A, B, C)
    length, n = B.shape[-2:]
    split = _split_positions(positions, length)
    a_shape = (*batch, length, n) if diagonal else (*batch, length, n, n)
    A = A.to(torch.float64).expand(a_shape).reshape(-1, *a_shape[len(batch) :])
    B = B.to(torch.float64).expand(*batch, length, n).reshape(-1, length, n)
    C = C.to(torch.float64).expand(*batch, length, n).reshape(-1, length, n)

    with _own_threads() as threads:
        # Channels are independent: each thread takes whole chunks of them, and the chunks
        # in flight together keep the stored factors (F, G) under the memory budget.
        workers = min(threads, B.shape[0]) if B.device.type == "cpu" else 1
        per_channel = 2 * length * n * n * 8
        chunk = max(
            1, min(SSM_FACTOR_BUDGET_BYTES // (workers * per_channel), -(-B.shape[0] // workers))
        )
        bounds = [(lo, lo + chunk) for lo in range(0, B.shape[0], chunk)]
        with _worker_pool(workers) as pool:
            spectra = pool.map(
                lambda lh: _realisation_spectra(
                    A[lh[0] : lh[1]], B[lh[0] : lh[1]], C[lh[0] : lh[1]], split, diagonal
                ),
                bounds,
            )
            s = torch.cat(list(spectra)).reshape(*batch, len(split), n)
    return _result(s, split.to(B.device), tol, relative, spectrum)
