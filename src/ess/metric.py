"""Effective state-size (ESS) of a causal sequence-mixing operator: the definition.

For a causal operator T (L x L, lower-triangular) and a split position i (past inputs 0..i-1,
present and future outputs i..L-1) the operator's Hankel block is

    H_i = T[i:, :i]        shape (L-i, i),   i = 1 .. L-1

and rank(H_i) is the smallest state any recurrence realising T must carry across the split.
With singular values s_1 >= s_2 >= ... of H_i:

    tolerance-ESS_i = #{k : s_k > tol * s_1}      (relative=True; s_k > tol when relative=False)
    entropy-ESS_i   = exp(-sum_k p_k log p_k),   p_k = s_k / sum(s)     (0 when H_i = 0)

Three ways to get the singular values, all returning the same `EssResult` (docs/method.md §3):

- `effective_state_size_naive` (here): one float64 SVD of H_i per position. The definition;
  slow.
- `ess.dense_path.effective_state_size`: any materialised T (attention has no small
  realisation). Eigenvalues of the smaller Gram matrix of H_i in float64, updated by one
  rank-1 term per position.
- `ess.realisation_path.effective_state_size_ssm`: T given by a time-varying realisation
  (A, B, C), never materialised. H_i = O_i R_i factors through the N-dimensional state, so
  s(H_i) are the singular values of an N x N matrix built from square-root Gramians, O(L N^3).

This module also holds what the three share: the result type, the input checks, and the
threading rules of the fast paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor


@dataclass(frozen=True)
class EssResult:
    """ESS at each split position.

    tolerance: (..., P) int64    #{s_k(H_i) > threshold}
    entropy:   (..., P) float64  exp(entropy of s(H_i) / sum s(H_i)), or None when the caller
               asked for tolerance-ESS only (effective_state_size(..., entropy=False))
    positions: (P,) int64        the split positions i (1 <= i <= L-1)
    spectrum:  (..., P, R) float64 singular values of each H_i, descending and zero-padded to
               R = max rank bound, or None unless asked for with spectrum=True
    """

    tolerance: Tensor
    entropy: Tensor | None
    positions: Tensor
    spectrum: Tensor | None = None


@contextmanager
def _own_threads() -> Iterator[int]:
    """Run torch single-threaded inside the block and yield the thread count it had.

    The fast paths are sequences of small operations (per-position updates, small QRs), which
    intra-op parallelism cannot speed up: with a busy core its threads spin-wait, and a step
    gets 30-60x slower (measured here). Parallelism comes instead from our own threads, each
    working on independent positions or channels.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield before
    finally:
        torch.set_num_threads(before)


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """Our own threads, with torch single-threaded in each: torch.set_num_threads in the caller
    does not reach a new thread (OpenMP's thread count is per thread), whose torch operations
    then ran on a team of every core, spin-waiting: the dense path's Gram updates 3-5x slower
    and a whole attention benchmark 20% (measured here)."""
    return ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))


# ---------------------------------------------------------------------------------------------
# The two metrics, from singular values


def tolerance_ess(s: Tensor, tol: float, relative: bool = True) -> Tensor:
    """Number of singular values above the threshold. s: (..., R) -> (..., ) int64."""
    threshold = tol * s.amax(dim=-1, keepdim=True) if relative else tol
    return (s > threshold).sum(dim=-1)


def entropy_ess(s: Tensor) -> Tensor:
    """Effective rank exp(-sum p log p), p = s / sum(s) (Roy & Vetterli). s: (..., R) -> (...)."""
    total = s.sum(dim=-1, keepdim=True)
    p = s / torch.where(total > 0, total, 1.0)
    effective_rank = torch.exp(-torch.special.xlogy(p, p).sum(dim=-1))
    return torch.where(total.squeeze(-1) > 0, effective_rank, 0.0)


