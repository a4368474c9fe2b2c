"""Capture each layer's sequence-mixing operator T from a loaded transformers model.

Every mixer computes, per head or channel, `y = T u` with a causal L x L operator T
(docs/method.md §1, §5). This module runs a model ONCE on one token sequence and keeps, per
layer, the small factors of T (or T itself where no smaller form exists) as an
`ess.layers.LayerOperator`.

Capture is by discovery, not by a list of model types: while the model runs, the functions that
transformers' models call to mix the sequence are wrapped by recorders that keep their
arguments, call the original unchanged, and check T u against the output it returned.

- softmax attention: every implementation registered in `ALL_ATTENTION_FUNCTIONS` (eager
  included), the documented extension point every model that uses it dispatches through. Kept:
  post-RoPE q (H, L, d) and k (H_kv, L, d), scale, sliding window, softcap, sinks (per head,
  or per head and query), a position bias passed as such (inkling), and the mask actually
  passed (L, L) when it is not the plain causal / sliding one (llama4's chunks). A mask that
  lets a query see a later key, or hides a bias in the mask (ALiBi), is refused.
- named scan functions, module-level globals of each modeling file, so wrapped where the model
  looks them up: `mamba_selective_scan` (mamba, falcon_mamba, jamba, zamba: per-channel
  (dt, a, B, C)), `mamba2_chunk_scan` (mamba2, bamba, zamba2, nemotron_h, granitemoehybrid,
  falcon_h1: per-head (dt, a, B, C)), `torch_chunk_gated_delta_rule` (qwen3_next,
  olmo_hybrid, qwen3_5) and `chunk_kimi_delta_attention` (kimi_linear): T per head is the
  function's own output on the value stream V = I_L (it is linear in V), and
  `causal_conv1d_fn` without an activation (lfm2's gated short convolution: the conv's banded
  Toeplitz T on its input B * x), `rwkv_linear_attention` (rwkv's WKV: a softmax over past
  keys per channel), and the `_rnn_scan` method of recurrent_gemma's RG-LRU (per channel,
  A = a, B = C = 1).
- module hooks where the mixer calls no function: minimax's lightning attention (qkv_proj and
  norm: A = exp(-slope), B = k, C = q per head).
- xlstm's mLSTM backend, a module whose output is linear in the values: a forward hook runs
  it again on V = I_L for T per head.
- attention outside the registry (bloom, gpt_neo, falcon, mpt, ...): T from a second pass
  with output_attentions=True for the layers nothing else recorded, checked on the values of
  the layer's v_proj or fused qkv projection.
- forward pre-hooks on the decoder layers (a ModuleList named `layers`, `blocks`, `h` or
  `layer`) say which layer a call belongs to (zamba2 reuses one attention block in several
  layers).

Each capture is checked on a few heads: the relative error of T u (plus the mixer's skip D u)
against the function's own output is `meta["check_error"]`, and the share ||T u|| / ||y|| is
`meta["check_share"]`. `capture_operators` raises SelfCheckError above `verify`, and
NoCaptureRoute for a decoder layer no route caught. Mixers with no single T (COMPOSITE_MIXERS)
are refused by name.

Limits: one text sequence per capture; the wrapped registry and module globals are process-wide,
so do not run other models in other threads during a capture; quantised mamba checkpoints are
not covered.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess.kernels import scan
from ess.layers import LayerOperator

# model_type -> why no single causal T describes its mixer
COMPOSITE_MIXERS = {
    "diffllama": "differential attention subtracts two softmax attentions: no single T",
}
STACK_NAMES = ("layers", "blocks", "h", "layer")
CHECK_HEADS = 4  # heads/channels each self-check applies T to
VERIFY_TOLERANCE = 1e-3  # relative error of T u above which a float32 capture fails
# ... and a bfloat16/float16 one: their rounding (2^-8, 2^-11 relative per operation) leaves
# 1-3e-3 between T u and the mixer's output on correct captures of the tiny test models
HALF_VERIFY_TOLERANCE = 3e-2


def verify_tolerance(dtype: torch.dtype) -> float:
    """The largest relative error of T u that a capture of a model in `dtype` may show."""
    return VERIFY_TOLERANCE if dtype in (torch.float32, torch.float64) else HALF_VERIFY_TOLERANCE


class NoCaptureRoute(RuntimeError):
    """A decoder layer ran no mixer that any capture route records."""


class SelfCheckError(RuntimeError):
    """A captured T does not reproduce its mixer's own output."""


class CompositeMixer(ValueError):
    """The model's mixer has no single causal T (COMPOSITE_MIXERS)."""


def model_type(model: nn.Module) -> str | None:
    """The model's `config.model_type` (None for a model without a transformers config)."""
    return getattr(getattr(model, "config", None), "model_type", None)


