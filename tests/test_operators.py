"""The mixer zoo (`ess.operators`): each mixer's materialised T against the mixer's own forward
computation, against its realisation, and the ESS of both paths against the naive definition."""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from ess import (
    effective_state_size,
    effective_state_size_naive,
    effective_state_size_ssm,
)
from ess import operators as ops
from ess.kernels import materialise

L = 20
HEADS, CHANNELS, D_K, D_V, D_STATE = 3, 4, 5, 2, 3
WINDOW, KERNEL = 4, 6


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


@dataclass(frozen=True)
class Case:
    """A mixer on seeded random inputs: its operator, its own output, and T applied by einsum."""

    operator: ops.Operator
    forward: Tensor
    applied: Tensor


def _per_head(T: Tensor, v: Tensor) -> Tensor:
    """All value channels of a head share T: (H, L, L), (H, L, d_v) -> (H, L, d_v)."""
    return torch.einsum("htj,hjp->htp", T, v)


def _per_channel(T: Tensor, u: Tensor) -> Tensor:
    """One T per channel: (C, L, L), (C, L) -> (C, L)."""
    return torch.einsum("ctj,cj->ct", T, u)


def _attention(g: torch.Generator, window: int | None) -> Case:
    q, k, v = _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_V)
    op = ops.softmax_attention(q, k, window=window)
    return Case(op, ops.softmax_attention_forward(q, k, v, window=window), _per_head(op.T, v))


def _linear_attention(g: torch.Generator) -> Case:
    q, k, v = _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_V)
    phi = ops.elu_feature_map
    op = ops.linear_attention(q, k, feature_map=phi)
    return Case(op, ops.linear_attention_forward(q, k, v, feature_map=phi), _per_head(op.T, v))


def _weighted_linear_attention(g: torch.Generator) -> Case:
    q, k, v = _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_V)
    decay = _uniform(g, 0.5, 1.0, HEADS, D_K)
    op = ops.weighted_linear_attention(q, k, decay)
    forward = ops.weighted_linear_attention_forward(q, k, v, decay)
    return Case(op, forward, _per_head(op.T, v))


def _gated_linear_attention(g: torch.Generator) -> Case:
    q, k, v = _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_V)
    gates = _uniform(g, 0.6, 1.0, HEADS, L, D_K)
    op = ops.gated_linear_attention(q, k, gates)
    return Case(op, ops.gated_linear_attention_forward(q, k, v, gates), _per_head(op.T, v))


def _deltanet(g: torch.Generator) -> Case:
    q, v = _randn(g, HEADS, L, D_K), _randn(g, HEADS, L, D_V)
    k = torch.nn.functional.normalize(_randn(g, HEADS, L, D_K), dim=-1)
    beta = _uniform(g, 0.1, 0.9, HEADS, L)
    op = ops.deltanet(q, k, beta)
    return Case(op, ops.deltanet_forward(q, k, v, beta), _per_head(op.T, v))


def _selective_ssm(g: torch.Generator) -> Case:
    u, dt = _randn(g, L, CHANNELS), _uniform(g, 0.05, 0.5, L, CHANNELS)
    A = -_uniform(g, 0.5, 4.0, CHANNELS, D_STATE)
    B, C, D = _randn(g, L, D_STATE), _randn(g, L, D_STATE), _randn(g, CHANNELS)
    op = ops.selective_ssm(dt, A, B, C, D)
    applied = torch.einsum("ctj,jc->tc", op.T, u)
    return Case(op, ops.selective_ssm_forward(u, dt, A, B, C, D), applied)


def _mamba2_ssm(g: torch.Generator) -> Case:
    x, dt = _randn(g, L, HEADS, D_V), _uniform(g, 0.05, 0.5, L, HEADS)
    a = -_uniform(g, 0.5, 4.0, HEADS)
    B, C, D = _randn(g, L, D_STATE), _randn(g, L, D_STATE), _randn(g, HEADS)
    op = ops.mamba2_ssm(dt, a, B, C, D)
    applied = torch.einsum("htj,jhp->thp", op.T, x)
    return Case(op, ops.mamba2_ssm_forward(x, dt, a, B, C, D), applied)


