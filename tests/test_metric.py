"""The metric: fast paths against the naive definition, properties, and input errors."""

import math
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ess import (
    dense_path,
    effective_state_size,
    effective_state_size_naive,
    effective_state_size_ssm,
)
from ess.kernels import materialise
from ess.metric import entropy_ess, tolerance_ess


def random_realisation(seed, batch=(2,), length=24, n=4, diagonal=True):
    g = torch.Generator().manual_seed(seed)
    if diagonal:
        A = 0.3 + 0.65 * torch.rand(*batch, length, n, generator=g, dtype=torch.float64)
    else:
        A = 0.4 * torch.randn(*batch, length, n, n, generator=g, dtype=torch.float64)
    B = torch.randn(*batch, length, n, generator=g, dtype=torch.float64)
    C = torch.randn(*batch, length, n, generator=g, dtype=torch.float64)
    return A, B, C


def random_attention(seed, heads=3, length=40, d=8, window=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, length, d, generator=g, dtype=torch.float64)
    k = torch.randn(heads, length, d, generator=g, dtype=torch.float64)
    i = torch.arange(length)
    allowed = i[:, None] >= i[None, :]
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    scores = (q @ k.mT / math.sqrt(d)).masked_fill(~allowed, -math.inf)
    return scores.softmax(-1)


def assert_same(r, ref):
    assert torch.equal(r.positions.cpu(), ref.positions)
    assert torch.equal(r.tolerance, ref.tolerance)
    torch.testing.assert_close(r.entropy, ref.entropy, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("window", [None, 7])
def test_dense_path_equals_definition_on_attention(seed, window):
    T = random_attention(seed, window=window)
    assert_same(effective_state_size(T), effective_state_size_naive(T))


def test_dense_path_keeps_to_one_thread_when_given_one(monkeypatch):
    """A workflow job with threads: 1 must not run its two sweeps on two threads."""
    sweep_threads = set()
    column_grams = dense_path._column_grams

    def recording(T, splits):
        sweep_threads.add(threading.get_ident())
        yield from column_grams(T, splits)

    monkeypatch.setattr(dense_path, "_column_grams", recording)
    T = random_attention(0, length=200)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = effective_state_size(T)
    finally:
        torch.set_num_threads(before)
    assert len(sweep_threads) == 1
    assert_same(result, effective_state_size_naive(T))


@pytest.mark.parametrize("seed", range(3))
def test_dense_path_equals_definition_on_rank_deficient_operator(seed):
    # Linear attention with d=3: every H_i has rank <= 3 and many exact zero singular values.
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, 50, 3, generator=g, dtype=torch.float64)
    T = torch.tril(q @ k.mT)
    ref = effective_state_size_naive(T)
    assert_same(effective_state_size(T), ref)
    assert ref.tolerance.max() == 3


def retrieval_attention(heads=2, length=40, sharpness=8.0, seed=0):
    """Heads whose every query attends to one random earlier token: H_i has many near-equal
    singular values, so s_1^2 carries far less than half of |G|_F^2 and the count route cannot
    certify s_1 (it falls back to the eigenvalues)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(length)
    key = (torch.rand(heads, length, generator=g) * i).long()  # uniform in 0 .. t-1
    scores = torch.randn(heads, length, length, generator=g, dtype=torch.float64)
    scores.scatter_add_(-1, key[..., None], torch.full((heads, length, 1), sharpness).double())
    return scores.masked_fill(i[:, None] < i[None, :], -math.inf).softmax(-1)


def count_route_cases():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 2, 50, 3, generator=g, dtype=torch.float64)
    A, B, C = random_realisation(4, length=30)
    return {
        "attention": random_attention(0),
        "sliding-window attention": random_attention(1, window=7),
        "rank-deficient linear attention": torch.tril(q @ k.mT),
        "SSM": materialise(A, B, C),
        "retrieval attention": retrieval_attention(),
        "zero": torch.zeros(2, 12, 12),
        "a zero head beside a softmax one": torch.stack(
            [random_attention(2, heads=1)[0], torch.zeros(40, 40, dtype=torch.float64)]
        ),
    }


@pytest.mark.parametrize("case", count_route_cases())
@pytest.mark.parametrize("relative, tol", [(True, 1e-3), (True, 0.1), (True, 1e-12), (False, 0.01)])
def test_count_route_equals_definition(case, relative, tol):
    """entropy=False counts eigenvalues of G_i by an LDL^T instead of computing them."""
    T = count_route_cases()[case]
    ref = effective_state_size_naive(T, tol=tol, relative=relative)
    r = effective_state_size(T, tol=tol, relative=relative, entropy=False)
    assert r.entropy is None and r.spectrum is None
    assert torch.equal(r.positions, ref.positions)
    assert torch.equal(r.tolerance, ref.tolerance)
    spectra = effective_state_size(T, tol=tol, relative=relative, positions=[3, 9])
    counts = effective_state_size(T, tol=tol, relative=relative, positions=[3, 9], entropy=False)
    assert torch.equal(counts.tolerance, spectra.tolerance)


def test_count_route_certifies_s1_where_it_dominates_and_falls_back_where_not(monkeypatch):
    """Random softmax heads: s_1 certified by the power iteration at every position; heads
    that retrieve single tokens: s_1 not certifiable, the eigenvalues are computed."""
    fallbacks = []
    eigenvalues = dense_path._symmetric_eigenvalues

    def recording(gram):
        fallbacks.append(gram.shape[-1])
        return eigenvalues(gram)

    monkeypatch.setattr(dense_path, "_symmetric_eigenvalues", recording)
    effective_state_size(random_attention(0, length=60), entropy=False)
    assert fallbacks == []
    T = retrieval_attention(length=60)
    r = effective_state_size(T, entropy=False)
    assert len(fallbacks) > 0
    assert torch.equal(r.tolerance, effective_state_size_naive(T).tolerance)


@pytest.mark.parametrize("seed", range(5))
def test_positive_pivots_count_positive_eigenvalues(seed):
    """Sylvester's law of inertia on indefinite matrices whose LDL^T needs 2x2 pivots."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 40, generator=g, dtype=torch.float64)
    A = (X + X.T).numpy()
    A[range(40), range(40)] *= 1e-3  # a small diagonal: Bunch-Kaufman picks 2x2 blocks
    expected = int((torch.linalg.eigvalsh(torch.from_numpy(A)) > 0).sum())
    _, ipiv, _ = dense_path.scipy.linalg.lapack.dsytrf(A, lower=1)
    assert (ipiv < 0).any()
    assert dense_path._positive_pivots(A.copy()) == expected


