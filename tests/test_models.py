"""ess.models: every mixer's operator reproduces its output; scans agree; the regulariser."""

import pytest
import torch

from ess.models import (
    MIXERS,
    LanguageModel,
    ModelConfig,
    materialise,
    scan,
    scan_chunked,
    scan_parallel,
    state_transition_regulariser,
)

SMALL = {"vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2, "state_size": 4, "window": 5}


def small_model(layers: str, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**{**SMALL, "layers": layers, **overrides})).double()


def brute_force_T(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """T[i, j] = sum_n C[i, n] prod_{j < t <= i} A[t, n] B[j, n], entry by entry. (..., L, L)."""
    length = A.shape[-2]
    T = A.new_zeros(*A.shape[:-2], length, length)
    for i in range(length):
        for j in range(i + 1):
            decay = torch.prod(A[..., j + 1 : i + 1, :], dim=-2)
            T[..., i, j] = (C[..., i, :] * decay * B[..., j, :]).sum(-1)
    return T


@pytest.mark.parametrize("length", [1, 7, 16, 21])
def test_scans_agree_with_the_brute_force_operator(length):
    g = torch.Generator().manual_seed(length)
    shape = (2, 3, length, 5)
    log_a = -3 * torch.rand(shape, generator=g, dtype=torch.float64)
    B, C = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    u = torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64)
    T = brute_force_T(log_a.exp(), B, C)
    assert torch.allclose(materialise(log_a, B, C), T)
    y = T @ u
    assert torch.allclose(scan(log_a.exp(), B, C, u), y)
    assert torch.allclose(scan_parallel(log_a, B, C, u), y)
    for chunk in (1, 3, 8, 64):
        assert torch.allclose(scan_chunked(log_a, B, C, u, chunk=chunk), y)


def test_chunked_scan_is_finite_for_tiny_decays():
    log_a = torch.full((1, 1, 64, 4), -200.0)  # products underflow; exp(-log_a) would overflow
    B = C = torch.ones(1, 1, 64, 4)
    u = torch.ones(1, 1, 64, 1)
    y = scan_chunked(log_a, B, C, u)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, torch.full_like(y, 4.0))  # only the present token survives


@pytest.mark.parametrize("kind", MIXERS)
def test_operator_applied_to_the_value_stream_is_the_mixer_output(kind):
    model = small_model(kind)
    input_ids = torch.randint(0, 32, (3, 19), generator=torch.Generator().manual_seed(1))
    _, mixer_inputs = model.forward_with_mixer_inputs(input_ids)
    operators = model.operators(input_ids)
    assert len(operators) == 2
    for layer, (block, x, op) in enumerate(zip(model.blocks, mixer_inputs, operators, strict=True)):
        assert op["layer"] == layer and op["mixer"] == kind
        u = block.mixer.value_stream(x)
        y = block.mixer.core(x)
        if kind in ("SA", "SWA"):
            assert op["T"].shape == (3, 2, 19, 19)
            assert torch.allclose(op["T"] @ u, y)
        else:
            heads = 16 if kind == "S6" else 2
            for name in "ABC":
                assert op[name].shape == (3, heads, 19, 4)
            assert op["tss"] == 4
            y_scan = scan(op["A"], op["B"], op["C"], u)
            if kind == "S6":
                y_scan = y_scan + op["D"][:, None, None] * u
            assert torch.allclose(y_scan, y)