def _lti_ssm(g: torch.Generator, dense: bool) -> Case:
    u, B, C = _randn(g, CHANNELS, L), _randn(g, CHANNELS, D_STATE), _randn(g, CHANNELS, D_STATE)
    shape = (CHANNELS, D_STATE, D_STATE) if dense else (CHANNELS, D_STATE)
    A = _randn(g, *shape) / D_STATE if dense else _uniform(g, -0.95, 0.95, *shape)
    op = ops.lti_ssm(A, B, C, L)
    return Case(op, ops.lti_ssm_forward(u, A, B, C), _per_channel(op.T, u))


def _convolution(g: torch.Generator) -> Case:
    u, kernel = _randn(g, CHANNELS, L), _randn(g, CHANNELS, KERNEL)
    op = ops.convolution(kernel, L)
    return Case(op, ops.convolution_forward(u, kernel), _per_channel(op.T, u))


MIXERS: dict[str, Callable[[torch.Generator], Case]] = {
    "SA": lambda g: _attention(g, window=None),
    "SWA": lambda g: _attention(g, window=WINDOW),
    "LA": _linear_attention,
    "WLA": _weighted_linear_attention,
    "GLA": _gated_linear_attention,
    "DeltaNet": _deltanet,
    "S6": _selective_ssm,
    "Mamba2": _mamba2_ssm,
    "LTI-diagonal": lambda g: _lti_ssm(g, dense=False),
    "LTI-dense": lambda g: _lti_ssm(g, dense=True),
    "convolution": _convolution,
}
REALISED = [name for name in MIXERS if name not in ("SA", "SWA")]


def _case(name: str, seed: int = 0) -> Case:
    return MIXERS[name](torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MIXERS)