@pytest.mark.parametrize("seed", range(3))
def test_top_eigenvalue_bracket_holds(seed):
    T = random_attention(seed, heads=4, length=60).numpy()
    H = T[:, 30:, :30]
    G = H.transpose(0, 2, 1) @ H
    top = torch.linalg.eigvalsh(torch.from_numpy(G))[:, -1].numpy()
    mu, certified, _ = dense_path._top_eigenvalue(G, dense_path.np.ones((4, 30)), rtol=1e-10)
    assert certified.all()
    assert (mu <= top * (1 + 1e-14)).all() and (top <= mu * (1 + 1e-10)).all()


def test_spectrum_without_entropy_is_refused():
    with pytest.raises(ValueError, match="spectrum=True needs every singular value"):
        effective_state_size(torch.eye(4), spectrum=True, entropy=False)


@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_realisation_path_equals_definition(seed, diagonal):
    A, B, C = random_realisation(seed, diagonal=diagonal)
    T = materialise(A, B, C)
    ref = effective_state_size_naive(T)
    assert_same(effective_state_size_ssm(A, B, C), ref)
    assert_same(effective_state_size(T), ref)


def test_realisation_path_broadcasts_batch_dims():
    A, B, C = random_realisation(0, batch=(1, 3), n=3)
    B2 = torch.cat([B, 2 * B])  # (2, 3, L, N): A and C broadcast over the first dim
    r = effective_state_size_ssm(A, B2, C)
    assert r.tolerance.shape == (2, 3, B.shape[-2] - 1)
    ref = effective_state_size_naive(
        materialise(A.expand(2, 3, -1, -1), B2, C.expand(2, 3, -1, -1))
    )
    assert_same(r, ref)


def test_float32_inputs_are_computed_in_float64():
    A, B, C = random_realisation(1)
    r32 = effective_state_size_ssm(A.float(), B.float(), C.float())
    r64 = effective_state_size_ssm(A.float().double(), B.float().double(), C.float().double())
    assert_same(r32, r64)
    assert r32.entropy.dtype == torch.float64 and r32.tolerance.dtype == torch.int64


@pytest.mark.parametrize("relative, tol", [(True, 1e-2), (False, 0.05)])
def test_positions_subset_and_spectrum(relative, tol):
    A, B, C = random_realisation(2, length=30)
    T = materialise(A, B, C)
    positions = range(1, 30, 4)
    ref = effective_state_size_naive(T, tol=tol, relative=relative, spectrum=True)
    for r in (
        effective_state_size(T, tol=tol, relative=relative, positions=positions, spectrum=True),
        effective_state_size_ssm(
            A, B, C, tol=tol, relative=relative, positions=positions, spectrum=True
        ),
    ):
        assert r.positions.tolist() == list(positions)
        picked = torch.tensor(list(positions)) - 1
        assert torch.equal(r.tolerance, ref.tolerance[..., picked])
        torch.testing.assert_close(r.entropy, ref.entropy[..., picked], rtol=1e-6, atol=1e-12)
        # the Gram route resolves singular values down to ~sqrt(n eps) s_1, not eps s_1
        n = min(r.spectrum.shape[-1], ref.spectrum.shape[-1])
        torch.testing.assert_close(
            r.spectrum[..., :n],
            ref.spectrum[..., picked, :n],
            rtol=1e-6,
            atol=1e-7 * ref.spectrum.max().item(),
        )


