"""Capture each layer's sequence-mixing operator T from a loaded transformers model.

Every mixer computes, per channel, `y = T u` with a causal L x L operator T (docs/method.md §1).
This module runs a model ONCE on one token sequence and keeps, per layer, the small O(L d)
FACTORS of T, never T itself, as an `ess.layers.LayerOperator` (which rebuilds T or the
realisation from them):

- softmax attention (llama, mistral, gemma3, gpt_neox, phi): post-RoPE queries `q` (H, L, d)
  and keys `k` (H_kv, L, d) exactly as they enter the attention product, with the scale, the
  sliding window (None for a global layer), the logit softcap and attention sinks if any:
  T = softmax(q k^T * scale + causal/window mask) per head.
- selective SSMs (mamba, falcon_mamba, mamba2): the discretisation step `dt`, the continuous
  decay `a` and the input-dependent `B`, `C`, recomputed from the mixer's own intermediates
  exactly as transformers' torch path does: the time-varying realisation (A, B, C) of
  docs/method.md §1.1, x_t = A_t x_{t-1} + B_t u_t, y_t = C_t . x_t, follows from them.
- hybrids (jamba, bamba, zamba2): each mixer as above, per layer.
- this project's own ess.models.LanguageModel (SA, SWA, LA, WLA, GLA, S6, GLA-S6, trained on the
  E6 text by the workflow): its `operators` method gives each layer's T (attention, kept as the
  (H, L, L) matrix) or diagonal realisation (A, B, C) per head/channel, kept as they are
  (`language_model_operators`).

How the factors are caught, without touching the model's code:

- attention: while capturing, every attention implementation registered in transformers'
  `ALL_ATTENTION_FUNCTIONS` (the documented extension point every supported model dispatches
  through, eager included) is wrapped by a recorder that keeps (q, k, scale, window, softcap,
  sinks) and then calls the original implementation unchanged;
- SSMs: forward hooks on the mixer's `x_proj` (mamba: its input is the post-conv, post-activation
  channel stream u) or `in_proj` (mamba2: the conv and activation are then replayed with the
  mixer's own conv1d weights, as the torch path does);
- forward pre-hooks on the decoder layers say which layer a mixer call belongs to (zamba2
  reuses one attention block in several layers).

Limits: one text sequence per capture (gemma3's image tokens attend bidirectionally, which no
causal T represents); the patched registry is process-wide, so do not run other models in other
threads during a capture; quantised mamba checkpoints (`config._is_quantized`) are not covered.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ess.layers import LayerOperator
from ess.models import LanguageModel

ATTENTION_FAMILIES = ("gemma3", "gemma3_text", "gpt_neox", "llama", "mistral", "phi")
SSM_FAMILIES = ("falcon_mamba", "mamba", "mamba2")
HYBRID_FAMILIES = ("bamba", "jamba", "zamba2")


def supported_architectures() -> list[str]:
    """The `config.model_type` strings `capture_operators` accepts, sorted."""
    return sorted(ATTENTION_FAMILIES + SSM_FAMILIES + HYBRID_FAMILIES)


def check_supported(model: nn.Module) -> str:
    """Return the model's `model_type`; raise ValueError listing the supported ones if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in supported_architectures():
        raise ValueError(
            f"ess.hf cannot capture operators of model_type {model_type!r}; supported "
            f"architectures: {', '.join(supported_architectures())}"
        )
    return model_type


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------