def _result(s: Tensor, positions: Tensor, tol: float, relative: bool, spectrum: bool) -> EssResult:
    """s: (..., P, R) singular values, any order -> EssResult."""
    return EssResult(
        tolerance=tolerance_ess(s, tol, relative),
        entropy=entropy_ess(s),
        positions=positions,
        spectrum=s.sort(dim=-1, descending=True).values if spectrum else None,
    )


# ---------------------------------------------------------------------------------------------
# Input checks: all of them run before any work


def _check_tol(tol: float) -> None:
    if not isinstance(tol, int | float) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")


def _check_finite(name: str, x: Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        where = tuple(int(j) for j in bad.nonzero()[0])
        raise ValueError(
            f"{name} contains {x[where].item()} at index {where}; values must be finite"
        )


def _split_positions(positions: Iterable[int] | Tensor | None, length: int) -> Tensor:
    """Sorted unique split positions in [1, L-1]; None means all of them."""
    if length < 2:
        raise ValueError(f"the sequence length must be at least 2 to have a split, got L={length}")
    if positions is None:
        return torch.arange(1, length)
    p = torch.as_tensor(list(positions) if not isinstance(positions, Tensor) else positions)
    if p.dtype.is_floating_point or p.dtype == torch.bool or p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"positions must be a non-empty 1-d sequence of ints, got {positions!r}")
    if p.min() < 1 or p.max() > length - 1:
        raise ValueError(
            f"positions must lie in 1 .. L-1 = 1 .. {length - 1}, got values from "
            f"{int(p.min())} to {int(p.max())}"
        )
    return p.long().unique()


def _check_operator(T: Tensor, check_causal: bool, causal_tol: float) -> None:
    if not isinstance(T, Tensor):
        raise TypeError(f"T must be a torch.Tensor of shape (..., L, L), got {type(T).__name__}")
    if T.dim() < 2 or T.shape[-1] != T.shape[-2]:
        raise ValueError(f"T must have shape (..., L, L) (square), got {tuple(T.shape)}")
    if T.is_complex():
        raise ValueError(f"T must be real, got dtype {T.dtype}")
    _check_finite("T", T)
    if check_causal:
        upper = torch.triu(T, diagonal=1).abs()
        scale = T.abs().amax()
        if upper.amax() > causal_tol * scale:
            where = tuple(int(j) for j in (upper == upper.amax()).nonzero()[0])
            raise ValueError(
                f"T is not causal (lower-triangular): |T{list(where)}| = "
                f"{upper.amax().item():.3g} above the diagonal exceeds causal_tol * max|T| = "
                f"{(causal_tol * scale).item():.3g}; pass check_causal=False to use only the lower "
                "triangle"
            )


def _empty_spectra(T: Tensor, split: Tensor) -> Tensor:
    """Zeros (..., P, R) for the singular values of every H_i, R = max_i min(i, L-i)."""
    length = T.shape[-1]
    rank_bound = int(torch.minimum(split, length - split).max())
    return T.new_zeros(*T.shape[:-2], len(split), rank_bound)


# ---------------------------------------------------------------------------------------------
# Naive reference: the definition


def effective_state_size_naive(
    T: Tensor,
    tol: float = 1e-3,
    relative: bool = True,
    positions: Iterable[int] | Tensor | None = None,
    spectrum: bool = False,
    check_causal: bool = True,
    causal_tol: float = 1e-6,
) -> EssResult:
    """ESS by one float64 SVD of H_i = T[..., i:, :i] per split position. O(L^4) per channel.

    T: (..., L, L). The slow, obvious reference that the fast paths are tested against.
    """
    _check_tol(tol)
    _check_operator(T, check_causal, causal_tol)
    length = T.shape[-1]
    split = _split_positions(positions, length)
    T = T.to(torch.float64)
    s = _empty_spectra(T, split)
    for p, i in enumerate(split.tolist()):
        s_i = torch.linalg.svdvals(T[..., i:, :i])
        s[..., p, : s_i.shape[-1]] = s_i
    return _result(s, split, tol, relative, spectrum)