def test_entropy_of_r_equal_singular_values_is_r():
    s = torch.tensor([[2.0, 2.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5])
    torch.testing.assert_close(entropy_ess(s), torch.tensor([3.0, 1.0, 0.0]))
    assert tolerance_ess(s, 1e-3).tolist() == [3, 1, 0]


def test_all_zero_operator_has_zero_ess():
    r = effective_state_size(torch.zeros(2, 10, 10))
    assert r.tolerance.eq(0).all() and r.entropy.eq(0).all()


def test_ess_falls_near_both_ends():
    A, B, C = random_realisation(3, batch=(), length=40, n=6)
    r = effective_state_size_ssm(A, B, C)
    i = r.positions
    bound = torch.minimum(i, 40 - i)
    assert (r.tolerance <= bound).all()
    assert r.tolerance[0] == 1 and r.tolerance[-1] == 1


# ---------------------------------------------------------------------------------------------
# Properties


operators = st.integers(0, 2**31 - 1).map(
    lambda seed: torch.tril(
        torch.randn(12, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
)


@settings(max_examples=30, deadline=None)
@given(T=operators, scale=st.floats(1e-6, 1e6))
def test_relative_mode_is_scale_invariant(T, scale):
    r, rs = effective_state_size(T), effective_state_size(scale * T)
    assert torch.equal(r.tolerance, rs.tolerance)
    torch.testing.assert_close(r.entropy, rs.entropy, rtol=1e-9, atol=0)


@settings(max_examples=30, deadline=None)
@given(T=operators)
def test_ess_is_bounded_by_the_hankel_shape(T):
    r = effective_state_size(T)
    bound = torch.minimum(r.positions, 12 - r.positions)
    assert (r.tolerance <= bound).all()
    assert (r.entropy <= bound + 1e-9).all()


@settings(max_examples=30, deadline=None)
@given(T=operators, tols=st.lists(st.floats(1e-8, 0.9), min_size=2, max_size=4))
def test_tolerance_ess_is_monotone_in_tol(T, tols):
    counts = [effective_state_size(T, tol=t).tolerance for t in sorted(tols)]
    for looser, stricter in zip(counts, counts[1:], strict=False):
        assert (looser >= stricter).all()


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error before any work


def test_non_square_operator_is_refused():
    with pytest.raises(ValueError, match=r"square.*\(3, 4\)"):
        effective_state_size(torch.zeros(3, 4))


def test_non_causal_operator_is_refused_unless_asked():
    T = torch.tril(torch.ones(6, 6))
    T[1, 4] = 0.5
    with pytest.raises(ValueError, match=r"not causal.*\[1, 4\].*check_causal=False"):
        effective_state_size(T)
    r = effective_state_size(T, check_causal=False)
    assert torch.equal(r.tolerance, effective_state_size(torch.tril(T)).tolerance)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_named_with_their_index(bad):
    T = torch.tril(torch.ones(2, 5, 5))
    T[1, 3, 2] = bad
    with pytest.raises(ValueError, match=r"T contains (nan|inf) at index \(1, 3, 2\)"):
        effective_state_size(T)
    A, B, C = random_realisation(0)
    B[0, 5, 1] = bad
    with pytest.raises(ValueError, match=r"B contains (nan|inf) at index \(0, 5, 1\)"):
        effective_state_size_ssm(A, B, C)


@pytest.mark.parametrize("tol", [0, -1e-3, math.nan])
def test_non_positive_tol_is_refused(tol):
    with pytest.raises(ValueError, match="tol must be a positive number"):
        effective_state_size(torch.eye(4), tol=tol)
    with pytest.raises(ValueError, match="tol must be a positive number"):
        effective_state_size_ssm(*random_realisation(0), tol=tol)


def test_realisation_shape_mismatches_are_named():
    A, B, C = random_realisation(0, length=10, n=4)
    with pytest.raises(ValueError, match=r"B and C .* \(2, 10, 4\) and C \(2, 10, 3\)"):
        effective_state_size_ssm(A, B, C[..., :3])
    with pytest.raises(ValueError, match=r"A must have shape .* L=10, N=4 .* \(2, 9, 4\)"):
        effective_state_size_ssm(A[:, :9], B, C)
    with pytest.raises(ValueError, match="do not broadcast"):
        effective_state_size_ssm(A, B[:1].expand(3, -1, -1), C)


@pytest.mark.parametrize("positions", [[0, 3], [5, 10], [1.5], []])
def test_positions_out_of_range_are_refused(positions):
    with pytest.raises(ValueError, match="positions must"):
        effective_state_size(torch.eye(10), positions=positions)