@dataclass
class _Recorder:
    """Collects LayerOperators while the model runs; `layer` is the decoder layer running now."""

    family: str
    keep_inputs: bool
    layer: int | None = None
    ops: list[LayerOperator] = field(default_factory=list)

    def add(self, kind: Literal["attention", "ssm"], tensors: dict, meta: dict) -> None:
        if self.layer is None:
            return  # a mixer run outside the decoder stack (e.g. a vision tower): not ours
        tensors = {name: t.detach().to("cpu", torch.float32) for name, t in tensors.items()}
        meta = {"family": self.family, **meta}
        self.ops.append(LayerOperator(self.layer, kind, tensors, meta))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the `*.layers` ModuleList of the text model."""
    n_layers = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        is_stack = isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers"
        if is_stack and len(module) == n_layers and "vision" not in name:
            return module
    raise ValueError(f"found no ModuleList `layers` of length {n_layers} in {type(model).__name__}")


def _hook_layer_index(layers: nn.ModuleList, recorder: _Recorder) -> list:
    """Forward (pre-)hooks that set `recorder.layer` while decoder layer i runs."""

    def enter(i: int) -> Callable:
        def hook(module, args):
            recorder.layer = i

        return hook

    def leave(module, args, output):
        recorder.layer = None

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter(i)))
        handles.append(layer.register_forward_hook(leave))
    return handles


def _attention_factors(module: nn.Module, query, key, kwargs: dict) -> tuple[dict, dict]:
    """Factors of one attention call from the arguments of the attention implementation.

    query: (1, H, L, d), key: (1, H_kv, L, d) post-RoPE. Returns tensors q (H, L, d), k
    (H_kv, L, d) and, if the model has attention sinks, `sinks` (H,); meta with the scale,
    window (None: global), softcap (None: none) and head counts. Query head h reads key head
    h // (H / H_kv) (transformers' repeat_kv).
    """
    if query.shape[0] != 1:
        raise ValueError(f"capture one sequence at a time, got a batch of {query.shape[0]}")
    if not getattr(module, "is_causal", True):
        raise ValueError(f"{type(module).__name__} is not causal: its T is not lower-triangular")
    scale = kwargs.get("scaling")
    window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")
    tensors = {"q": query[0], "k": key[0]}
    if kwargs.get("s_aux") is not None:
        tensors["sinks"] = kwargs["s_aux"]
    meta = {
        "mixer": "softmax_attention",
        "n_heads": query.shape[1],
        "n_kv_heads": key.shape[1],
        "head_dim": query.shape[-1],
        "length": query.shape[2],
        "scale": float(query.shape[-1] ** -0.5 if scale is None else scale),
        "window": None if window is None else int(window),
        "softcap": None if softcap is None else float(softcap),
    }
    return tensors, meta


def _module_eager_attention(module: nn.Module) -> Callable:
    """The `eager_attention_forward` of the modeling file that defines `module`."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__module__} defines no eager_attention_forward")
    return eager


@contextlib.contextmanager
def _recording_attention(recorder: _Recorder) -> Iterator[None]:
    """Wrap every registered attention implementation (eager included) with a recorder.

    The wrappers are local overrides of transformers' global `ALL_ATTENTION_FUNCTIONS`; they are
    removed on exit, restoring any override that was there before.
    """

    def recording(original: Callable | None) -> Callable:
        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            recorder.add("attention", *_attention_factors(module, query, key, kwargs))
            implementation = original or _module_eager_attention(module)
            return implementation(module, query, key, value, attention_mask, *args, **kwargs)

        return attention

    # Imported here, as ACT2FN below: importing transformers takes ~2 s, which every
    # measure_e6_ess job and every capture from an ess.models checkpoint would pay without
    # using it.
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    registry = ALL_ATTENTION_FUNCTIONS
    saved = dict(registry._local_mapping)  # no public way to tell local from global entries
    for name in set(registry.keys()) | {"eager"}:
        registry[name] = recording(registry.get(name))
    try:
        yield
    finally:
        registry._local_mapping.clear()
        registry._local_mapping.update(saved)


def _is_mamba_mixer(module: nn.Module) -> bool:
    """Mamba-1 style selective SSM (mamba, falcon_mamba, jamba): per-channel dt via x_proj."""
    return all(hasattr(module, a) for a in ("A_log", "x_proj", "dt_proj", "conv1d", "D"))


