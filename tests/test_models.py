"""ess.paper.training.models and ess.paper.training.mixers: every mixer against its reference in
ess.operators (T, realisation, output, TSS), its operator against its own output, the model's shapes
and causality, the regulariser."""

import math

import pytest
import torch
import torch.nn.functional as F

from ess import operators as ops
from ess.kernels import scan
from ess.paper.training.mixers import S6_FULL_SCAN_ELEMENTS, make_mixer, split_heads
from ess.paper.training.model_config import ModelConfig
from ess.paper.training.models import LanguageModel, state_transition_regulariser
from ess.paper.training.registry import MIXER_NAMES

SMALL = {"vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2, "state_size": 4, "window": 5}


def small_model(layers: str, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**{**SMALL, "layers": layers, **overrides})).double()


def reference_mixer(kind: str, mixer: torch.nn.Module, x: torch.Tensor):
    """The ess.operators reference for the mixer's own projections of its input x (b, L, d):
    (Operator, its forward output shaped like mixer.core(x)), with the featurisation of
    docs/method.md §1.3 written out here from the model's linear layers and parameters."""
    if kind == "S6":  # every channel its own SSM; the skip D is not part of T
        u = mixer.value_stream(x)[..., 0].transpose(1, 2)  # silu(conv(in_proj x)): (b, L, d)
        n = mixer.state_size
        r, B, C = mixer.x_proj(u).split([mixer.dt_rank, n, n], dim=-1)
        dt = F.softplus(mixer.dt_proj(r) + mixer.dt_bias)  # (b, L, d)
        A = -torch.exp(mixer.A_log)
        forward = ops.selective_ssm_forward(u, dt, A, B, C, mixer.D)  # (b, L, d)
        return ops.selective_ssm(dt, A, B, C), forward.transpose(1, 2)[..., None]
    h = mixer.conv(x)
    if kind in ("SA", "SWA"):
        q, k, v = (split_heads(z, mixer.n_heads) for z in mixer.qkv(h).chunk(3, dim=-1))
        forward = ops.softmax_attention_forward(q, k, v, window=mixer.window)
        return ops.softmax_attention(q, k, window=mixer.window), forward
    q, k = (split_heads(z, mixer.n_heads) for z in mixer.qk(h).chunk(2, dim=-1))
    v = split_heads(mixer.v(h), mixer.n_heads)
    q_scaled = q / math.sqrt(mixer.state_size)
    if kind == "LA":
        return ops.linear_attention(q_scaled, k), ops.linear_attention_forward(q_scaled, k, v)
    if kind == "WLA":
        decay = torch.sigmoid(mixer.decay_logit) ** (1 / mixer.tau)  # (H, N), the same each step
        forward = ops.weighted_linear_attention_forward(q_scaled, k, v, decay)
        return ops.weighted_linear_attention(q_scaled, k, decay), forward
    if kind == "GLA":
        gates = split_heads(torch.sigmoid(mixer.gate(h)) ** (1 / mixer.tau), mixer.n_heads)
        forward = ops.gated_linear_attention_forward(q_scaled, k, v, gates)
        return ops.gated_linear_attention(q_scaled, k, gates), forward
    # GLA-S6: GLA whose gate is S6's exp(dt_t A_h), with B_t = dt_t k_t and C_t = alpha q_t
    dt = F.softplus(mixer.dt(h) + mixer.dt_bias).transpose(1, 2)[..., None]  # (b, H, L, 1)
    gates = torch.exp(dt * -torch.exp(mixer.A_log)[:, None, :])
    q_alpha, k_dt = mixer.alpha * q, dt * k
    forward = ops.gated_linear_attention_forward(q_alpha, k_dt, v, gates)
    return ops.gated_linear_attention(q_alpha, k_dt, gates), forward


@pytest.mark.parametrize("kind", MIXER_NAMES)
def test_every_mixer_is_its_reference_in_ess_operators(kind):
    """As Mamba's ssd_minimal against its fused kernel: the model's T, realisation, TSS and
    output against the reference built from the model's own projections, y = T u included."""
    model = small_model(kind)
    input_ids = torch.randint(0, 32, (3, 21), generator=torch.Generator().manual_seed(4))
    _, mixer_inputs = model.forward_with_mixer_inputs(input_ids)
    exact = {"rtol": 1e-10, "atol": 1e-12}
    for layer, (block, x) in enumerate(zip(model.blocks, mixer_inputs, strict=True)):
        mixer, op = block.mixer, model.operators(input_ids)[layer]
        reference, forward = reference_mixer(kind, mixer, x)
        y, u = mixer.core(x), mixer.value_stream(x)
        torch.testing.assert_close(op.matrix(), reference.T, **exact)
        torch.testing.assert_close(y, forward, **exact)
        if kind == "S6":
            y = y - mixer.D[:, None, None] * u  # the skip sits on T's diagonal, outside H_i
        torch.testing.assert_close(reference.T @ u, y, **exact)
        if reference.realisation is not None:
            for ours, theirs in zip(op.realisation(), reference.realisation, strict=True):
                torch.testing.assert_close(ours, theirs, **exact)
        if isinstance(reference.tss, int):
            assert op.tss == reference.tss == 4
        else:
            assert torch.equal(op.tss, reference.tss)


