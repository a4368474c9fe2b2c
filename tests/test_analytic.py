"""ESS of operators whose Hankel blocks H_i = T[i:, :i] have a known rank or spectrum, through
the dense path and (where the operator has one) the realisation path."""

import pytest
import torch
from torch import Tensor

from ess import EssResult, effective_state_size, effective_state_size_ssm
from ess import operators as ops

L = 24
# Exact-rank tests count the singular values above RANK_TOL * s_1. The dense path resolves
# singular values down to ~1e-7 s_1 and the smallest non-zero s_k / s_1 of these seeded cases is
# ~3e-4 (sliding-window attention with random scores), so 1e-5 separates rank from round-off.
RANK_TOL = 1e-5


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _tent(bound: int, length: int = L) -> Tensor:
    """min(bound, i, L - i) at the split positions i = 1 .. L-1."""
    i = torch.arange(1, length)
    return torch.minimum(torch.minimum(i, length - i), torch.tensor(bound))


def _ess_paths(op: ops.Operator, **kwargs) -> dict[str, EssResult]:
    """ESS through the dense path and, where there is one, the realisation path."""
    paths = {"dense": effective_state_size(op.T, **kwargs)}
    if op.realisation is not None:
        paths["realisation"] = effective_state_size_ssm(*op.realisation, **kwargs)
    return paths


def _assert_tolerance_ess(op: ops.Operator, expected: Tensor, tol: float = RANK_TOL) -> None:
    for path, result in _ess_paths(op, tol=tol).items():
        assert torch.equal(result.tolerance, expected.expand_as(result.tolerance)), path


@pytest.mark.parametrize("dense", [False, True])
def test_lti_ssm_of_order_n_has_ess_min_n_i_l_minus_i(dense):
    # distinct stable poles, generic B and C: a minimal realisation of order N, so every H_i
    # has rank min(N, i, L - i). The dense A = V diag(poles) V^-1 is the same system.
    g = torch.Generator().manual_seed(0)
    poles = torch.tensor([0.9, -0.7, 0.5, -0.2], dtype=torch.float64)
    n = len(poles)
    B, C = _randn(g, 3, n), _randn(g, 3, n)
    if dense:
        V = _randn(g, n, n)
        A = ((V * poles) @ torch.linalg.inv(V)).expand(3, n, n)
        B, C = B @ V.T, C @ torch.linalg.inv(V)  # B -> V B, C -> V^-T C: the same h[m]
    else:
        A = poles.expand(3, n)
    _assert_tolerance_ess(ops.lti_ssm(A, B, C, L), _tent(n))


def test_linear_attention_with_feature_dimension_d_has_ess_min_d_i_l_minus_i():
    # H_i = Q[i:] K[:i]^T with Gaussian Q, K of width d: rank min(d, i, L - i)
    g = torch.Generator().manual_seed(1)
    d = 3
    op = ops.linear_attention(_randn(g, 2, L, d), _randn(g, 2, L, d))
    _assert_tolerance_ess(op, _tent(d))


# Sliding-window attention, window w: T[r, c] > 0 exactly when 0 <= r - c <= w - 1.
# In H_i (rows r >= i, columns c <= i - 1) a non-zero needs r - c <= w - 1, so only the rows
# i .. i+w-2 and the columns i-w+1 .. i-1 can be non-zero: at most R = min(w-1, L-i) rows and
# C = min(w-1, i) columns, hence rank(H_i) <= min(w-1, i, L-i).
# Index that block by a = r - i and b = i - 1 - c: an entry is non-zero iff a + b <= w - 2, an
# anti-triangle of positive weights. Take its last m = min(R, C) rows and columns; in those
# (a', b') indices the non-zeros are a' + b' <= w - 2 - (R - m) - (C - m). If R = w-1 or C = w-1
# (i.e. max(i, L-i) >= w-1) this is a' + b' <= m - 1: an m x m anti-triangular matrix with a
# positive anti-diagonal, whose determinant is the product of the anti-diagonal, non-zero. So
# rank(H_i) = min(w-1, i, L-i) for ANY positive attention weights when max(i, L-i) >= w-1, in
# particular at every i once L >= 2(w-1). When both ends cut the block (L < 2(w-1)) the m x m
# block has extra positive entries below its anti-diagonal and the rank is only generic (uniform
# attention then gives rank 1, as softmax attention with constant scores does).


