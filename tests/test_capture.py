"""ess.hf capture by discovery: one tiny random model per family, each mixer's T reproduces the
mixer's own output (y = T u to 1e-4 relative), with weights scaled (initializer_range 0.3) so
that T u is a large part of y and a wrong T fails.

The reference is independent of the capture's own self-check: forward hooks on each decoder
layer's mixer module (its output before the output projection is not reachable in general, so
the check here is on what the capture stored: `check_error` from the function's output, and,
for attention, T against `output_attentions`).
"""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.auto import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING

from ess import hf

LENGTH = 12
VOCAB = 128
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.3,
    pad_token_id=0,
)
# model_type -> config overrides: the smallest model with each of its mixers in it
FAMILY_CONFIGS = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "olmo2": {},
    "gemma2": {},
    "cohere2": {},
    "smollm3": {},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4),
    "gpt_oss": dict(
        num_local_experts=2,
        num_experts_per_tok=1,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "llama4_text": dict(
        attention_chunk_size=4,
        num_local_experts=2,
        interleave_moe_layer_step=1,
        intermediate_size_mlp=64,
        no_rope_layers=[1, 0],
    ),
    "lfm2": dict(
        layer_types=["conv", "full_attention"], conv_L_cache=3, block_auto_adjust_ff_dim=False
    ),
    "qwen3_next": dict(
        layer_types=["linear_attention", "full_attention"],
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
    "olmo_hybrid": {},
    "kimi_linear": dict(
        moe_intermediate_size=32,
        kv_lora_rank=16,
        v_head_dim=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        num_experts=2,
        num_experts_per_token=1,
        linear_head_dim=16,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "falcon_h1": dict(
        mamba_n_heads=8,
        mamba_d_head=16,
        mamba_d_ssm=128,
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_chunk_size=8,
    ),
    "nemotron_h": dict(
        num_hidden_layers=4,
        n_routed_experts=2,
        num_experts_per_tok=1,
        mamba_num_heads=8,
        mamba_head_dim=8,
        n_groups=2,
        ssm_state_size=8,
        chunk_size=8,
    ),
    "granitemoehybrid": dict(
        shared_intermediate_size=32,
        mamba_n_heads=8,
        mamba_d_head=16,
        mamba_d_state=8,
        mamba_chunk_size=8,
        num_local_experts=2,
        num_experts_per_tok=1,
    ),
    "rwkv": dict(attention_hidden_size=64),
    # attention outside the registry: T from output_attentions, checked through v_proj or the
    # fused qkv projection's value part
    "gpt_neo": dict(
        attention_types=[[["global", "local"], 1]], window_size=4, num_layers=2, num_heads=4
    ),
    "bloom": dict(n_layer=2, n_head=4),
    "falcon": dict(head_dim=None, new_decoder_architecture=False, multi_query=False),
    "mpt": dict(n_layers=2, n_heads=4, d_model=64),
    "gptj": dict(n_layer=2, n_head=4, n_embd=64, rotary_dim=8),
    "xglm": dict(num_layers=2, attention_heads=4, d_model=64, ffn_dim=64),
    # BERT-style decoder: `value` in attention.self, its output projection attention.output.dense
    "roformer": dict(is_decoder=True, head_dim=None, num_key_value_heads=None),
    "recurrent_gemma": dict(
        lru_width=64,
        block_types=["recurrent", "attention"],
        attention_window_size=4,
        conv1d_width=3,
    ),
    "minimax": dict(
        layer_types=["linear_attention", "full_attention"],
        num_local_experts=2,
        num_experts_per_tok=1,
        block_size=4,
    ),
    "xlstm": dict(num_heads=2, chunk_size=4),
    # inkling2: a relative-position bias on the logits, sinks per query, short convolutions
    "inkling2_text": dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32),
    "lfm2_moe": dict(
        layer_types=["conv", "full_attention"],
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        num_dense_layers=1,
    ),
    # multi-head latent attention: q and k of another width than v
    "deepseek_v3": dict(
        head_dim=None,
        num_key_value_heads=4,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        n_routed_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
    ),
    # the decoder of an encoder-decoder family (its config counts the encoder's layers)
    "bart": dict(
        hidden_size=None,
        intermediate_size=None,
        num_attention_heads=None,
        num_key_value_heads=None,
        head_dim=None,
        num_hidden_layers=None,
        d_model=64,
        decoder_layers=2,
        encoder_layers=3,
        decoder_attention_heads=4,
        encoder_attention_heads=4,
        decoder_ffn_dim=64,
        encoder_ffn_dim=64,
    ),
    "zamba": dict(
        num_hidden_layers=4,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        attn_layer_period=2,
        attn_layer_offset=1,
        mamba_d_state=8,
        n_mamba_heads=2,
    ),
}
# model_type -> the mixers its tiny model must show (each at least once)
EXPECTED_MIXERS = {
    "gpt_oss": {"softmax_attention"},
    "llama4_text": {"softmax_attention"},
    "lfm2": {"short_conv", "softmax_attention"},
    "qwen3_next": {"gated_delta_rule", "softmax_attention"},
    "olmo_hybrid": {"gated_delta_rule", "softmax_attention"},
    "kimi_linear": {"kimi_delta_attention"},
    "falcon_h1": {"mamba2", "softmax_attention"},
    "nemotron_h": {"mamba2", "softmax_attention"},
    "granitemoehybrid": {"mamba2"},
    "zamba": {"mamba", "softmax_attention"},
    "rwkv": {"wkv"},
    "xlstm": {"mlstm"},
    "inkling2_text": {"short_conv", "softmax_attention"},
    "lfm2_moe": {"short_conv", "softmax_attention"},
    "recurrent_gemma": {"rg_lru", "softmax_attention"},
    "minimax": {"lightning_attention", "softmax_attention"},
}


def tiny_model(model_type: str, **overrides) -> torch.nn.Module:
    """A seeded tiny random causal LM of `model_type` in eval mode with eager attention (an
    override None drops that setting of BASE)."""
    settings = {**BASE, **FAMILY_CONFIGS[model_type], **overrides}
    config = AutoConfig.for_model(
        model_type, **{key: value for key, value in settings.items() if value is not None}
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def token_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_every_mixer_reproduces_its_output(family):
    model = tiny_model(family)
    ops = hf.capture_operators(model, token_ids())
    layers = hf.decoder_layers(model)
    caught = {op.layer for op in ops}
    assert all(i in caught or hf.is_tokenwise(layer) for i, layer in enumerate(layers))
    assert {op.meta["mixer"] for op in ops} >= EXPECTED_MIXERS.get(family, {"softmax_attention"})
    for op in ops:
        assert op.meta["check_error"] < 1e-4, (op.layer, op.meta["mixer"])
        assert op.meta["check_share"] >= 0.1, (op.layer, op.meta["mixer"])  # a zero T fails
        T = op.matrix(slice(0, 2))
        assert T.shape[-2:] == (LENGTH, LENGTH) and torch.all(T.triu(1) == 0)


@pytest.mark.parametrize("family", ["llama4_text", "gpt_oss", "gemma2"])
def test_attention_equals_the_models_own_weights(family):
    """T, rebuilt from q, k, the mask and the sinks, equals output_attentions of eager."""
    model, ids = tiny_model(family), token_ids()
    ops = hf.capture_operators(model, ids)
    with torch.no_grad():
        weights = model(ids, output_attentions=True, use_cache=False).attentions
    for op, w in zip(ops, weights, strict=True):
        torch.testing.assert_close(op.matrix(), w[0], atol=1e-6, rtol=1e-5)


def test_chunked_mask_is_kept_and_sets_the_tss():
    """llama4's chunked layer: a query sees only the keys of its own chunk of 4, so T has that
    block structure and the KV cache at split i is i mod 4 (0 at a chunk edge)."""
    ops = hf.capture_operators(tiny_model("llama4_text"), token_ids())
    chunked, full = ops  # no_rope_layers [1, 0]: layer 0 is chunked, layer 1 global
    assert "mask" in chunked.tensors and "mask" not in full.tensors
    i = torch.arange(LENGTH)
    same_chunk = (i[:, None] // 4 == i[None, :] // 4) & (i[:, None] >= i[None, :])
    assert torch.equal(chunked.tensors["mask"], same_chunk)
    assert torch.all(chunked.matrix()[:, ~same_chunk] == 0)
    assert chunked.tss.tolist() == [j % 4 for j in range(1, LENGTH)]
    assert full.tss.tolist() == list(range(1, LENGTH))


def test_local_attention_outside_the_registry_keeps_its_window():
    """gpt_neo computes attention itself: its local layer's T, read from output_attentions,
    shows the window of 4, stated as meta["window"] (TSS min(i, 4), docs/method.md §1.4)."""
    model, ids = tiny_model("gpt_neo"), token_ids()
    ops = hf.capture_operators(model, ids)
    assert [op.meta["route"] for op in ops] == ["output_attentions"] * 2
    assert [op.meta["window"] for op in ops] == [None, 4]
    assert not any("mask" in op.tensors for op in ops)
    assert ops[1].tss.tolist() == [min(i, 4) for i in range(1, LENGTH)]
    with torch.no_grad():
        weights = model(ids, output_attentions=True, use_cache=False).attentions
    torch.testing.assert_close(ops[1].matrix(), weights[1][0], rtol=0, atol=0)


def test_bidirectional_attention_outside_the_registry_is_refused():
    """roformer without is_decoder attends both ways: output_attentions shows it, and no
    causal T can stand for it."""
    with pytest.raises(ValueError, match="decoder layer 0 attends to later tokens"):
        hf.capture_operators(tiny_model("roformer", is_decoder=False), token_ids())


def test_a_wrong_operator_fails_its_self_check(monkeypatch):
    """The check can fail: with the captured keys scaled, T u misses the output."""
    original = hf._attention_factors

    def wrong(*args, **kwargs):
        tensors, meta = original(*args, **kwargs)
        return {**tensors, "k": 2 * tensors["k"]}, meta

    monkeypatch.setattr(hf, "_attention_factors", wrong)
    with pytest.raises(hf.SelfCheckError, match="layer 0 softmax_attention"):
        hf.capture_operators(tiny_model("llama"), token_ids())
    ops = hf.capture_operators(tiny_model("llama"), token_ids(), verify=None)
    assert min(op.meta["check_error"] for op in ops) > 1e-2


class NewLlamaConfig(LlamaConfig):
    model_type = "ess_test_new_llama"


class NewLlamaForCausalLM(LlamaForCausalLM):
    config_class = NewLlamaConfig


def test_a_new_model_type_is_captured_with_no_code_change():
    if "ess_test_new_llama" not in CONFIG_MAPPING:
        AutoConfig.register("ess_test_new_llama", NewLlamaConfig)
        AutoModelForCausalLM.register(NewLlamaConfig, NewLlamaForCausalLM)
    assert NewLlamaConfig in MODEL_FOR_CAUSAL_LM_MAPPING
    config = NewLlamaConfig(**{k: v for k, v in BASE.items() if k != "head_dim"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    ops = hf.capture_operators(model, token_ids())
    assert [(op.layer, op.meta["family"]) for op in ops] == [(0, "ess_test_new_llama")] + [
        (1, "ess_test_new_llama")
    ]
    assert max(op.meta["check_error"] for op in ops) < 1e-4


class RunningMean(torch.nn.Module):
    """A sequence mixer no route knows: the running mean of the inputs (y = T u with T the
    lower-triangular 1 / (i + 1)), computed with cumsum."""

    def forward(self, hidden_states, **kwargs):
        count = torch.arange(1, hidden_states.shape[1] + 1)[None, :, None]
        return hidden_states.cumsum(1) / count, None


def test_a_layer_with_no_route_is_named():
    model = tiny_model("llama")
    hf.decoder_layers(model)[1].self_attn = RunningMean()
    with pytest.raises(hf.NoCaptureRoute, match=r"decoder layer\(s\) \[1\].*RunningMean"):
        hf.capture_operators(model, token_ids())


def test_a_composite_mixer_is_refused_by_name():
    config = AutoConfig.for_model("diffllama", **BASE)
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(hf.CompositeMixer, match="diffllama.*two softmax"):
        hf.capture_operators(model, token_ids())


@pytest.mark.parametrize(
    "family", ["lfm2", "qwen3_next", "llama4_text", "rwkv", "recurrent_gemma", "minimax", "xlstm"]
)
def test_every_route_enters_e6_through_its_operator_files(family, tmp_path):
    """E6 saves each capture (ess.layers.save_operators), loads it per layer and measures it
    with ess.paper.e6.sequence_ess: each new kind of operator survives the round trip and its ESS is
    the naive definition's on T."""
    from ess import effective_state_size_naive
    from ess.layers import load_operators, save_operators
    from ess.paper.e6.sequence_ess import sequence_ess

    ops = hf.capture_operators(tiny_model(family), token_ids())
    save_operators(ops, tmp_path / "operators.safetensors")
    loaded = load_operators(tmp_path / "operators.safetensors")
    positions = np.arange(1, LENGTH)
    table = sequence_ess(
        loaded, [0, 1], positions, {"model": family}, 1, 1e-3, (1e-3,), True, "cpu"
    )
    for mixer_op, op in zip(ops, loaded, strict=True):
        torch.testing.assert_close(mixer_op.matrix(slice(0, 2)), op.matrix(slice(0, 2)))
        rows = table[(table["layer"] == op.layer) & (table["kind"] == op.kind)]
        first = rows[rows["head"] == 0].sort_values("position")
        naive = effective_state_size_naive(op.matrix(slice(0, 1)).double(), tol=1e-3)
        assert first["ess_tolerance"].tolist() == naive.tolerance[0].tolist()
        assert (rows["ess_tolerance"] <= rows["tss"]).all()


def test_only_position_wise_layers_may_go_uncaptured():
    """A layer of MLP and norm parts needs no mixer; one holding any other part (here a linear
    attention built of Linear layers) does, so a missed mixer cannot pass as an MLP."""

    class ToyLinearAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4)

    mlp_layer = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 4), torch.nn.SiLU())
    mixer_layer = torch.nn.Sequential(torch.nn.LayerNorm(4), ToyLinearAttention())
    assert hf.is_tokenwise(mlp_layer) and not hf.is_tokenwise(mixer_layer)