def test_operator_reproduces_the_mixers_forward(name):
    case = _case(name)
    assert case.operator.T.shape[-2:] == (L, L)
    assert torch.equal(case.operator.T, case.operator.T.tril()), "T must be causal"
    torch.testing.assert_close(case.applied, case.forward, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", REALISED)
def test_materialised_realisation_is_the_operator(name):
    op = _case(name).operator
    torch.testing.assert_close(materialise(*op.realisation), op.T, rtol=1e-10, atol=1e-12)


def _assert_same_ess(result, reference):
    assert torch.equal(result.positions, reference.positions)
    assert torch.equal(result.tolerance, reference.tolerance)
    torch.testing.assert_close(result.entropy, reference.entropy, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", MIXERS)
def test_dense_ess_matches_the_naive_definition(name):
    T = _case(name).operator.T
    _assert_same_ess(effective_state_size(T), effective_state_size_naive(T))


@pytest.mark.parametrize("name", REALISED)
def test_realisation_ess_matches_the_dense_and_naive_ess(name):
    op = _case(name).operator
    from_realisation = effective_state_size_ssm(*op.realisation)
    _assert_same_ess(from_realisation, effective_state_size(op.T))
    _assert_same_ess(from_realisation, effective_state_size_naive(op.T))


@pytest.mark.parametrize("name", MIXERS)
def test_ess_never_exceeds_the_state_size(name):
    op = _case(name).operator
    ess = effective_state_size_naive(op.T).tolerance
    i = torch.arange(1, L)
    assert (ess <= torch.minimum(i, L - i)).all()
    assert (ess <= op.tss).all()


EXPECTED_TSS = {
    "SA": torch.arange(1, L),
    "SWA": torch.arange(1, L).clamp(max=WINDOW),
    "LA": D_K,
    "WLA": D_K,
    "GLA": D_K,
    "DeltaNet": D_K,
    "S6": D_STATE,
    "Mamba2": D_STATE,
    "LTI-diagonal": D_STATE,
    "LTI-dense": D_STATE,
    "convolution": KERNEL - 1,
}


@pytest.mark.parametrize("name", MIXERS)
def test_tss(name):
    tss = _case(name).operator.tss
    if isinstance(EXPECTED_TSS[name], Tensor):
        assert torch.equal(tss, EXPECTED_TSS[name])
    else:
        assert type(tss) is int and tss == EXPECTED_TSS[name]


def test_realisation_shapes_follow_the_convention():
    g = torch.Generator().manual_seed(1)
    s6 = _selective_ssm(g).operator.realisation
    assert [tuple(x.shape) for x in s6] == [(CHANNELS, L, D_STATE + 1)] * 3  # + 1: the skip D
    delta = _deltanet(g).operator.realisation
    assert [tuple(x.shape) for x in delta] == [
        (HEADS, L, D_K, D_K),
        (HEADS, L, D_K),
        (HEADS, L, D_K),
    ]


def test_selective_ssm_skip_sits_on_the_diagonal_only():
    g = torch.Generator().manual_seed(2)
    dt, A = _uniform(g, 0.05, 0.5, L, CHANNELS), -_uniform(g, 0.5, 4.0, CHANNELS, D_STATE)
    B, C, D = _randn(g, L, D_STATE), _randn(g, L, D_STATE), _randn(g, CHANNELS)
    with_skip, without = ops.selective_ssm(dt, A, B, C, D), ops.selective_ssm(dt, A, B, C)
    torch.testing.assert_close(with_skip.T - without.T, torch.diag_embed(D[:, None].expand(-1, L)))
    assert [tuple(x.shape) for x in without.realisation] == [(CHANNELS, L, D_STATE)] * 3


def test_gated_linear_attention_handles_zero_gates():
    # a zero gate erases the state: nothing before step 5 reaches the outputs from step 5 on
    g = torch.Generator().manual_seed(3)
    q, k = _randn(g, L, D_K), _randn(g, L, D_K)
    gates = _uniform(g, 0.5, 1.0, L, D_K)
    gates[5] = 0
    T = ops.gated_linear_attention(q, k, gates).T
    assert torch.isfinite(T).all()
    assert (T[5:, :5] == 0).all()
    torch.testing.assert_close(T, materialise(gates, k, q), rtol=1e-10, atol=1e-12)


def test_realisation_ess_with_as_many_states_as_steps():
    # a convolution whose kernel is as long as the sequence: a shift register of order N = L
    kernel = _randn(torch.Generator().manual_seed(4), 8)
    op = ops.convolution(kernel, 8)
    _assert_same_ess(effective_state_size_ssm(*op.realisation), effective_state_size(op.T))


def _inputs(shape: tuple[int, ...]) -> Tensor:
    return torch.ones(shape, dtype=torch.float64)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ops.softmax_attention(_inputs((L, 4)), _inputs((L, 3))),
            r"k .* d=4; got \(20, 3\)",
        ),
        (lambda: ops.softmax_attention(_inputs((L, 4)), _inputs((L, 4)), window=0), "window"),
        (lambda: ops.softmax_attention(_inputs((L,)), _inputs((L,))), r"q .*\(\.\.\., L, d\)"),
        (
            lambda: ops.softmax_attention(_inputs((2, L, 4)), _inputs((3, L, 4))),
            r"broadcast; got q \(2, 20, 4\), k \(3, 20, 4\)",
        ),
        (
            lambda: ops.gated_linear_attention(
                _inputs((L, 4)), _inputs((L, 4)), _inputs((L - 1, 4))
            ),
            r"gates .* L=20; got \(19, 4\)",
        ),
        (
            lambda: ops.weighted_linear_attention(_inputs((L, 4)), _inputs((L, 4)), _inputs((3,))),
            r"decay .* d_k=4; got \(3,\)",
        ),
        (
            lambda: ops.deltanet(_inputs((L, 4)), _inputs((L, 4)), _inputs((L, 1))),
            r"beta .* L=20; got \(20, 1\)",
        ),
        (
            lambda: ops.selective_ssm(
                _inputs((L, 4)), _inputs((4, 2, 1)), _inputs((L, 2)), _inputs((L, 2))
            ),
            r"A must have shape \(channels, N\) = \(4, 2\); got \(4, 2, 1\)",
        ),
        (
            lambda: ops.mamba2_ssm(
                _inputs((L, 3)), _inputs((2,)), _inputs((L, 2)), _inputs((L, 2))
            ),
            r"a must have shape \(heads,\) = \(3,\); got \(2,\)",
        ),
        (
            lambda: ops.lti_ssm(_inputs((2, 3, 3, 3)), _inputs((3,)), _inputs((3,)), L),
            r"A must have shape \(\.\.\., N\) \(diagonal\) or \(\.\.\., N, N\) \(dense\)",
        ),
        (lambda: ops.lti_ssm(_inputs((3,)), _inputs((3,)), _inputs((3,)), 0), "length .* got 0"),
        (lambda: ops.convolution(_inputs((0,)), L), r"kernel .* k >= 1; got \(0,\)"),
    ],
)
def test_bad_shapes_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()