@pytest.mark.parametrize("kind", MIXER_NAMES)
def test_operator_applied_to_the_value_stream_is_the_mixer_output(kind):
    model = small_model(kind)
    input_ids = torch.randint(0, 32, (3, 19), generator=torch.Generator().manual_seed(1))
    _, mixer_inputs = model.forward_with_mixer_inputs(input_ids)
    operators = model.operators(input_ids)
    assert len(operators) == 2
    for layer, (block, x, op) in enumerate(zip(model.blocks, mixer_inputs, operators, strict=True)):
        assert op.layer == layer and op.meta["mixer"] == kind
        u = block.mixer.value_stream(x)
        y = block.mixer.core(x)
        if kind in ("SA", "SWA"):
            assert op.kind == "attention" and op.tensors["T"].shape == (3, 2, 19, 19)
            assert torch.allclose(op.matrix() @ u, y)
        else:
            heads = 16 if kind == "S6" else 2
            assert op.kind == "ssm" and op.tss == 4
            A, B, C = op.realisation()
            assert A.shape == B.shape == C.shape == (3, heads, 19, 4)
            y_scan = scan(A, B, C, u)
            if kind == "S6":
                y_scan = y_scan + op.tensors["D"][:, None, None] * u
            assert torch.allclose(y_scan, y)


def test_attention_operators_are_causal_stochastic_and_windowed():
    input_ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(2))
    sa = small_model("SA").operators(input_ids)[0]
    swa = small_model("SWA").operators(input_ids)[0]
    upper = torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)
    assert (sa.matrix()[..., upper] == 0).all()
    assert torch.allclose(sa.matrix().sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    i = torch.arange(12)
    outside = (i[:, None] - i[None, :]) >= 5
    assert (swa.matrix()[..., outside] == 0).all()
    splits = torch.arange(1, 12)  # the TSS of docs/method.md §1.4: the KV cache at split i
    assert torch.equal(sa.tss, splits)
    assert torch.equal(swa.tss, splits.clamp(max=5))


def test_transitions_are_identity_for_la_and_decays_otherwise():
    input_ids = torch.randint(0, 32, (2, 10))
    A_la, _, _ = small_model("LA").operators(input_ids)[0].realisation()
    assert torch.equal(A_la, torch.ones(2, 2, 10, 4))
    for kind in ("WLA", "GLA", "S6", "GLA-S6"):
        A, _, _ = small_model(kind).operators(input_ids)[0].realisation()
        assert (A > 0).all() and (A < 1).all()


@pytest.mark.parametrize("kind", MIXER_NAMES)
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
    assert [op.kind for op in operators] == ["ssm", "attention", "ssm", "attention"]
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
    default = small_model("GLA-S6").operators(input_ids)[0].realisation()[2]
    doubled = (
        small_model("GLA-S6", gla_s6_alpha=2 * 4**-0.5).operators(input_ids)[0].realisation()[2]
    )
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
    rms = [((op.realisation()[0] - 1) ** 2).mean().sqrt() for op in ops]
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
    from_realisation = effective_state_size_ssm(*gla.realisation())
    from_matrix = effective_state_size(gla.matrix())
    assert torch.equal(from_realisation.tolerance, from_matrix.tolerance)
    assert torch.allclose(from_realisation.entropy, from_matrix.entropy)
    assert effective_state_size(sa.matrix()).tolerance.shape == (2, 2, 11)


def test_s6_chunked_scan_is_the_full_scan_in_value_and_gradient():
    """S6's memory-bounded scan (chunks recomputed in the backward, a length that is not a
    multiple of the chunk) gives the full scan's output and parameter gradients, float64."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, d_model=8, n_layers=1, layers="S6", state_size=5)
    mixer = make_mixer("S6", config).double()
    u = torch.randn(2, 37, 8, dtype=torch.float64)
    outputs, gradients = [], []
    for core in (mixer.core_full, lambda v: mixer.core_chunked(v, chunk=8)):
        mixer.zero_grad(set_to_none=True)
        y = core(u)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outputs.append(y.detach())
        gradients.append({n: p.grad for n, p in mixer.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-12)
    assert gradients[1].keys() == gradients[0].keys() and "A_log" in gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=0, atol=1e-12, msg=name)


def test_s6_scans_in_chunks_above_the_full_scan_size():
    """A forward whose (b, d, L, N) exceeds S6_FULL_SCAN_ELEMENTS takes the chunked scan (its
    checkpointed chunks leave no (b, d, L, N) tensor for the backward) and matches the full."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, d_model=64, n_layers=1, layers="S6", state_size=256)
    mixer = make_mixer("S6", config)
    u = torch.randn(2, S6_FULL_SCAN_ELEMENTS // (2 * 64 * 256) + 1, 64)  # (b, L, d)
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mixer.core(u)
    assert max(saved) < u.shape[0] * 64 * u.shape[1] * 256 / 8
    torch.testing.assert_close(y, mixer.core_full(mixer.value_stream(u)[..., 0].transpose(1, 2)))
