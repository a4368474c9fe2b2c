"""Effective state-size (ESS) of a causal sequence-mixing operator.

For a causal operator T (L x L, lower-triangular) and a split position i (past inputs 0..i-1,
present and future outputs i..L-1) the operator's Hankel block is

    H_i = T[i:, :i]        shape (L-i, i),   i = 1 .. L-1

and rank(H_i) is the smallest state any recurrence realising T must carry across the split.
With singular values s_1 >= s_2 >= ... of H_i:

    tolerance-ESS_i = #{k : s_k > tol * s_1}      (relative=True; s_k > tol when relative=False)
    entropy-ESS_i   = exp(-sum_k p_k log p_k),   p_k = s_k / sum(s)     (0 when H_i = 0)

Three ways to get the singular values, all returning the same `EssResult`:

- `effective_state_size_naive`: one float64 SVD of H_i per position. The definition; slow.
- `effective_state_size`: any materialised T (attention has no small realisation). Eigenvalues
  of the smaller Gram matrix of H_i in float64, updated by one rank-1 term per position.
- `effective_state_size_ssm`: T given by a time-varying realisation (A, B, C), never
  materialised. H_i = O_i R_i factors through the N-dimensional state, so s(H_i) are the
  singular values of an N x N matrix built from square-root Gramians, O(L N^3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

FLOAT64_EPS = torch.finfo(torch.float64).eps
# Memory the SSM path may use for its stored square-root Gramians before it splits the batch.
SSM_FACTOR_BUDGET_BYTES = 2 * 1024**3


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


# ---------------------------------------------------------------------------------------------
# Dense path: Gram matrices of the smaller side, updated position by position
#
# Two routes share the sweep over positions (docs/method.md §3.3, §3.4):
#   spectra: every eigenvalue of G_i = H_i^T H_i (LAPACK dsyevd: a tridiagonal reduction,
#            4n^3/3 flops, half of them matrix-vector, then dsterf): both metrics, the spectrum;
#   counts:  tolerance-ESS only. By Sylvester's law of inertia #{lambda(G_i) > theta} is the
#            number of positive eigenvalues of D in an LDL^T of G_i - theta I (Bunch-Kaufman
#            dsytrf, n^3/3 flops, mostly matrix-matrix), theta = (tol s_1)^2 with s_1^2
#            bracketed to n * eps by a power iteration (_top_eigenvalue).


def _antitranspose(T: Tensor) -> Tensor:
    """T'[a, b] = T[L-1-b, L-1-a]: still causal, and H'_{L-i} is H_i transposed and reversed,
    so s(H'_{L-i}) = s(H_i). Turns the row-side Gram of H_i into a column-side one."""
    return T.flip(-1, -2).mT


def _column_grams(T: Tensor, splits: list[int]) -> Iterator[tuple[int, Tensor]]:
    """G_i = H_i^T H_i (i x i) of H_i = T[..., i:, :i] at the positions i in splits.

    T: (b, L, L) float64; splits: positions i, all with i <= L - i (the column side is the
    smaller one). Walks i downwards from max(splits): G_i = G_{i+1}[:i, :i] + t t^T with
    t = T[i, :i] (row i joins H), an O(i^2) update instead of an O(L i^2) product.
    Yields (i, G_i) with G_i: (b, i, i), a view that the next step overwrites.
    """
    top = max(splits)
    wanted = set(splits)
    gram = T[:, top:, :top].mT @ T[:, top:, :top]
    for i in range(top, min(splits) - 1, -1):
        if i < top:
            row = T[:, i, :i]
            gram[:, :i, :i].baddbmm_(row[:, :, None], row[:, None, :])  # 2x faster than +=
        if i in wanted:
            yield i, gram[:, :i, :i]


def _symmetric_eigenvalues(gram: Tensor) -> Tensor:
    """Eigenvalues of symmetric (..., n, n) matrices. On the CPU through NumPy, whose LAPACK
    (OpenBLAS) runs dsyevd 1.3-1.6x faster than torch's single-threaded (benchmarks/README.md)."""
    if gram.device.type == "cpu":
        return torch.from_numpy(np.linalg.eigvalsh(gram.numpy()))
    return torch.linalg.eigvalsh(gram)


def _eigenvalue_floor(top_eigenvalue: Tensor | np.ndarray, n: int):
    """Eigenvalues of an n x n float64 Gram matrix at or below this are noise around zero.

    Forming and diagonalising the Gram matrix costs an absolute error of about n * eps * s_1^2
    in each eigenvalue; the floor is a tenth of that (an SVD of H_i would return such values as
    ~eps * s_1, just as negligible). Both routes treat them as exact zeros.
    """
    return 0.1 * n * FLOAT64_EPS * top_eigenvalue


def _gram_singular_values(eigenvalues: Tensor) -> Tensor:
    """s = sqrt(lambda) for the eigenvalues (..., n) of a float64 Gram matrix, 0 at the floor."""
    floor = _eigenvalue_floor(eigenvalues.amax(dim=-1, keepdim=True), eigenvalues.shape[-1])
    return torch.where(eigenvalues > floor, eigenvalues, 0.0).sqrt()


def _top_eigenvalue(G: np.ndarray, x: np.ndarray, rtol: float, steps: int = 30):
    """lambda_max of symmetric positive semidefinite G: (b, n, n), bracketed by a power iteration.

    x: (b, n) start vectors (any nonzero). Returns (mu, certified, x): mu (b,) the Rayleigh
    quotient of the last iterate x (b, n), a lower bound on lambda_max; certified (b,) where
    lambda_max <= mu (1 + rtol) is proven:
    with r = |G x - mu x| some eigenvalue lies within r of mu; when |G|_F^2 < 2 (mu - r)^2 every
    other one is below beta = sqrt(|G|_F^2 - (mu - r)^2) < mu - r, so that one is lambda_max and
    Kato-Temple's bound gives lambda_max <= mu + r^2 / (mu - beta). Where the top eigenvalue
    carries less than half of |G|_F^2, or the iteration stalls, nothing is certified.
    """
    frobenius2 = np.einsum("bij,bij->b", G, G)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    for _ in range(steps):
        y = np.matmul(G, x[..., None])[..., 0]
        mu = np.einsum("bi,bi->b", x, y)
        r = np.linalg.norm(y - mu[:, None] * x, axis=-1)
        below = np.clip(mu - r, 0.0, None)
        separated = frobenius2 < 1.99 * below**2  # 1.99: a margin for rounding in the norms
        beta = np.sqrt(np.clip(frobenius2 - below**2, 0.0, None))
        gap = np.where(separated, mu - beta, 1.0)
        certified = separated & (r**2 / gap <= rtol * mu)
        norm = np.linalg.norm(y, axis=-1, keepdims=True)
        if (certified | (norm[:, 0] == 0)).all():  # G x = 0: x stays, nothing is certified
            break
        x = np.where(norm > 0, y / np.where(norm > 0, norm, 1.0), x)
    return mu, certified, x


def _positive_pivots(A: np.ndarray) -> int:
    """Number of positive eigenvalues of symmetric A (n, n), destroyed, by Sylvester's law of
    inertia: those of D in A = P L D L^T P^T (dsytrf, D with 1x1 and 2x2 blocks). A zero pivot
    (A exactly singular) counts as not positive."""
    # lwork for 64-column blocks: f2py's default is the unblocked minimum, 2x slower
    ldu, ipiv, _ = scipy.linalg.lapack.dsytrf(A.T, lower=1, overwrite_a=1, lwork=64 * len(A))
    d, off = np.diagonal(ldu), np.diagonal(ldu, -1)
    two = ipiv < 0  # a 2x2 block occupies two consecutive negative entries
    index = np.arange(len(ipiv))
    run_start = np.maximum.accumulate(np.where(two, -1, index)) + 1
    first = two & ((index - run_start) % 2 == 0)
    k = index[first]
    a, b, c = d[k], off[k], d[k + 1]
    det = a * c - b * b
    in_blocks = np.where(det < 0, 1, np.where(a + c > 0, np.where(det > 0, 2, 1), 0)).sum()
    return int((d[~two] > 0).sum() + in_blocks)


def _gram_counts(
    gram: Tensor, tol: float, relative: bool, x: np.ndarray
) -> tuple[Tensor, np.ndarray]:
    """Tolerance-ESS #{lambda(G) > theta} of Gram matrices gram: (b, n, n), CPU float64.

    theta = max(tol^2 lambda_max, floor) (relative) or max(tol^2, floor), the floor as in the
    spectra route, so both routes count the same eigenvalues. lambda_max comes from
    _top_eigenvalue, started at x: (b, n) (the previous position's iterate); a matrix whose
    lambda_max it cannot certify, or whose tol^2 is not clear of the floor, takes the spectra
    route instead. Returns counts (b,) int64 and the iterates (b, n) for the next position.
    Ties: an eigenvalue within about n * eps * s_1^2 of theta may be counted on either side,
    as by the spectra route and by an SVD of H_i.
    """
    n = gram.shape[-1]
    G = np.array(gram.numpy(), order="C")  # a copy: the factorisation overwrites it
    counts = np.zeros(len(G), dtype=np.int64)
    if relative:
        # lambda_max to n eps / tol^2 relative (theta = tol^2 lambda_max to n eps lambda_max),
        # and to 1e-3 at most: with a tiny tol theta is the floor, 0.1 n eps lambda_max
        rtol = min(n * FLOAT64_EPS / tol**2, 1e-3)
        top, certified, x = _top_eigenvalue(G, x, rtol=rtol)
        theta = np.maximum(tol**2 * top, _eigenvalue_floor(top, n))
    else:  # lambda_max <= |G|_F: the floor is below tol^2 whenever theta can ignore it
        certified = tol**2 > _eigenvalue_floor(np.linalg.norm(G, axis=(1, 2)), n)
        theta = np.full(len(G), tol**2)
    for h in range(len(G)):
        if not certified[h]:
            s = _gram_singular_values(_symmetric_eigenvalues(torch.from_numpy(G[h])))
            counts[h] = tolerance_ess(s, tol, relative)
        else:
            G[h].reshape(-1)[:: n + 1] -= theta[h]
            counts[h] = _positive_pivots(G[h])
    return torch.from_numpy(counts), x


def _spectra_measure() -> Callable[[Tensor], Tensor]:
    """Singular values (b, n) of H_i from its Gram matrix (b, n, n)."""
    return lambda gram: _gram_singular_values(_symmetric_eigenvalues(gram))


def _counts_measure(tol: float, relative: bool) -> Callable[[Tensor], Tensor]:
    """Tolerance-ESS (b,) of H_i from its Gram matrix (b, n, n); each sweep gets its own,
    which starts every power iteration at the previous position's iterate."""
    iterate = None

    def measure(gram: Tensor) -> Tensor:
        nonlocal iterate
        n = gram.shape[-1]
        start = np.ones((len(gram), n)) if iterate is None else iterate[:, :n]
        start[~start.any(axis=-1)] = 1.0
        counts, iterate = _gram_counts(gram, tol, relative, start)
        return counts

    return measure


def _dense_sweeps(T: Tensor, split: Tensor, make_measure) -> list[Tensor]:
    """[measure(G_i) for i in split], G_i the smaller Gram matrix of H_i. T: (b, L, L) float64.

    Positions with i <= L/2 use the column Gram of T, the others the column Gram of the
    antitranspose of T at L - i, each sweep with its own make_measure(). The two independent
    sweeps run on two threads when the caller allows torch two or more (each with a
    single-threaded LAPACK: for these sizes that beats one sweep with a threaded LAPACK), one
    after the other when it allows one (a workflow job with threads: 1 then keeps to its core).
    """
    length = T.shape[-1]
    values = {}
    left = [i for i in split.tolist() if i <= length - i]
    right = [length - i for i in split.tolist() if i > length - i]

    def sweep(operator: Tensor, splits: list[int], to_position) -> None:
        if splits:
            measure = make_measure()
            for i, gram in _column_grams(operator, splits):
                values[to_position(i)] = measure(gram)

    with _own_threads() as threads, _worker_pool(min(2, threads)) as pool:
        jobs = [
            pool.submit(sweep, T, left, lambda i: i),
            pool.submit(sweep, _antitranspose(T), right, lambda i: length - i),
        ]
        for job in jobs:
            job.result()
    return [values[i] for i in split.tolist()]


def effective_state_size(
    T: Tensor,
    tol: float = 1e-3,
    relative: bool = True,
    positions: Iterable[int] | Tensor | None = None,
    spectrum: bool = False,
    check_causal: bool = True,
    causal_tol: float = 1e-6,
    entropy: bool = True,
) -> EssResult:
    """ESS of a materialised causal operator at every split position.

    T: (..., L, L) real tensor, lower-triangular; leading dims (batch, layer, head, channel)
       are independent operators. Computed in float64 on T's device.
    tol: threshold of tolerance-ESS, relative to s_1(H_i) (relative=True) or absolute.
    positions: split positions to evaluate (default 1 .. L-1), e.g. range(1, L, 8) for a stride.
    spectrum: also return the singular values of every H_i.
    check_causal: refuse T whose upper triangle exceeds causal_tol * max|T|; with False only
       the lower triangle enters H_i anyway.
    entropy: False computes tolerance-ESS only (EssResult.entropy is None), by counting
       eigenvalues with an LDL^T factorisation instead of computing them: 2-4x faster on the
       CPU (benchmarks/README.md). Cannot be combined with spectrum=True.

    Singular values come from the smaller Gram matrix of H_i (min(i, L-i) square) in float64,
    updated by a rank-1 term per position; they agree with an SVD of H_i down to about
    sqrt(n * eps) * s_1 (~1e-7 s_1), far below any tolerance used in practice. Both routes
    count the same eigenvalues; one within about n * eps * s_1^2 of the threshold is a tie
    that rounding decides, in either route as in an SVD.
    Returns EssResult with tolerance/entropy of shape (..., P).
    """
    _check_tol(tol)
    _check_operator(T, check_causal, causal_tol)
    if spectrum and not entropy:
        raise ValueError(
            "spectrum=True needs every singular value, which entropy=False skips; pass "
            "entropy=True (the default) to get the spectrum"
        )
    split = _split_positions(positions, T.shape[-1])
    batch, length = T.shape[:-2], T.shape[-1]
    T = T.to(torch.float64).reshape(-1, length, length)
    if not entropy and T.device.type == "cpu":
        counts = _dense_sweeps(T, split, lambda: _counts_measure(tol, relative))
        tolerance = torch.stack(counts, dim=-1).reshape(*batch, len(split))
        return EssResult(tolerance=tolerance, entropy=None, positions=split)
    s = _empty_spectra(T, split)
    for p, s_i in enumerate(_dense_sweeps(T, split, _spectra_measure)):
        s[:, p, : s_i.shape[-1]] = s_i
    result = _result(s.reshape(*batch, *s.shape[1:]), split.to(T.device), tol, relative, spectrum)
    return result if entropy else EssResult(result.tolerance, None, result.positions)


# ---------------------------------------------------------------------------------------------
# Realisation path: square-root Gramians of x_t = A_t x_{t-1} + B_t u_t, y_t = C_t . x_t
#
# H_i = O_i R_i with R_i = [A_{i-1}..A_1 B_0, ..., A_{i-1} B_{i-2}, B_{i-1}]   (N x i)
#                    O_i = rows C_t^T A_t .. A_i for t = i .. L-1              ((L-i) x N)
# Reachability  P_i = R_i R_i^T:  P_{i+1} = A_i P_i A_i^T + B_i B_i^T,   P_0 = 0
# Observability O_i^T O_i = A_i^T W_i A_i with
#               W_i = C_i C_i^T + A_{i+1}^T W_{i+1} A_{i+1},             W_L = 0
# With P_i = F_i F_i^T and W_i = G_i G_i^T:  s(H_i) = s(G_i^T A_i F_i), an N x N matrix.


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