def test_attention_operators_are_causal_stochastic_and_windowed():
    input_ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(2))
    sa = small_model("SA").operators(input_ids)[0]
    swa = small_model("SWA").operators(input_ids)[0]
    upper = torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)
    assert (sa["T"][..., upper] == 0).all()
    assert torch.allclose(sa["T"].sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    i = torch.arange(12)
    outside = (i[:, None] - i[None, :]) >= 5
    assert (swa["T"][..., outside] == 0).all()
    assert torch.equal(sa["tss"], i)
    assert torch.equal(swa["tss"], i.clamp(max=5))


def test_transitions_are_identity_for_la_and_decays_otherwise():
    input_ids = torch.randint(0, 32, (2, 10))
    assert torch.equal(small_model("LA").operators(input_ids)[0]["A"], torch.ones(2, 2, 10, 4))
    for kind in ("WLA", "GLA", "S6", "GLA-S6"):
        A = small_model(kind).operators(input_ids)[0]["A"]
        assert (A > 0).all() and (A < 1).all()


@pytest.mark.parametrize("kind", MIXERS)
def test_model_is_causal_and_has_the_right_shapes(kind):
    model = small_model(kind)
    a = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[:, 10:] = (b[:, 10:] + 1) % 32
    logits_a, logits_b = model(a), model(b)
    assert logits_a.shape == (2, 16, 32)
    assert torch.allclose(logits_a[:, :10], logits_b[:, :10])
    assert not torch.allclose(logits_a[:, 10:], logits_b[:, 10:])


def test_hybrid_pattern_gives_the_layer_kinds():
    config = ModelConfig(**{**SMALL, "n_layers": 4, "layers": "GLA,SA"})
    assert config.layer_kinds() == ["GLA", "SA", "GLA", "SA"]
    model = LanguageModel(config)
    assert [block.kind for block in model.blocks] == ["GLA", "SA", "GLA", "SA"]
    assert [type(block.mixer).__name__ for block in model.blocks] == [
        "GatedLinearAttention",
        "Attention",
        "GatedLinearAttention",
        "Attention",
    ]
    operators = model.operators(torch.randint(0, 32, (1, 8)))
    assert ["T" in op for op in operators] == [False, True, False, True]
    assert ModelConfig(**{**SMALL, "n_layers": 3, "layers": "s6, SWA, gla-s6"}).layer_kinds() == [
        "S6",
        "SWA",
        "GLA-S6",
    ]


def test_bad_model_configs_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown mixer 'MAMBA'"):
        ModelConfig(layers="MAMBA")
    with pytest.raises(ValueError, match="'GLA,SA' has 2 entries.*n_layers=3"):
        ModelConfig(layers="GLA,SA", n_layers=3)
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="state_size must be >= 1, got 0"):
        ModelConfig(state_size=0)


def test_gla_s6_alpha_scales_C():
    input_ids = torch.randint(0, 32, (1, 6))
    default = small_model("GLA-S6").operators(input_ids)[0]["C"]
    doubled = small_model("GLA-S6", gla_s6_alpha=2 * 4**-0.5).operators(input_ids)[0]["C"]
    assert torch.allclose(doubled, 2 * default)


def test_regulariser_is_zero_for_identity_transitions():
    input_ids = torch.randint(0, 32, (2, 12))
    assert state_transition_regulariser(small_model("LA"), input_ids).item() == 0.0


def test_regulariser_is_positive_and_differentiable_for_decays():
    input_ids = torch.randint(0, 32, (2, 12))
    for kind in ("WLA", "GLA", "S6", "GLA-S6"):
        model = small_model(kind)
        penalty = state_transition_regulariser(model, input_ids)
        assert penalty.item() > 0
        penalty.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)


def test_regulariser_is_the_sum_of_per_layer_rms_of_a_minus_one():
    model = small_model("GLA")
    input_ids = torch.randint(0, 32, (2, 12))
    ops = model.operators(input_ids)
    rms = [((op["A"] - 1) ** 2).mean().sqrt() for op in ops]
    assert torch.allclose(state_transition_regulariser(model, input_ids, [1]), rms[1])
    assert torch.allclose(state_transition_regulariser(model, input_ids), rms[0] + rms[1])


def test_regulariser_rejects_attention_layers_and_bad_indices():
    model = small_model("GLA,SA")
    input_ids = torch.randint(0, 32, (1, 8))
    assert state_transition_regulariser(model, input_ids).item() > 0  # default: GLA layer only
    with pytest.raises(ValueError, match="layer 1 is SA"):
        state_transition_regulariser(model, input_ids, [1])
    with pytest.raises(ValueError, match="layer 5 out of range for 2 layers"):
        state_transition_regulariser(model, input_ids, [5])


def test_operators_feed_the_ess_core_in_both_forms():
    """The realisation (A, B, C) and its materialised T give the same ESS (ess.metric)."""
    from ess import effective_state_size, effective_state_size_ssm

    model = small_model("GLA,SA")
    gla, sa = model.operators(torch.randint(0, 32, (2, 12)))
    from_realisation = effective_state_size_ssm(gla["A"], gla["B"], gla["C"])
    from_matrix = effective_state_size(materialise(gla["A"].log(), gla["B"], gla["C"]))
    assert torch.equal(from_realisation.tolerance, from_matrix.tolerance)
    assert torch.allclose(from_realisation.entropy, from_matrix.entropy)
    assert effective_state_size(sa["T"]).tolerance.shape == (2, 2, 11)
