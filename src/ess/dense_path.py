"""The dense path (docs/method.md §3.3, §3.4): ESS of a materialised causal operator T.

Gram matrices of the smaller side of each H_i, updated position by position. Two routes share
the sweep over positions:

- spectra: every eigenvalue of G_i = H_i^T H_i (LAPACK dsyevd: a tridiagonal reduction,
  4n^3/3 flops, half of them matrix-vector, then dsterf): both metrics, the spectrum;
- counts: tolerance-ESS only. By Sylvester's law of inertia #{lambda(G_i) > theta} is the
  number of positive eigenvalues of D in an LDL^T of G_i - theta I (Bunch-Kaufman dsytrf,
  n^3/3 flops, mostly matrix-matrix), theta = (tol s_1)^2 with s_1^2 bracketed to n * eps by a
  power iteration (_top_eigenvalue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import scipy.linalg.lapack
import torch
from torch import Tensor

from ess.metric import (
    EssResult,
    _check_operator,
    _check_tol,
    _empty_spectra,
    _own_threads,
    _result,
    _split_positions,
    _worker_pool,
    tolerance_ess,
)

FLOAT64_EPS = torch.finfo(torch.float64).eps


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