def _is_mamba2_mixer(module: nn.Module) -> bool:
    """Mamba-2 style SSM (mamba2, bamba, zamba2): per-head scalar decay, dt from in_proj."""
    return all(hasattr(module, a) for a in ("A_log", "dt_bias", "in_proj", "conv1d", "D"))


def _mamba_factors(mixer: nn.Module, u: torch.Tensor, x_proj_out: torch.Tensor) -> dict:
    """Factors of a mamba-1 mixer from x_proj's input u (1, L, D) and output (1, L, R + 2N).

    Replays the torch path: split into (dt_low, B, C), the optional RMS norms of falcon_mamba
    and jamba, dt = softplus(W_dt dt_low + b_dt). Returns dt (L, D), a = -exp(A_log) (D, N),
    B (L, N), C (L, N), D (D,) and, if kept by the caller, u (L, D).
    """
    rank, n = mixer.time_step_rank, mixer.ssm_state_size
    dt_low, B, C = torch.split(x_proj_out, [rank, n, n], dim=-1)
    if hasattr(mixer, "dt_layernorm"):
        dt_low, B, C = mixer.dt_layernorm(dt_low), mixer.b_layernorm(B), mixer.c_layernorm(C)
    dt = (mixer.dt_proj.weight @ dt_low.transpose(1, 2)).transpose(1, 2)  # (1, L, D)
    dt = F.softplus(dt + mixer.dt_proj.bias.float())
    return {
        "dt": dt[0],
        "a": -torch.exp(mixer.A_log.float()),
        "B": B[0],
        "C": C[0],
        "D": mixer.D,
        "u": u[0],
    }


def _mamba2_factors(mixer: nn.Module, projected: torch.Tensor) -> dict:
    """Factors of a mamba-2 mixer from in_proj's output (1, L, 2 I + 2 G N + H).

    Replays the torch path: split (gate, xBC, dt_raw), causal depthwise conv + activation on
    xBC, split (x, B, C), dt = clamp(softplus(dt_raw + dt_bias), time_step_limit). Returns dt
    (L, H), a = -exp(A_log) (H,), B (L, G, N), C (L, G, N), D (H,), u (L, H, P).
    """
    from transformers.activations import ACT2FN

    length = projected.shape[1]
    n_heads, n_groups, n = mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    _, xbc, dt_raw = projected.split([mixer.intermediate_size, mixer.conv_dim, n_heads], dim=-1)
    xbc = mixer.conv1d(xbc.transpose(1, 2).to(mixer.conv1d.weight.dtype))[..., :length]
    xbc = ACT2FN[mixer.activation](xbc).transpose(1, 2)
    u, B, C = torch.split(xbc, [mixer.intermediate_size, n_groups * n, n_groups * n], dim=-1)
    dt = F.softplus(dt_raw + mixer.dt_bias.to(dt_raw.dtype))
    low, high = getattr(mixer, "time_step_limit", (0.0, float("inf")))
    dt = torch.clamp(dt, min=low, max=high)
    return {
        "dt": dt[0],
        "a": -torch.exp(mixer.A_log.float()),
        "B": B[0].reshape(length, n_groups, n),
        "C": C[0].reshape(length, n_groups, n),
        "D": mixer.D,
        "u": u[0].reshape(length, n_heads, mixer.head_dim),
    }


