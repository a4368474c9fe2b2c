"""ess.kernels: every fast form against the definition, entry by entry."""

import math

import pytest
import torch

from ess.kernels import (
    attention_matrix,
    materialise,
    operator_from_log_decay,
    scan,
    scan_chunked,
    segment_sum,
)


def brute_force_T(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """T[i, j] = C_i^T A_i ... A_{j+1} B_j, entry by entry. A: (..., L, N) diagonal or
    (..., L, N, N) dense; B, C: (..., L, N) -> (..., L, L)."""
    dense = A.ndim == B.ndim + 1
    length = B.shape[-2]
    T = B.new_zeros(*B.shape[:-2], length, length)
    for i in range(length):
        for j in range(i + 1):
            x = B[..., j, :]
            for t in range(j + 1, i + 1):
                x = (A[..., t, :, :] @ x[..., None])[..., 0] if dense else A[..., t, :] * x
            T[..., i, j] = (C[..., i, :] * x).sum(-1)
    return T


def random_realisation(length: int, dense: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, length, 5)
    B, C = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    if dense:
        return 0.4 * torch.randn(*shape, 5, generator=g, dtype=torch.float64), B, C
    return torch.exp(-3 * torch.rand(shape, generator=g, dtype=torch.float64)), B, C


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("length", [1, 7, 21])
def test_materialise_is_the_definition(length, dense):
    A, B, C = random_realisation(length, dense)
    torch.testing.assert_close(materialise(A, B, C), brute_force_T(A, B, C))


@pytest.mark.parametrize("length", [1, 7, 16, 21])
def test_scans_and_closed_form_agree_with_the_definition(length):
    A, B, C = random_realisation(length, seed=length)
    u = torch.randn(2, 3, length, 4, generator=torch.Generator().manual_seed(9)).double()
    T = brute_force_T(A, B, C)
    torch.testing.assert_close(operator_from_log_decay(A.log(), B, C), T)
    y = T @ u
    torch.testing.assert_close(scan(A, B, C, u), y)
    for chunk in (1, 3, 8, 64):
        torch.testing.assert_close(scan_chunked(A.log(), B, C, u, chunk=chunk), y)


def test_dense_scan_is_the_definition():
    A, B, C = random_realisation(9, dense=True)
    u = torch.randn(2, 3, 9, 4, generator=torch.Generator().manual_seed(9)).double()
    torch.testing.assert_close(scan(A, B, C, u), brute_force_T(A, B, C) @ u)


def test_segment_sum_sums_the_logs_between_j_and_i():
    log_a = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    S = segment_sum(log_a)[..., 0]
    inf = -math.inf
    expected = [[0, inf, inf, inf], [2, 0, inf, inf], [6, 4, 0, inf], [14, 12, 8, 0]]
    assert torch.equal(S, torch.tensor(expected))


def test_exact_zero_transitions_stay_zero():
    A = torch.tensor([[0.5], [0.0], [0.5], [0.5]])  # A_1 = exp(dt a) underflowed to 0
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0.5, 1, 0], [0, 0.25, 0.5, 1]])
    ones = torch.ones(4, 1)
    assert torch.equal(materialise(A, ones, ones), expected)
    T = operator_from_log_decay(A.log(), ones, ones)  # log 0 = -inf: exp gives an exact 0
    assert (T[1:, 0] == 0).all()
    torch.testing.assert_close(T, expected)


def test_chunked_scan_is_finite_for_tiny_decays():
    log_a = torch.full((1, 1, 64, 4), -200.0)  # products underflow; exp(-log_a) would overflow
    B = C = torch.ones(1, 1, 64, 4)
    u = torch.ones(1, 1, 64, 1)
    y = scan_chunked(log_a, B, C, u)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, torch.full_like(y, 4.0))  # only the present token survives


@pytest.mark.parametrize("window", [None, 3])
def test_attention_matrix_is_the_softmax_over_the_visible_keys(window):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    sinks = torch.tensor([0.0, 2.0], dtype=torch.float64)
    T, T_sunk = attention_matrix(scores, window), attention_matrix(scores, window, sinks)
    for h in range(2):
        for i in range(8):
            visible = [j for j in range(i + 1) if window is None or i - j < window]
            weights = scores[h, i, visible].exp()
            torch.testing.assert_close(T[h, i, visible], weights / weights.sum())
            sunk = weights / (weights.sum() + sinks[h].exp())
            torch.testing.assert_close(T_sunk[h, i, visible], sunk)
            hidden = [j for j in range(8) if j not in visible]
            assert (T[h, i, hidden] == 0).all() and (T_sunk[h, i, hidden] == 0).all()
