"""One layer's sequence-mixing operator (docs/method.md §1): the type every model produces.

`LayerOperator` is what `ess.paper.training.models.LanguageModel.operators` returns for a batch of
sequences and what `ess.hf.capture_operators` returns for one sequence of a transformers model (or
of a LanguageModel). It keeps T in the form it was produced in, never converted until asked:

- attention, T (..., H, L, L): the attention matrix itself (ess.paper.training.models SA, SWA);
- attention, q (H, L, d), k (H_kv, L, d) [, sinks (H,) or (H, L)] [, bias (H or 1, L, L)]
  with meta scale, window, softcap, n_heads, n_kv_heads: post-RoPE queries and keys
  (transformers attention);
- ssm, A, B, C (..., H, L, N) [, D (H,)]: the realisation itself (ess.paper.training.models LA, WLA,
GLA,
  GLA-S6, S6; for S6 the channels are the "heads");
- ssm, meta mixer "mamba": dt (L, D), a (D, N), B, C (L, N), D (D,) [, u (L, D)] (mamba,
  falcon_mamba, jamba);
- ssm, meta mixer "mamba2": dt (L, H), a (H,), B, C (L, G, N), D (H,) [, u (L, H, P)] (mamba2,
  bamba, zamba2, nemotron_h, granitemoehybrid, falcon_h1);
- attention, optional mask (L, L) bool: the keys each query sees when the model's mask is not
  the plain causal (or sliding-window) one, e.g. llama4's chunked attention;
- dense, T (H, L, L) with meta d_state: a recurrence whose state is not diagonal (gated delta
  rule, KDA), kept as T itself; dense, meta mixer "short_conv": weight (D, K), the causal
  depthwise convolution whose T is banded Toeplitz (lfm2); dense, meta mixer "wkv": key (L, C),
  decay (C,), bonus (C,), RWKV-4's normalised WKV (rwkv);
- ssm, A, B, C (H, L, N): also RG-LRU (recurrent_gemma, N = 1 per channel) and lightning
  attention (minimax, a per-head scalar decay with B = k, C = q).

`matrix()` gives T per head/channel (attention: the dense ESS path), `realisation()` the
diagonal realisation (A, B, C) of docs/method.md §1.1 (ssm: the realisation path), `tss` the
theoretical state size in the convention of docs/method.md §1.4. S6's skip D sits on T's
diagonal, which no Hankel block holds: both leave it out. `save_operators` / `load_operators`
keep a list of them in one safetensors file (the E6 workflow's operators/*.safetensors).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ess.kernels import attention_matrix, materialise

Channels = Tensor | slice | None
_METADATA_KEY = "ess_operators"


@dataclass(frozen=True)
class LayerOperator:
    """One mixer's causal operator y = T u per head/channel, on the input it was taken from.

    layer: the decoder-layer index (a zamba2 hybrid layer holds an attention and an SSM: two
    entries with one index). kind: "attention" (no realisation of fixed size) or "ssm".
    tensors: the stored form (module docstring). meta: plain JSON values: mixer (SA, GLA, ...,
    softmax_attention, mamba, mamba2), length L, n_heads, window (attention) or d_state (ssm),
    and what the stored form needs (scale, softcap, n_kv_heads, n_groups, head_dim, family).
    """

    layer: int
    kind: Literal["attention", "ssm", "dense"]
    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def matrix(self, channels: Channels = None) -> Tensor:
        """T per head (attention) or per head/channel (ssm): (..., H, L, L), zero above the
        diagonal. `channels` (indices or a slice) picks heads/channels before T is built; an
        SSM's T costs (..., H, L, L, N) memory, so pick few for a real layer."""
        if self.kind == "ssm":
            return materialise(*self.realisation(channels))
        index = slice(None) if channels is None else channels
        if "T" in self.tensors:
            return self.tensors["T"][..., index, :, :]
        if self.meta.get("mixer") == "short_conv":
            return convolution_operator(self.tensors["weight"][index], self.meta["length"])
        if self.meta.get("mixer") == "wkv":
            t = self.tensors
            return wkv_operator(t["key"][:, index].T, t["decay"][index], t["bonus"][index])
        t, m = self.tensors, self.meta
        head_ids = torch.arange(m["n_heads"])[index]
        k = t["k"][head_ids // (m["n_heads"] // m["n_kv_heads"])]  # the key head each reads
        sinks = t["sinks"][index] if "sinks" in t else None
        bias = t.get("bias")
        if bias is not None and bias.shape[0] > 1:  # one bias per head, else shared
            bias = bias[index]
        return attention_operator(
            t["q"][index],
            k,
            scale=m["scale"],
            window=m["window"],
            softcap=m["softcap"],
            sinks=sinks,
            mask=t.get("mask"),
            bias=bias,
        )

    def realisation(self, channels: Channels = None) -> tuple[Tensor, Tensor, Tensor]:
        """(A, B, C), each (..., H, L, N), of an ssm layer: x_t = A_t x_{t-1} + B_t u_t,
        y_t = C_t . x_t per head (mamba2, ess.paper.training.models) or channel (mamba, S6); the
        skip D is left out. `channels` picks heads/channels first: a whole mamba layer is D L N
        numbers per factor."""
        if self.kind != "ssm":
            raise ValueError(f"layer {self.layer} is {self.kind}: it has no fixed-size realisation")
        t = self.tensors
        index = slice(None) if channels is None else channels
        if "A" in t:
            return tuple(t[name][..., index, :, :] for name in ("A", "B", "C"))
        if self.meta["mixer"] == "mamba":
            return mamba_realisation(t["dt"][:, index], t["a"][index], t["B"], t["C"])
        heads = torch.arange(self.meta["n_heads"])[index]
        groups = heads // (self.meta["n_heads"] // self.meta["n_groups"])  # group each head reads
        return mamba2_realisation(
            t["dt"][:, heads], t["a"][heads], t["B"][:, groups], t["C"][:, groups]
        )

    @property
    def tss(self) -> int | Tensor:
        """Theoretical state size per head/channel (docs/method.md §1.4): an int, d_state, for
        a state of fixed size; for attention the KV cache at each split i = 1 .. L-1, i or
        min(i, window): a (L-1,) int64 tensor (entry i-1 is split i)."""
        if self.kind != "attention":
            return int(self.meta["d_state"])
        if "mask" in self.tensors:
            return cached_keys(self.tensors["mask"])
        splits = torch.arange(1, self.meta["length"])
        window = self.meta["window"]
        return splits if window is None else splits.clamp(max=window)


# ---------------------------------------------------------------------------------------------
# T and (A, B, C) from the factors transformers models compute


def attention_operator(
    q: Tensor,
    k: Tensor,
    *,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """T = softmax_j(q_i . k_j * scale + mask) per head, the causal attention matrix.

    q: (..., H, L, d); k: (..., H_kv, L, d) with H a multiple of H_kv (query head h reads key
    head h // (H / H_kv)); window w keeps j with i - j < w (transformers' sliding window);
    softcap c maps logits s -> c tanh(s / c) before the mask; bias (H or 1, L, L) is added to
    the logits after it (a relative-position bias, inkling's position_bias); sinks (H,), or
    (H, L) one per query, add one extra logit per row that takes probability mass but no
    column (gpt-oss, inkling2); mask (L, L) bool, the keys
    each query sees, replaces the window where the model's mask has another shape (llama4's
    chunks). Returns T: (..., H, L, L), zero above the diagonal, in q's dtype.
    """
    k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.inf)
    return attention_matrix(logits, window, sinks)


def cached_keys(mask: Tensor) -> Tensor:
    """Attention's TSS under a structured mask (L, L) bool: at split i = 1 .. L-1, the number
    of keys j < i that some query at or after i still reads (the KV cache a state must keep).
    Returns (L-1,) int64: i under a causal mask, i mod c under chunks of c (llama4). (A
    sliding window w gives min(i, w - 1); meta["window"] states windows instead, counted
    min(i, w) by docs/method.md §1.4.)"""
    length = mask.shape[-1]
    # read_later[i, j]: a query at or after i sees key j (suffix-or over the rows)
    read_later = mask.flip(0).cumsum(0).flip(0) > 0
    before = torch.ones(length, length, dtype=torch.bool).tril(-1)  # j < i
    return (read_later & before).sum(-1)[1:].to(torch.int64)


def wkv_operator(key: Tensor, decay: Tensor, bonus: Tensor) -> Tensor:
    """T of RWKV-4's WKV per channel: y_t = sum_{j<=t} T[t, j] v_j with T a softmax over
    j <= t of the logits k_j - (t - 1 - j) w for j < t and u + k_t for j = t (transformers'
    rwkv_linear_attention; its running sums are this ratio, kept stable by a running max).

    key: (C, L); decay w = exp(time_decay) (C,) > 0; bonus u = time_first (C,). Returns T:
    (C, L, L), rows summing to 1, zero above the diagonal."""
    length = key.shape[-1]
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - j
    logits = key[:, None, :] - (lag - 1).clamp(min=0) * decay[:, None, None]
    on_diagonal = torch.eye(length, dtype=torch.bool)
    logits = torch.where(on_diagonal, (bonus[:, None] + key)[:, :, None], logits)
    return torch.softmax(logits.masked_fill(lag < 0, -torch.inf), dim=-1)


def convolution_operator(weight: Tensor, length: int) -> Tensor:
    """T of a causal depthwise convolution per channel: banded Toeplitz, T[i, j] = w[K-1-(i-j)]
    for 0 <= i - j < K (F.conv1d with K-1 left padding, as transformers' causal_conv1d_fn).

    weight: (D, K). Returns T: (D, L, L)."""
    kernel = weight.shape[-1]
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # i - j
    inside = (lag >= 0) & (lag < kernel)
    taps = weight[:, (kernel - 1 - lag).clamp(0, kernel - 1)]  # (D, L, L)
    return taps * inside


def mamba_realisation(dt: Tensor, a: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel realisation of a mamba-1 (S6) mixer.

    dt: (L, D), a: (D, N), B, C: (L, N). Channel c: A_t = exp(dt_t^c a^c), B_t = dt_t^c B_t,
    C_t = C_t. Returns A, B, C: (D, L, N) each.
    """
    dt = dt.transpose(0, 1)[..., None]  # (D, L, 1)
    A = torch.exp(dt * a[:, None, :])
    return A, dt * B[None], C[None].expand_as(A)


def mamba2_realisation(
    dt: Tensor, a: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head realisation of a mamba-2 (SSD) mixer; all P channels of a head share it.

    dt: (L, H), a: (H,), B, C: (L, G, N); head h reads group h // (H / G). Head h:
    A_t = exp(dt_t^h a^h) I (a scalar decay, stored as the diagonal), B_t = dt_t^h B_t^g,
    C_t = C_t^g. Returns A, B, C: (H, L, N) each.
    """
    n_heads, n_groups = dt.shape[1], B.shape[1]
    B = B.repeat_interleave(n_heads // n_groups, dim=1).transpose(0, 1)  # (H, L, N)
    C = C.repeat_interleave(n_heads // n_groups, dim=1).transpose(0, 1)
    dt = dt.transpose(0, 1)[..., None]  # (H, L, 1)
    A = torch.exp(dt * a[:, None, None]).expand_as(B)
    return A, dt * B, C


# ---------------------------------------------------------------------------------------------
# Persistence: one safetensors file; the per-layer meta travels as JSON in its metadata


def save_operators(ops: list[LayerOperator], path: str | Path) -> None:
    """Write `ops` to a safetensors file (tensor "<entry>.<name>", meta as JSON metadata)."""
    tensors, index = {}, []
    for n, op in enumerate(ops):
        for name, tensor in op.tensors.items():
            tensors[f"{n}.{name}"] = tensor.contiguous()
        index.append(
            {"layer": op.layer, "kind": op.kind, "meta": op.meta, "tensors": sorted(op.tensors)}
        )
    save_file(tensors, str(path), metadata={_METADATA_KEY: json.dumps(index)})


def load_operators(path: str | Path, layers: Iterable[int] | None = None) -> list[LayerOperator]:
    """Read what `save_operators` wrote (no pickle involved); only the entries of `layers`
    (None = all) are read from disk. A layer that the file does not hold is an error."""
    with safe_open(str(path), framework="pt") as f:
        index = json.loads(f.metadata()[_METADATA_KEY])
        wanted = None if layers is None else set(layers)
        if wanted is not None and not wanted <= {entry["layer"] for entry in index}:
            missing = sorted(wanted - {entry["layer"] for entry in index})
            raise ValueError(f"{path} holds no operator of layer(s) {missing}")
        return [
            LayerOperator(
                layer=entry["layer"],
                kind=entry["kind"],
                tensors={name: f.get_tensor(f"{n}.{name}") for name in entry["tensors"]},
                meta=entry["meta"],
            )
            for n, entry in enumerate(index)
            if wanted is None or entry["layer"] in wanted
        ]