@pytest.mark.parametrize("window", [2, 3, 5, 8])
def test_sliding_window_attention_has_ess_min_w_minus_1_i_l_minus_i(window):
    g = torch.Generator().manual_seed(2)
    q, k = _randn(g, 3, L, 4), _randn(g, 3, L, 4)
    _assert_tolerance_ess(ops.softmax_attention(q, k, window=window), _tent(window - 1))


@pytest.mark.parametrize("window", [2, 3, 5, 8])
def test_sliding_window_attention_with_uniform_weights_has_ess_min_w_minus_1_i_l_minus_i(window):
    # zero queries: each row averages its visible keys. L >= 2(w-1): positivity fixes the rank
    zeros, k = torch.zeros(L, 4, dtype=torch.float64), _randn(torch.Generator(), L, 4)
    op = ops.softmax_attention(zeros, k, window=window)
    _assert_tolerance_ess(op, _tent(window - 1), tol=1e-3)


def test_uniform_causal_attention_has_ess_one():
    # without a window, uniform weights 1/(r+1) make every H_i the outer product of (1/(r+1))_r
    # and a vector of ones: rank 1 although the KV cache holds i entries
    zeros = torch.zeros(L, 4, dtype=torch.float64)
    op = ops.softmax_attention(zeros, zeros)
    _assert_tolerance_ess(op, torch.ones(L - 1, dtype=torch.int64), tol=1e-3)
    assert torch.equal(op.tss, torch.arange(1, L))


@pytest.mark.parametrize("kernel_length", [2, 5, 9])
def test_convolution_with_kernel_length_k_has_ess_min_k_minus_1_i_l_minus_i(kernel_length):
    # H_i is a Hankel block of the taps h[1..k-1]: the anti-triangle argument above with
    # h[k-1] != 0 on the anti-diagonal
    kernel = _randn(torch.Generator().manual_seed(3), 2, kernel_length)
    _assert_tolerance_ess(ops.convolution(kernel, L), _tent(kernel_length - 1))


def _orthonormal(g: torch.Generator, rows: int, cols: int) -> Tensor:
    return torch.linalg.qr(_randn(g, rows, cols)).Q