def check_capturable(model: nn.Module) -> None:
    """Raise CompositeMixer naming the model type if its mixer has no single T."""
    family = model_type(model)
    if family in COMPOSITE_MIXERS:
        raise CompositeMixer(f"cannot capture model_type {family!r}: {COMPOSITE_MIXERS[family]}")


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

    def add(self, kind: str, tensors: dict, meta: dict, check: Callable) -> None:
        """Keep one mixer call: its factors as float32 CPU tensors, and the self-check
        `check(op) -> (error, share)` run on the stored op (the form ESS will read)."""
        if self.layer is None:
            return  # a mixer run outside the decoder stack (e.g. a vision tower): not ours
        tensors = {name: _stored(t) for name, t in tensors.items()}
        op = LayerOperator(self.layer, kind, tensors, {"family": self.family, **meta})
        error, share = check(op)
        op.meta["check_error"], op.meta["check_share"] = error, share
        if not self.keep_inputs:
            op.tensors.pop("u", None)
        self.ops.append(op)


def _stored(tensor: Tensor) -> Tensor:
    """A captured tensor as kept: on the CPU, float32 unless boolean (an attention mask)."""
    tensor = tensor.detach().cpu()
    return tensor if tensor.dtype == torch.bool else tensor.float()


# Parts that act on each position alone, by how their class names end: a layer made only of
# these mixes no sequence (the MLP and MoE layers of nemotron_h), so no route is expected to
# record it. Anchored at the end so that a "LinearAttention" or "GatedDeltaNet" is not one.
_TOKENWISE = re.compile(
    r"(MLP|Mlp|MoE|Moe|Experts?|Router|Gate|Norm|Linear|Dropout|Identity|Activation|SiLU|GELU|"
    r"ReLU)$"
)