def _hook_ssm_mixer(mixer: nn.Module, recorder: _Recorder) -> Any:
    """Register the capture hook of one SSM mixer; returns the hook handle."""

    def keep(tensors: dict) -> dict:
        return tensors if recorder.keep_inputs else {k: v for k, v in tensors.items() if k != "u"}

    if _is_mamba_mixer(mixer):

        def on_x_proj(module, args, output):
            factors = keep(_mamba_factors(mixer, args[0], output))
            d_inner, n = factors["a"].shape
            meta = {"mixer": "mamba", "n_channels": d_inner, "d_state": n}
            recorder.add("ssm", factors, {**meta, "length": output.shape[1]})

        return mixer.x_proj.register_forward_hook(on_x_proj)

    def on_in_proj(module, args, output):
        factors = keep(_mamba2_factors(mixer, output))
        meta = {
            "mixer": "mamba2",
            "n_heads": mixer.num_heads,
            "head_dim": mixer.head_dim,
            "n_groups": mixer.n_groups,
            "d_state": mixer.ssm_state_size,
        }
        recorder.add("ssm", factors, {**meta, "length": output.shape[1]})

    return mixer.in_proj.register_forward_hook(on_in_proj)


def _forward_kwargs(model: nn.Module) -> dict:
    """use_cache=False (keys as computed, no cache), and logits for the last position only."""
    kwargs = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def capture_operators(
    model: nn.Module, input_ids: torch.Tensor, *, keep_inputs: bool = False
) -> list[LayerOperator]:
    """Run `model` once on one sequence and return the factors of every mixer, in layer order.

    input_ids: (L,) or (1, L). The model runs in eval mode under no_grad (its mode is restored).
    Tensors are float32 on the CPU:

    - attention: q (H, L, d), k (H_kv, L, d) [, sinks (H,)]; meta: scale, window, softcap,
      n_heads, n_kv_heads, head_dim;
    - ssm, meta["mixer"] == "mamba": dt (L, D), a (D, N), B (L, N), C (L, N), D (D,);
    - ssm, meta["mixer"] == "mamba2": dt (L, H), a (H,), B (L, G, N), C (L, G, N), D (H,).

    keep_inputs=True also keeps each SSM's input channel stream u ((L, D) or (L, H, P)): the
    post-conv, post-activation x the scan consumes.

    An ess.models.LanguageModel goes through `language_model_operators` instead.
    """
    if isinstance(model, LanguageModel):
        return language_model_operators(model, input_ids)
    family = check_supported(model)
    input_ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if input_ids.shape[0] != 1:
        raise ValueError(f"capture one sequence at a time, got input_ids {tuple(input_ids.shape)}")
    recorder = _Recorder(family=family, keep_inputs=keep_inputs)
    layers = decoder_layers(model)
    mixers = [m for m in layers.modules() if _is_mamba_mixer(m) or _is_mamba2_mixer(m)]
    handles = _hook_layer_index(layers, recorder)
    handles += [_hook_ssm_mixer(m, recorder) for m in mixers]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), _recording_attention(recorder):
            model(input_ids=input_ids.to(device), **_forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missed = sorted(set(range(len(layers))) - {op.layer for op in recorder.ops})
    if missed:
        raise RuntimeError(f"captured no sequence mixer in decoder layers {missed}")
    return recorder.ops


def language_model_operators(model: LanguageModel, input_ids: torch.Tensor) -> list[LayerOperator]:
    """Every layer's operator of an ess.models.LanguageModel on one sequence, in layer order.

    input_ids: (L,) or (1, L). `model.operators` (one forward pass, no gradients) for the one
    sequence, as float32 on the CPU with meta["family"] = "ess": T (H, L, L) for attention,
    A, B, C (H, L, N) [, D (H,)] for a recurrence (ess.layers).
    """
    input_ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if input_ids.shape[0] != 1:
        raise ValueError(f"capture one sequence at a time, got input_ids {tuple(input_ids.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        ops = model.operators(input_ids.to(device))
    finally:
        model.train(was_training)
    return [
        LayerOperator(
            op.layer,
            op.kind,
            # T, A, B, C lead with the batch of one sequence; S6's D (H,) has no batch dim
            {
                name: (t if name == "D" else t[0]).to("cpu", torch.float32)
                for name, t in op.tensors.items()
            },
            {"family": "ess", **op.meta},
        )
        for op in ops
    ]