@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_entropy_ess_of_r_equal_singular_values_is_r(rank):
    # T with H_i = 2.5 U V^T at one split i (U, V orthonormal): r singular values 2.5
    g = torch.Generator().manual_seed(4)
    split = 9
    T = _randn(g, L, L).tril()
    T[split:, :split] = 2.5 * _orthonormal(g, L - split, rank) @ _orthonormal(g, split, rank).T
    result = effective_state_size(T, positions=[split], spectrum=True)
    torch.testing.assert_close(result.spectrum[0, :rank], torch.full((rank,), 2.5).double())
    assert result.tolerance.tolist() == [rank]
    torch.testing.assert_close(
        result.entropy, torch.tensor([float(rank)]).double(), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("d", [1, 2, 4])
def test_entropy_ess_of_linear_attention_with_orthonormal_factors_is_d(d):
    # H_i = Q[i:] K[:i]^T with orthonormal columns in Q[i:] and in K[:i]: d singular values 1
    g = torch.Generator().manual_seed(5)
    split = 10
    q, k = _randn(g, L, d), _randn(g, L, d)
    q[split:] = _orthonormal(g, L - split, d)
    k[:split] = _orthonormal(g, split, d)
    for path, result in _ess_paths(ops.linear_attention(q, k), positions=[split]).items():
        assert result.tolerance.tolist() == [d], path
        torch.testing.assert_close(
            result.entropy, torch.tensor([float(d)]).double(), rtol=1e-6, atol=0, msg=path
        )


def _profiles() -> dict[str, ops.Operator]:
    g = torch.Generator().manual_seed(6)
    q, k = _randn(g, 2, L, 16), _randn(g, 2, L, 16)
    gates = 0.7 + 0.3 * torch.rand(2, L, 16, generator=g, dtype=torch.float64)
    dt = 0.05 + 0.5 * torch.rand(L, 3, generator=g, dtype=torch.float64)
    A = -(0.5 + torch.rand(3, 16, generator=g, dtype=torch.float64))
    return {
        "SA": ops.softmax_attention(q, k),
        "GLA": ops.gated_linear_attention(q, k, gates),
        "S6": ops.selective_ssm(dt, A, _randn(g, L, 16), _randn(g, L, 16)),
        "random T": ops.Operator(_randn(g, 2, L, L).tril(), None, torch.arange(1, L)),
    }


@pytest.mark.parametrize("name", ["SA", "GLA", "S6", "random T"])
def test_ess_falls_near_both_ends_of_the_sequence(name):
    # H_i is (L - i) x i, so ESS_i <= min(i, L - i) whatever the state size (16 here, or i for
    # SA): both ends of the sequence show a fall that is a boundary effect, not forgetting
    for path, result in _ess_paths(_profiles()[name]).items():
        bound = _tent(L)
        assert (result.tolerance <= bound).all(), path
        assert (result.entropy <= bound.double() + 1e-9).all(), path
        assert (result.tolerance[..., [0, -1]] == 1).all(), path  # H_1, H_{L-1}: one column/row


def test_a_generic_causal_operator_reaches_the_bound_min_i_l_minus_i():
    # a random lower-triangular T has full-rank H_i: ESS is exactly the tent min(i, L - i)
    T = _randn(torch.Generator().manual_seed(7), 3, L, L).tril()
    _assert_tolerance_ess(ops.Operator(T, None, torch.arange(1, L)), _tent(L), tol=1e-3)


def test_an_operator_that_resets_at_r_has_ess_r_minus_i_ahead_of_it():
    """The look-ahead bound (ess.paper.e6.boundaries.reset_bound, docs/method.md E6): if no output
    at or after r reads an input before r, H_i = T[i:, :i] (i < r) has non-zero rows i..r-1 only, so
    ESS_i <= r - i: ESS falls linearly towards a full reset BEFORE it happens. A generic
    operator otherwise reaches every bound: ESS_i = min(i, r - i) ahead of r, min(i - r, L - i)
    after it; and one rank-1 term reaching across r adds exactly 1 ahead of it."""
    from ess.paper.e6.boundaries import reset_bound

    length, r = 48, 30
    g = torch.Generator().manual_seed(7)
    T = _randn(g, length, length).tril()
    T[r:, :r] = 0.0  # the reset: nothing before r reaches an output at or after r
    i = torch.arange(1, length)
    ahead = torch.from_numpy(reset_bound(i.numpy(), r))
    expected = torch.where(i <= r, torch.minimum(i, ahead), torch.minimum(i - r, length - i))
    result = effective_state_size(T, tol=RANK_TOL)
    assert torch.equal(result.tolerance, expected)
    near = (i >= r // 2) & (i <= r)  # r - i <= i: the distance to the reset is the binding bound
    assert torch.equal(result.tolerance[near], ahead[near])

    crossing = T.clone()
    crossing[r:, :r] = torch.outer(_randn(g, length - r), _randn(g, r))
    crossed = effective_state_size(crossing, tol=RANK_TOL).tolerance
    inside = (i > r // 2) & (i < r)  # r - i + 1 <= i
    assert torch.equal(crossed[inside], ahead[inside] + 1)


def test_a_recurrence_whose_decay_is_zero_at_r_is_bounded_by_r_minus_i():
    # x_r = 0 * x_{r-1} + B_r u_r: the state is wiped at r (a gate closing fully at a
    # delimiter). Order N = 6: ESS_i = min(N, i, r - i) ahead of r, min(N, i - r, L - i) after.
    length, r, n = 40, 25, 6
    g = torch.Generator().manual_seed(3)
    gates = 0.5 + 0.45 * torch.rand(2, length, n, generator=g, dtype=torch.float64)
    gates[:, r] = 0.0
    q, k = _randn(g, 2, length, n), _randn(g, 2, length, n)
    i = torch.arange(1, length)
    expected = torch.where(
        i <= r,
        torch.minimum(torch.minimum(i, r - i), torch.tensor(n)),
        torch.minimum(torch.minimum(i - r, length - i), torch.tensor(n)),
    )
    _assert_tolerance_ess(ops.gated_linear_attention(q, k, gates), expected)