def is_tokenwise(layer: nn.Module) -> bool:
    """True if every part of `layer` (itself aside) is a position-wise one _TOKENWISE names."""
    modules = [
        m for m in list(layer.modules())[1:] if not isinstance(m, nn.ModuleList | nn.ModuleDict)
    ]
    return all(_TOKENWISE.search(type(m).__name__) for m in modules)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: a ModuleList named in STACK_NAMES outside any vision
    tower, the one with num_hidden_layers entries if there is one (the text model of a
    multimodal model), else the longest (a decoder whose config counts the encoder's layers:
    bart, bert as a causal LM)."""
    n_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    stacks = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and name.split(".")[-1] in STACK_NAMES
        and "vision" not in name
    ]
    if not stacks:
        raise ValueError(
            f"found no ModuleList named {' or '.join(STACK_NAMES)} in {type(model).__name__}"
        )
    return next((stack for stack in stacks if len(stack) == n_layers), max(stacks, key=len))


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


def _check_units(n: int) -> Tensor:
    """Up to CHECK_HEADS heads/channels spread over 0 .. n-1, the ones a self-check uses."""
    return torch.linspace(0, n - 1, min(CHECK_HEADS, n)).round().long().unique()


def _relative(Tu: Tensor, skip: Tensor | float, y: Tensor) -> tuple[float, float]:
    """(||T u + skip - y|| / ||y||, ||T u|| / ||y||) in float64."""
    Tu, y = Tu.double(), y.double()
    scale = y.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return float((Tu + skip - y).norm() / scale), float(Tu.norm() / scale)


# --- attention ---------------------------------------------------------------------------------


def _visible_keys(attention_mask: Any, length: int) -> Tensor | None:
    """The keys each query sees under the mask the implementation was given: (L, L) bool, or
    None when no mask was passed (the implementation is then causal by itself).

    A boolean mask is read as is; an additive one (0 seen, very negative hidden) by its
    finite entries. A mask that is not a tensor (flex attention's BlockMask), differs between
    heads, or adds a bias other than 0 (ALiBi) is refused: T would not hold it.
    """
    if attention_mask is None:
        return None
    if not torch.is_tensor(attention_mask):
        raise ValueError(
            f"cannot read an attention mask of type {type(attention_mask).__name__}; load the "
            f"model with attn_implementation='eager'"
        )
    mask = attention_mask[0, ..., -length:, -length:]  # (1 or H, L, L)
    if mask.shape[-2:] != (length, length) or not torch.equal(mask, mask[:1].expand_as(mask)):
        raise ValueError(f"cannot capture an attention mask of shape {tuple(attention_mask.shape)}")
    mask = mask[0]
    if mask.dtype == torch.bool:
        return mask
    seen = mask > torch.finfo(mask.dtype).min / 2
    if torch.any(mask[seen] != 0):
        raise ValueError(
            "the attention mask adds a bias to the logits (ALiBi?): T does not hold it"
        )
    return seen


def _attention_factors(
    module: nn.Module, query: Tensor, key: Tensor, attention_mask: Any, kwargs: dict
) -> tuple[dict, dict]:
    """Factors of one attention call from the arguments of the attention implementation.

    query: (1, H, L, d), key: (1, H_kv, L, d) post-RoPE. Returns tensors q (H, L, d), k
    (H_kv, L, d), `sinks` (H,) or (H, L) if the model has attention sinks, `bias` (H or 1, L, L)
    if it adds a position bias to the logits, `mask` (L, L) if the mask
    passed is not the causal (sliding) one meta describes; meta with the scale, window
    (None: global), softcap (None: none) and head counts. Query head h reads key head
    h // (H / H_kv) (transformers' repeat_kv).
    """
    if query.shape[0] != 1:
        raise ValueError(f"capture one sequence at a time, got a batch of {query.shape[0]}")
    if not getattr(module, "is_causal", True) and attention_mask is None:
        raise ValueError(f"{type(module).__name__} is not causal: its T is not lower-triangular")
    length = query.shape[2]
    scale = kwargs.get("scaling")
    window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")
    tensors = {"q": query[0], "k": key[0]}
    sinks = kwargs.get("s_aux", kwargs.get("sinks"))
    if sinks is not None:  # (H,), or (1, H, L, 1) one per query (inkling2)
        tensors["sinks"] = sinks if sinks.dim() == 1 else sinks[0, ..., 0]
    if kwargs.get("position_bias") is not None:  # (1, H or 1, L, L), added to the logits
        tensors["bias"] = kwargs["position_bias"][0]
    visible = _visible_keys(attention_mask, length)
    if visible is not None:
        i = torch.arange(length, device=visible.device)
        causal = i[:, None] >= i[None, :]
        if torch.any(visible & ~causal):
            raise ValueError(f"{type(module).__name__}'s mask lets queries see later keys")
        assumed = causal if window is None else causal & (i[:, None] - i[None, :] < window)
        if not torch.equal(visible, assumed):  # the mask, not the kwargs, is what was applied
            window, mask = _window_or_mask(visible.cpu())
            if mask is not None:
                tensors["mask"] = mask
    meta = {
        "mixer": "softmax_attention",
        "n_heads": query.shape[1],
        "n_kv_heads": key.shape[1],
        "head_dim": query.shape[-1],
        "length": length,
        "scale": float(query.shape[-1] ** -0.5 if scale is None else scale),
        "window": None if window is None else int(window),
        "softcap": None if softcap is None else float(softcap),
    }
    return tensors, meta


def _attention_check(value: Tensor, output: Tensor) -> Callable:
    """Self-check of an attention capture: T v per head against the implementation's output.

    value: (1, H_kv, L, d_v); output: (1, L, H, d_v), transformers' layout after attention."""

    def check(op: LayerOperator) -> tuple[float, float]:
        heads = _check_units(op.meta["n_heads"])
        group = op.meta["n_heads"] // op.meta["n_kv_heads"]
        v = value[0].detach().to("cpu", torch.float32)[heads // group]  # (h, L, d_v)
        y = output[0].detach().to("cpu", torch.float32).transpose(0, 1)[heads]
        return _relative(op.matrix(heads) @ v, 0.0, y)

    return check


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
            tensors, meta = _attention_factors(module, query, key, attention_mask, kwargs)
            implementation = original or _module_eager_attention(module)
            result = implementation(module, query, key, value, attention_mask, *args, **kwargs)
            recorder.add("attention", tensors, meta, _attention_check(value, result[0]))
            return result

        return attention

    # Imported here: importing transformers takes ~2 s, which every capture from an
    # ess.paper.training.models checkpoint would pay without using it.
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


# --- named scan functions ----------------------------------------------------------------------


def _first(result: Any) -> Tensor:
    """The output tensor of a scan function that may also return its final state."""
    return result[0] if isinstance(result, tuple) else result


def _refuse_initial_state(state: Any, name: str) -> None:
    if state is not None:
        raise ValueError(f"{name} was given an initial state: capture from an empty cache")


def _mamba_selective_scan(recorder: _Recorder, bound: inspect.BoundArguments, result) -> None:
    """mamba-1 (S6) per channel: hidden_states u (1, D, L), dt (1, D, L) before bias and
    softplus, A (D, N), B, C (1, N, L), skip D (D,), gate z (1, D, L) applied as silu(z)."""
    a = bound.arguments
    _refuse_initial_state(a.get("initial_state"), "mamba_selective_scan")
    dt = a["dt"].float()
    if a.get("delta_bias") is not None:
        dt = dt + a["delta_bias"].float()[..., None]
    if a.get("delta_softplus"):
        dt = F.softplus(dt)
    n_channels, d_state = a["A"].shape
    skip = a["D"] if a.get("D") is not None else torch.zeros(n_channels)
    tensors = {
        "dt": dt[0].T,
        "a": a["A"],
        "B": a["B"][0].T,
        "C": a["C"][0].T,
        "D": skip,
        "u": a["hidden_states"][0].T,
    }
    length = tensors["dt"].shape[0]
    meta = {"mixer": "mamba", "n_channels": n_channels, "d_state": d_state, "length": length}
    output, gate = _first(result)[0], a.get("z")

    def check(op: LayerOperator) -> tuple[float, float]:
        c = _check_units(n_channels)
        A, B, C = op.realisation(c)
        u = op.tensors["u"][:, c].T  # (c, L)
        Tu = scan(A, B, C, u[..., None])[..., 0]
        silu = F.silu(gate[0][c].float().cpu()) if gate is not None else 1.0
        y = output[c].float().cpu()
        return _relative(Tu * silu, op.tensors["D"][c, None] * u * silu, y)

    recorder.add("ssm", tensors, meta, check)


def _mamba2_chunk_scan(recorder: _Recorder, bound: inspect.BoundArguments, result) -> None:
    """mamba-2 (SSD) per head: hidden_states u (1, L, H, P), dt (1, L, H) before bias, softplus
    and clamp, A (H,), B, C (1, L, G, N), skip D (H,)."""
    a = bound.arguments
    _refuse_initial_state(a.get("initial_states"), "mamba2_chunk_scan")
    dt = a["dt"].float()
    if a.get("dt_bias") is not None:
        dt = dt + a["dt_bias"].float()
    if a.get("dt_softplus"):
        dt = F.softplus(dt)
    low, high = a.get("dt_limit", (0.0, float("inf")))
    dt = torch.clamp(dt, min=low, max=high)
    u = a["hidden_states"][0]
    length, n_heads, head_dim = u.shape
    n_groups, d_state = a["B"].shape[-2:]
    skip = a["D"] if a.get("D") is not None else torch.zeros(n_heads)
    tensors = {"dt": dt[0], "a": a["A"], "B": a["B"][0], "C": a["C"][0], "D": skip, "u": u}
    meta = {
        "mixer": "mamba2",
        "n_heads": n_heads,
        "head_dim": head_dim,
        "n_groups": n_groups,
        "d_state": d_state,
        "length": length,
    }
    output = _first(result)[0]  # (L, H, P)

    def check(op: LayerOperator) -> tuple[float, float]:
        h = _check_units(n_heads)
        u = op.tensors["u"][:, h].transpose(0, 1)  # (h, L, P)
        Tu = scan(*op.realisation(h), u)
        y = output[:, h].float().cpu().transpose(0, 1)
        return _relative(Tu, op.tensors["D"][h, None, None] * u, y)

    recorder.add("ssm", tensors, meta, check)


def _delta_rule(name: str) -> Callable:
    """Gated delta rule / KDA: query, key (1, L, H_k, d_k), value (1, L, H, d_v), g, beta.

    The output is linear in the values, o_i = sum_j T[i, j] v_j per head, so T is the
    function's own output on V = I_L: T (H, L, L), with a d_k x d_v state per head (d_k per
    value channel, the TSS)."""

    def capture(recorder: _Recorder, bound: inspect.BoundArguments, result, original) -> None:
        a = bound.arguments
        _refuse_initial_state(a.get("initial_state"), name)
        value = a["value"]
        _, length, n_heads, _ = value.shape
        identity = torch.eye(length, dtype=value.dtype, device=value.device)
        arguments = dict(a)
        arguments.pop("kwargs", None)
        arguments.update(value=identity[None, :, None, :].expand(1, length, n_heads, length))
        arguments.update(output_final_state=False)
        T = _first(original(**arguments, **a.get("kwargs", {})))[0].permute(1, 0, 2)
        d_state = a["key"].shape[-1]
        meta = {"mixer": name, "n_heads": n_heads, "d_state": d_state, "length": length}
        output = _first(result)[0]  # (L, H, d_v)

        def check(op: LayerOperator) -> tuple[float, float]:
            h = _check_units(n_heads)
            v = value[0, :, h].float().cpu().transpose(0, 1)  # (h, L, d_v)
            y = output[:, h].float().cpu().transpose(0, 1)
            return _relative(op.matrix(h) @ v, 0.0, y)

        recorder.add("dense", {"T": T}, meta, check)

    return capture


def _causal_conv1d(recorder: _Recorder, bound: inspect.BoundArguments, result) -> None:
    """A causal depthwise convolution with no activation (lfm2's short conv): hidden_states
    (1, D, L), weight (D, K), bias (D,) or None. With an activation (mamba's pre-scan conv) it
    is not a linear mixer and is left to the scan that follows."""
    a = bound.arguments
    if a.get("activation") is not None:
        return
    weight = a["weight"]
    n_channels, kernel = weight.shape
    u, output = a["hidden_states"][0], _first(result)[0]  # (D, L) each
    bias = a["bias"] if a.get("bias") is not None else torch.zeros(n_channels)
    length = u.shape[-1]
    meta = {"mixer": "short_conv", "n_channels": n_channels, "d_state": kernel - 1}
    meta["length"] = length

    def check(op: LayerOperator) -> tuple[float, float]:
        c = _check_units(n_channels)
        x = u[c].float().cpu()[..., None]  # (c, L, 1)
        Tu = (op.matrix(c) @ x)[..., 0]
        return _relative(Tu, bias[c].float().cpu()[:, None], output[c].float().cpu())

    recorder.add("dense", {"weight": weight}, meta, check)


def _wkv(recorder: _Recorder, bound: inspect.BoundArguments, result) -> None:
    """RWKV-4's WKV per channel: time_decay w (C,) (the decay is exp(w)), time_first u (C,),
    key, value (1, L, C); the output is linear in the values (ess.layers.wkv_operator)."""
    a = bound.arguments
    _refuse_initial_state(a.get("state"), "rwkv_linear_attention")
    key, value = a["key"][0], a["value"][0]
    length, n_channels = key.shape
    tensors = {"key": key, "decay": torch.exp(a["time_decay"]), "bonus": a["time_first"]}
    meta = {"mixer": "wkv", "n_channels": n_channels, "d_state": 1, "length": length}
    output = _first(result)[0]  # (L, C)

    def check(op: LayerOperator) -> tuple[float, float]:
        c = _check_units(n_channels)
        v = value[:, c].float().cpu().T[..., None]  # (c, L, 1)
        return _relative((op.matrix(c) @ v)[..., 0], 0.0, output[:, c].float().cpu().T)

    recorder.add("dense", tensors, meta, check)


def _rg_lru_scan(recorder: _Recorder, bound: inspect.BoundArguments, result) -> None:
    """RG-LRU (recurrent_gemma's `_rnn_scan`): x_t = a_t x_{t-1} + u_t per channel, with the
    gated, normalised input u (1, L, D) and decay a (1, L, D) zeroed where `reset` (1, L, 1)
    starts a document. Realisation A = a, B = C = 1, state size 1 per channel."""
    a = bound.arguments
    _refuse_initial_state(a.get("recurrent_states"), "_rnn_scan")
    u = a["hidden_states"][0]  # (L, D)
    length, n_channels = u.shape
    decay = (a["recurrent_gate"] * ~a["reset"])[0].T[..., None]  # (D, L, 1)
    tensors = {"A": decay, "B": torch.ones_like(decay), "C": torch.ones_like(decay), "u": u}
    meta = {"mixer": "rg_lru", "n_channels": n_channels, "d_state": 1, "length": length}
    output = _first(result)[0]  # (L, D)

    def check(op: LayerOperator) -> tuple[float, float]:
        c = _check_units(n_channels)
        Tu = scan(*op.realisation(c), op.tensors["u"][:, c].T[..., None])[..., 0]
        return _relative(Tu, 0.0, output[:, c].float().cpu().T)

    recorder.add("ssm", tensors, meta, check)


# function name -> capture(recorder, bound arguments, result[, original])
SCAN_ROUTES: dict[str, Callable] = {
    "rwkv_linear_attention": _wkv,
    "mamba_selective_scan": _mamba_selective_scan,
    "mamba2_chunk_scan": _mamba2_chunk_scan,
    "torch_chunk_gated_delta_rule": _delta_rule("gated_delta_rule"),
    "chunk_kimi_delta_attention": _delta_rule("kimi_delta_attention"),
    "causal_conv1d_fn": _causal_conv1d,
}
# method name -> capture, for scans that are methods of the mixer module (same signature rules)
METHOD_ROUTES: dict[str, Callable] = {"_rnn_scan": _rg_lru_scan}


@contextlib.contextmanager
def _recording_scans(model: nn.Module, recorder: _Recorder) -> Iterator[None]:
    """Replace each SCAN_ROUTES function in the modeling files of the model's modules by a
    recorder that calls it unchanged; the originals are put back on exit."""

    def recording(name: str, original: Callable) -> Callable:
        signature = inspect.signature(original)
        capture = {**SCAN_ROUTES, **METHOD_ROUTES}[name]
        wants_original = "original" in inspect.signature(capture).parameters

        def scan_function(*args, **kwargs):
            result = original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if wants_original:
                capture(recorder, bound, result, original=original)
            else:
                capture(recorder, bound, result)
            return result

        return scan_function

    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    saved, methods = [], []
    for module in modules:
        for name in SCAN_ROUTES:
            original = getattr(module, name, None)
            if callable(original):
                saved.append((module, name, original))
                setattr(module, name, recording(name, original))
    for mixer in model.modules():
        for name in METHOD_ROUTES:
            if callable(getattr(type(mixer), name, None)):  # a method: wrap it on the instance
                methods.append((mixer, name))
                setattr(mixer, name, recording(name, getattr(mixer, name)))
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
        for mixer, name in methods:
            delattr(mixer, name)  # the class's method shows through again


# --- module hooks, where no function is called ------------------------------------------------


def _is_lightning_attention(module: nn.Module) -> bool:
    """minimax's lightning attention: a per-head decay exp(-slope) over linear attention."""
    return all(hasattr(module, a) for a in ("slope_rate", "qkv_proj", "norm", "act_fn"))


def _hook_lightning_attention(mixer: nn.Module, recorder: _Recorder) -> list:
    """Forward hooks on the mixer's qkv_proj (q, k, v after its activation: (1, L, H, d) each)
    and pre-hook on its norm (the attention output (1, L, H d), before norm and gate).

    y_i = sum_{j<=i} (q_i . k_j) exp(-s (i - j)) v_j per head: the realisation A = exp(-s),
    B = k, C = q, state size d per value channel."""
    kept = {}

    def on_qkv(module, args, output):
        qkv = mixer.act_fn(output)
        kept["qkv"] = qkv.reshape(*qkv.shape[:2], mixer.num_attention_heads, 3 * mixer.head_dim)

    def on_norm(module, args):
        q, k, v = torch.split(kept.pop("qkv")[0], mixer.head_dim, dim=-1)  # (L, H, d)
        length, n_heads, head_dim = q.shape
        decay = torch.exp(-mixer.slope_rate.reshape(n_heads, 1, 1)).expand(n_heads, length, 1)
        tensors = {
            "A": decay.expand(n_heads, length, head_dim),
            "B": k.transpose(0, 1),
            "C": q.transpose(0, 1),
            "u": v.transpose(0, 1),  # (H, L, d)
        }
        meta = {"mixer": "lightning_attention", "n_heads": n_heads, "d_state": head_dim}
        meta["length"] = length
        output = args[0][0].reshape(length, n_heads, head_dim).transpose(0, 1)

        def check(op: LayerOperator) -> tuple[float, float]:
            h = _check_units(n_heads)
            Tu = scan(*op.realisation(h), op.tensors["u"][h])
            return _relative(Tu, 0.0, output[h].float().cpu())

        recorder.add("ssm", tensors, meta, check)

    return [
        mixer.qkv_proj.register_forward_hook(on_qkv),
        mixer.norm.register_forward_pre_hook(on_norm),
    ]


def _is_mlstm_backend(module: nn.Module) -> bool:
    """xlstm's mLSTM backend: forward(query, key, value, igate, fgate, ...) per head."""
    return hasattr(module, "chunkwise_kernel_fn") and hasattr(module, "sequence_kernel_fn")


def _hook_mlstm(backend: nn.Module, recorder: _Recorder) -> list:
    """A forward hook on the mLSTM backend: query, key (1, H, L, d_qk), value (1, H, L, d_v),
    input and forget gate pre-activations (1, H, L). Its output h = C^T q / max(|n . q|,
    exp(-m)) is linear in the values (the normaliser n and stabiliser m see only keys and
    gates), so T (H, L, L) is the backend's own output on V = I_L; the state per value channel
    is d_qk."""

    def on_forward(module, args, kwargs, output):
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        a = bound.arguments
        for name in ("c_initial", "n_initial", "m_initial"):
            _refuse_initial_state(a.get(name), "the mLSTM backend")
        value = a["value"]
        _, n_heads, length, _ = value.shape
        identity = torch.eye(length, dtype=value.dtype, device=value.device)
        T = _first(module.forward(**{**a, "value": identity.expand(1, n_heads, length, length)}))
        d_state = a["key"].shape[-1]
        meta = {"mixer": "mlstm", "n_heads": n_heads, "d_state": d_state, "length": length}
        h = _first(output)[0]  # (H, L, d_v)

        def check(op: LayerOperator) -> tuple[float, float]:
            units = _check_units(n_heads)
            v = value[0, units].float().cpu()
            return _relative(op.matrix(units) @ v, 0.0, h[units].float().cpu())

        recorder.add("dense", {"T": T[0]}, meta, check)

    return [backend.register_forward_hook(on_forward, with_kwargs=True)]


# predicate on a module -> hook installer returning handles
MODULE_ROUTES: dict[Callable, Callable] = {
    _is_lightning_attention: _hook_lightning_attention,
    _is_mlstm_backend: _hook_mlstm,
}


def _hook_modules(model: nn.Module, recorder: _Recorder) -> list:
    """Install every MODULE_ROUTES hook on the modules its predicate recognises."""
    handles = []
    for module in model.modules():
        for recognises, hook in MODULE_ROUTES.items():
            if recognises(module):
                handles += hook(module, recorder)
    return handles


# --- attention outside the registry: output_attentions -------------------------------------------

_OUTPUT_PROJECTIONS = ("out_proj", "o_proj", "c_proj", "dense")


# fused qkv projection name -> how its output (1, L, 3 H d) holds v: "per_head" (H, 3, d) as
# bloom and falcon split it, "blocked" (3, H, d) as mpt's Wqkv and openai-gpt's c_attn
_FUSED_QKV = {"query_key_value": "per_head", "Wqkv": "blocked", "c_attn": "blocked"}


def _value_stream(projection: str, output: Tensor, n_heads: int) -> Tensor:
    """The values (H, L, d) in the output (1, L, *) of a value or fused qkv projection."""
    length = output.shape[1]
    if projection in ("v_proj", "value"):
        return output[0].reshape(length, n_heads, -1).transpose(0, 1)
    if _FUSED_QKV[projection] == "per_head":
        return output[0].reshape(length, n_heads, 3, -1)[:, :, 2].transpose(0, 1)
    return output[0].reshape(length, 3, n_heads, -1)[:, 2].transpose(0, 1)


def _value_and_output_projections(layer: nn.Module) -> tuple[str, nn.Module, nn.Module] | None:
    """(name, value or fused qkv projection, output projection) of the attention inside
    `layer`: a v_proj or fused projection beside its output projection, or BERT's `value`
    with the first `dense` after it that reads its width (attention.output.dense). None if
    there is none of these."""
    for module in layer.modules():
        out = next((getattr(module, n) for n in _OUTPUT_PROJECTIONS if hasattr(module, n)), None)
        for name in ("v_proj", *_FUSED_QKV):
            if isinstance(getattr(module, name, None), nn.Module) and out is not None:
                return name, getattr(module, name), out
    names = [name for name, _ in layer.named_modules()]
    parts = dict(layer.named_modules())
    for name in names:
        value = getattr(parts[name], "value", None)
        if isinstance(value, nn.Linear):
            later = names[names.index(name) + 1 :]
            dense = (
                parts[n]
                for n in later
                if n.endswith("dense")
                and isinstance(parts[n], nn.Linear)
                and parts[n].in_features == value.out_features
            )
            out = next(dense, None)
            return None if out is None else ("value", value, out)
    return None


def _attention_weights_check(weights: Tensor, streams: dict) -> Callable:
    """Self-check of an output_attentions capture: T v per head against the input of the
    output projection (1, L, H d), split head-major; NaN (a failed check) when the layer has
    no projection to read v from."""

    def check(op: LayerOperator) -> tuple[float, float]:
        if "v" not in streams:
            return float("nan"), float("nan")
        n_heads, length = weights.shape[0], weights.shape[-1]
        h = _check_units(n_heads)
        v = _value_stream(streams["projection"], streams["v"], n_heads)[h].float().cpu()
        y = streams["y"][0].float().cpu().reshape(length, n_heads, -1).transpose(0, 1)[h]
        return _relative(op.matrix(h) @ v, 0.0, y)

    return check


def _window_or_mask(visible: Tensor) -> tuple[int | None, Tensor | None]:
    """The keys each query sees (L, L) bool as meta states them: (None, None) if causal,
    (w, None) if a sliding window of w (0 <= i - j < w, TSS min(i, w) by docs/method.md §1.4),
    else (None, visible), kept for cached_keys."""
    length = visible.shape[-1]
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    window = int(lag[visible].max()) + 1
    if torch.equal(visible, (lag >= 0) & (lag < window)):
        return (None if window == length else window), None
    return None, visible


def _capture_attention_weights(
    model: nn.Module, input_ids: Tensor, layers: nn.ModuleList, missed: list[int], recorder
) -> None:
    """Attention computed outside the registry (bloom, gpt_neo, falcon): T (H, L, L) of each
    `missed` layer from a second forward pass with output_attentions=True, and, where the
    layer has a value projection, its v and the output projection's input for the check.

    The keys a query sees are read from T's nonzero entries (a masked key gets exactly 0) and
    stated as a window, or kept as `mask`, for the TSS (_window_or_mask)."""
    streams = {i: {} for i in missed}
    handles = []
    for i in missed:
        projections = _value_and_output_projections(layers[i])
        if projections is None:
            continue
        streams[i]["projection"] = projections[0]

        def keep_v(module, args, output, kept=streams[i]):
            kept["v"] = output

        def keep_y(module, args, kept=streams[i]):
            kept["y"] = args[0]

        handles.append(projections[1].register_forward_hook(keep_v))
        handles.append(projections[2].register_forward_pre_hook(keep_y))
    try:
        attentions = model(input_ids=input_ids, output_attentions=True, **_forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
    attentions = getattr(attentions, "attentions", None) or ()
    for i in missed:
        if i >= len(attentions) or attentions[i] is None:
            continue
        weights = attentions[i][0].float()  # (H, L, L)
        length = weights.shape[-1]
        visible = (weights > 0).any(0)
        if visible.triu(1).any():
            raise ValueError(f"decoder layer {i} attends to later tokens: its T is not causal")
        window, mask = _window_or_mask(visible)
        tensors = {"T": weights} if mask is None else {"T": weights, "mask": mask}
        meta = {
            "mixer": "softmax_attention",
            "route": "output_attentions",
            "n_heads": weights.shape[0],
            "length": length,
            "window": window,
        }
        recorder.layer = i
        recorder.add("attention", tensors, meta, _attention_weights_check(weights, streams[i]))
    recorder.layer = None


def _forward_kwargs(model: nn.Module) -> dict:
    """use_cache=False (keys as computed, no cache), and logits for the last position only."""
    kwargs = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def _missed_layers_message(layers: nn.ModuleList, missed: list[int]) -> str:
    """Which layers no route caught, with the classes of their direct submodules."""
    children = sorted({type(child).__name__ for i in missed for child in layers[i].children()})
    return (
        f"no capture route recorded a sequence mixer in decoder layer(s) {missed} (their parts: "
        f"{', '.join(children)}); routes: the attention registry, "
        f"{', '.join([*SCAN_ROUTES, *METHOD_ROUTES, *_HOOKED.values()])}, output_attentions "
        f"(docs/families.md)"
    )


def _failed_checks_message(failed: list[LayerOperator], verify: float) -> str:
    worst = ", ".join(
        f"layer {op.layer} {op.meta['mixer']}: {op.meta['check_error']:.2e}" for op in failed
    )
    return f"T u differs from the mixer's own output by more than {verify:g} relative: {worst}"


def capture_operators(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    keep_inputs: bool = False,
    verify: float | None | str = "dtype",
) -> list[LayerOperator]:
    """Run `model` once on one sequence and return the operator of every mixer, in call order.

    input_ids: (L,) or (1, L). The model runs in eval mode under no_grad (its mode is restored).
    Tensors are float32 on the CPU:

    - attention: q (H, L, d), k (H_kv, L, d) [, sinks (H,)] [, mask (L, L)]; meta: scale,
      window, softcap, n_heads, n_kv_heads, head_dim;
    - ssm, meta["mixer"] == "mamba": dt (L, D), a (D, N), B (L, N), C (L, N), D (D,);
    - ssm, meta["mixer"] == "mamba2": dt (L, H), a (H,), B (L, G, N), C (L, G, N), D (H,);
    - dense, meta["mixer"] gated_delta_rule / kimi_delta_attention: T (H, L, L); short_conv:
      weight (D, K).

    Every op's meta holds check_error and check_share (module docstring). keep_inputs=True also
    keeps each SSM's input channel stream u ((L, D) or (L, H, P)). verify: the largest
    check_error allowed ("dtype": `verify_tolerance` of the model's weights; None: no check).
    Raises CompositeMixer, NoCaptureRoute, SelfCheckError.

    A model with its own `operators(input_ids)` (ess.paper.training.models.LanguageModel, or any
    model of yours) goes through `own_operators` instead.
    """
    if callable(getattr(model, "operators", None)):
        return own_operators(model, input_ids)
    check_capturable(model)
    input_ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if input_ids.shape[0] != 1:
        raise ValueError(f"capture one sequence at a time, got input_ids {tuple(input_ids.shape)}")
    recorder = _Recorder(family=str(model_type(model)), keep_inputs=keep_inputs)
    layers = decoder_layers(model)
    handles = _hook_layer_index(layers, recorder) + _hook_modules(model, recorder)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if verify == "dtype":
        verify = verify_tolerance(next(model.parameters()).dtype)
    try:
        with torch.no_grad(), _recording_attention(recorder), _recording_scans(model, recorder):
            model(input_ids=input_ids.to(device), **_forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    caught = {op.layer for op in recorder.ops}
    missed = [i for i, layer in enumerate(layers) if i not in caught and not is_tokenwise(layer)]
    if missed:  # attention outside the registry may still return its weights
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ids = input_ids.to(device)
                _capture_attention_weights(model, ids, layers, missed, recorder)
        finally:
            model.train(was_training)
        recorder.ops.sort(key=lambda op: op.layer)  # stable: a layer's mixers keep their order
        missed = [i for i in missed if i not in {op.layer for op in recorder.ops}]
    if missed:
        raise NoCaptureRoute(_missed_layers_message(layers, missed))
    failed = [
        op
        for op in recorder.ops
        if verify is not None and not op.meta["check_error"] <= verify  # NaN: not checkable
    ]
    if failed:
        raise SelfCheckError(_failed_checks_message(failed, verify))
    return recorder.ops


# ---------------------------------------------------------------------------------------------
# Which families have a route (`ess families`)
# ---------------------------------------------------------------------------------------------

# Families whose tiny random model tests/test_capture.py or tests/test_hf.py checks y = T u on
# (test_capture asserts this set equals what the tests build).
TESTED_FAMILIES = frozenset(
    {
        "bamba", "cohere2", "falcon_h1", "falcon_mamba", "gemma2", "gemma3", "gemma3_text",
        "gpt2", "gpt_neox", "gpt_oss", "granitemoehybrid", "jamba", "kimi_linear", "lfm2",
        "llama", "llama4_text", "mamba", "mamba2", "mistral", "nemotron_h", "olmo2",
        "olmo_hybrid", "phi", "qwen2", "qwen3", "qwen3_next", "smollm3", "zamba", "zamba2",
        "rwkv", "recurrent_gemma", "minimax", "gpt_neo", "bloom", "falcon", "mpt", "gptj", "xglm",
        "xlstm", "inkling2_text", "lfm2_moe", "deepseek_v3", "bart", "roformer",
    }
)  # fmt: skip
# Mixers in transformers with no route yet: a marker in the modeling source -> the mixer
_UNROUTED: dict[str, str] = {}
# Mixers reached by MODULE_ROUTES hooks: a marker in the modeling source -> the route's name
_HOOKED = {"lightningattention": "lightning attention hooks", "mlstm": "mLSTM backend hook"}


def _modeling_source(model_type: str) -> str:
    """The text of transformers' modeling file of `model_type` ("" if it has none)."""
    import importlib.util

    from transformers.models.auto.configuration_auto import model_type_to_module_name

    name = model_type_to_module_name(model_type)
    spec = importlib.util.find_spec(f"transformers.models.{name}.modeling_{name}")
    return "" if spec is None or spec.origin is None else open(spec.origin).read()


def family_route(model_type: str) -> str:
    """How `capture_operators` reaches the mixers of `model_type`, read from its modeling file:
    the routes it calls, the mixers no route covers, or why it is refused."""
    if model_type in COMPOSITE_MIXERS:
        return f"refused: {COMPOSITE_MIXERS[model_type]}"
    source = _modeling_source(model_type)
    lowered = source.lower()
    routes = ["attention registry"] if "ALL_ATTENTION_FUNCTIONS" in source else []
    scans = [name for name in {**SCAN_ROUTES, **METHOD_ROUTES} if f"{name}(" in source]
    if scans and "causal_conv1d_fn" in scans and len(scans) > 1:
        scans.remove("causal_conv1d_fn")  # a pre-scan conv with an activation: not a mixer
    routes += scans + [route for marker, route in _HOOKED.items() if marker in lowered]
    missing = sorted({mixer for marker, mixer in _UNROUTED.items() if marker in lowered})
    if missing:
        return f"none for {', '.join(missing)}" + (f" ({', '.join(routes)})" if routes else "")
    return ", ".join(routes) if routes else "output_attentions (attention outside the registry)"


def family_routes() -> list[dict]:
    """Every causal-LM model type of the installed transformers, sorted: model_type, route
    (family_route) and tested (in TESTED_FAMILIES)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [
        {"model_type": name, "route": family_route(name), "tested": name in TESTED_FAMILIES}
        for name in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    ]


def own_operators(model: nn.Module, input_ids: torch.Tensor) -> list[LayerOperator]:
    """Every layer's operator of a model with its own `operators(input_ids)` on one sequence, in
    layer order (ess.paper.training.models.LanguageModel is one).

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
