"""A small language model whose sequence mixers expose their operators (nanoGPT style).

    tokens -> embedding -> N x [x + mixer(norm(x)); x + mlp(norm(x))] -> norm -> head (tied)

Mixers (ModelConfig.layers, a comma-separated pattern cycled over the layers, e.g. "GLA,SA"):

    SA      softmax attention                   T = softmax(q k^T / sqrt(d_h)), causal
    SWA     sliding-window attention, window w  as SA with T[i, j] = 0 where i - j >= w
    LA      linear attention                    A_t = 1,  B_t = k_t, C_t = q_t / sqrt(N)
    WLA     weighted LA (static decay)          A_t = lambda = sigmoid(w)^(1/tau), per head and
                                                key channel, learned, input-independent
    GLA     gated LA (Yang et al. 2024)         A_t = sigmoid(W_a h_t)^(1/tau), input-dependent
    S6      Mamba's selective SSM, per channel  A_t = exp(dt_t A), B_t = dt_t B(h_t),
                                                C_t = C(h_t), dt_t = softplus(W_dt h_t + b),
                                                A = -exp(A_log); plus the skip D u_t
    GLA-S6  GLA with S6 featurisation (ours)    multi-head GLA whose decay is S6's:
                                                A_t = exp(dt_t A_h), dt_t = softplus(w_h.h_t + b_h)
                                                per head, A_h = -exp(A_log_h) per key channel,
                                                B_t = dt_t k_t, C_t = alpha q_t with the
                                                normalisation factor alpha (default 1/sqrt(N))

Every mixer first applies a short causal depthwise convolution (kernel ModelConfig.conv_size,
0 = none) to its input, as Mamba, GLA (fla) and Zoology's models do; it lets one layer see the
previous token, which MQAR needs. The convolution, projections, gates, the skip and the
per-head output norm (ModelConfig.head_norm) are featurisation: they are not part of T.

Operators: `mixer.operator(x, layer)` (x: (batch, L, d_model) the mixer input) and
`LanguageModel.operators(input_ids)` return an `ess.layers.LayerOperator`:

- attention: kind "attention", T: (batch, H, L, L): y = T v per head, all d_h value channels of
  a head share T;
- recurrences: kind "ssm", A, B, C: (batch, H, L, N) (+ D: (H,) for S6): for each of the P
  value channels u of head H (P = d_model / n_heads; for S6 the "heads" are the d_model
  channels and P = 1)

      x_t = A_t * x_{t-1} + B_t u_t,   y_t = C_t . x_t    (A_t diagonal, x_t in R^N)

  (+ D u_t for S6). `value_stream(x)` gives u: (batch, H, L, P); `core(x)` gives y before the
  output projection; `ess.kernels.scan(A, B, C, u)` (+ D u) reproduces it.

State size (TSS) = ModelConfig.state_size: d_k per head for LA/WLA/GLA/GLA-S6, d_state for S6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ess.kernels import attention_matrix, scan, scan_chunked
from ess.layers import LayerOperator

MIXERS = ("SA", "SWA", "LA", "WLA", "GLA", "S6", "GLA-S6")


@dataclass
class ModelConfig:
    """layers: mixer pattern, comma-separated, cycled to n_layers ("GLA,SA" -> GLA, SA, GLA, ...).

    state_size: TSS (d_k per head, or S6's d_state). window: SWA's w. gate_tau: tau of WLA/GLA's
    a = sigmoid(.)^(1/tau). gla_s6_alpha: GLA-S6's C_t = alpha q_t (None -> 1/sqrt(state_size)).
    dt_min, dt_max: initial range of S6 / GLA-S6's step dt. head_norm: RMS-normalise each head's
    output y of LA/WLA/GLA/GLA-S6 before the output projection (GLA's output norm; it makes
    the layer invariant to the scale of T, which unnormalised linear attention otherwise lacks).
    """

    vocab_size: int = 64
    d_model: int = 64
    n_layers: int = 2
    layers: str = "GLA"
    n_heads: int = 1
    state_size: int = 16
    window: int = 16
    conv_size: int = 4
    head_norm: bool = True
    mlp_ratio: int = 4
    gate_tau: float = 16.0
    gla_s6_alpha: float | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self) -> None:
        self.layer_kinds()  # validates the pattern
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "state_size", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_size < 0:
            raise ValueError(f"conv_size must be >= 0 (0 = no convolution), got {self.conv_size}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0 = no MLP sublayer), got {self.mlp_ratio}")

    def layer_kinds(self) -> list[str]:
        """The mixer of each layer: the pattern cycled to n_layers (length must divide it)."""
        pattern = [p.strip().upper() for p in self.layers.split(",")]
        for p in pattern:
            if p not in MIXERS:
                raise ValueError(f"unknown mixer {p!r} in layers={self.layers!r}; known: {MIXERS}")
        if self.n_layers % len(pattern) != 0:
            raise ValueError(
                f"layer pattern {self.layers!r} has {len(pattern)} entries, which does not divide "
                f"n_layers={self.n_layers}"
            )
        return pattern * (self.n_layers // len(pattern))


# ----------------------------------------------------------------------------------------------
# Mixers


class ShortConv(nn.Module):
    """Causal depthwise convolution over time, kernel k (identity if k == 0). (b, L, d) -> same.

    y_t = bias + sum_{m<k} w[:, m] * x_{t-(k-1)+m} (x_t = 0 for t < 0): nn.Conv1d's parameters
    and result, computed as k shifted multiply-adds, which train several times faster on a CPU
    than the depthwise convolution kernel at these sizes.
    """

    def __init__(self, d: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(d, d, k, groups=d, padding=k - 1) if k > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return x
        length = x.shape[1]
        padded = F.pad(x, (0, 0, self.k - 1, 0))  # k - 1 zeros before t = 0: (b, L + k - 1, d)
        weight = self.conv.weight[:, 0, :]  # (d, k)
        y = self.conv.bias + padded[:, :length] * weight[:, 0]
        for m in range(1, self.k):
            y = y + padded[:, m : m + length] * weight[:, m]
        return y


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Mark a recurrence parameter (decays, dt, D) to be left out of weight decay, as Mamba."""
    p._no_weight_decay = True
    return p


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(b, L, H * d) -> (b, H, L, d)."""
    b, length, _ = x.shape
    return x.view(b, length, n_heads, -1).transpose(1, 2)


def merge_heads(y: Tensor) -> Tensor:
    """(b, H, L, d) -> (b, L, H * d)."""
    b, h, length, d = y.shape
    return y.transpose(1, 2).reshape(b, length, h * d)


class Attention(nn.Module):
    """Causal softmax attention (SA), or sliding-window attention (SWA) when window is given."""

    def __init__(self, config: ModelConfig, window: int | None = None):
        super().__init__()
        self.kind = "SA" if window is None else "SWA"
        self.n_heads, self.window = config.n_heads, window
        self.conv = ShortConv(config.d_model, config.conv_size)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (b, L, d_model) -> q, k, v: (b, H, L, d_h)."""
        q, k, v = self.qkv(self.conv(x)).chunk(3, dim=-1)
        return tuple(split_heads(z, self.n_heads) for z in (q, k, v))

    def attention_matrix(self, q: Tensor, k: Tensor) -> Tensor:
        """T = softmax(q k^T / sqrt(d_h)) with the causal (and window) mask: (b, H, L, L)."""
        return attention_matrix(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), self.window)

    def value_stream(self, x: Tensor) -> Tensor:
        """v: (b, H, L, d_h)."""
        return self._qkv(x)[2]

    def core(self, x: Tensor) -> Tensor:
        """T v: (b, H, L, d_h), the output before the output projection."""
        q, k, v = self._qkv(x)
        return self.attention_matrix(q, k) @ v

    def forward(self, x: Tensor) -> Tensor:
        return self.out(merge_heads(self.core(x)))

    def operator(self, x: Tensor, layer: int) -> LayerOperator:
        """T: (b, H, L, L) for the mixer input x: (b, L, d_model)."""
        q, k, _ = self._qkv(x)
        meta = {
            "mixer": self.kind,
            "n_heads": self.n_heads,
            "length": x.shape[1],
            "window": self.window,
        }
        return LayerOperator(layer, "attention", {"T": self.attention_matrix(q, k)}, meta)

    def transitions(self, x: Tensor) -> None:
        """Attention has no state-space realisation of fixed size: no transitions."""
        return None


class LinearAttention(nn.Module):
    """LA: x_t = x_{t-1} + k_t u_t^T, y_t = q_t . x_t / sqrt(N), multi-head, no denominator.

    Subclasses change the decay log A_t (and WLA/GLA-S6 the input/output scales) only.
    """

    kind = "LA"

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h, n = config.d_model, config.n_heads, config.state_size
        self.n_heads, self.state_size, self.tau = h, n, config.gate_tau
        self.conv = ShortConv(d, config.conv_size)
        self.qk = nn.Linear(d, 2 * h * n)
        self.v = nn.Linear(d, d)
        self.head_norm = nn.RMSNorm(d // h) if config.head_norm else nn.Identity()
        self.out = nn.Linear(d, d)

    def log_decay(self, h: Tensor) -> Tensor:
        """log A_t: (b, H, L, N) from the featurised input h: (b, L, d_model). LA: A_t = 1."""
        b, length, _ = h.shape
        return h.new_zeros(b, self.n_heads, length, self.state_size)

    def input_output(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """B_t = k_t, C_t = q_t / sqrt(N): (b, H, L, N) each."""
        q, k = self.qk(h).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(q, self.n_heads) / math.sqrt(
            self.state_size
        )

    def realisation(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, H, L, N) for the mixer input x: (b, L, d_model)."""
        h = self.conv(x)
        B, C = self.input_output(h)
        return self.log_decay(h), B, C

    def value_stream(self, x: Tensor) -> Tensor:
        """u: (b, H, L, P), P = d_model / H."""
        return split_heads(self.v(self.conv(x)), self.n_heads)

    def core(self, x: Tensor) -> Tensor:
        """y = T u: (b, H, L, P), the output before the output projection."""
        return scan_chunked(*self.realisation(x), self.value_stream(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(merge_heads(self.head_norm(self.core(x))))

    def transitions(self, x: Tensor) -> Tensor:
        """A_t: (b, H, L, N)."""
        return torch.exp(self.log_decay(self.conv(x)))

    def operator(self, x: Tensor, layer: int) -> LayerOperator:
        """A, B, C: (b, H, L, N) for the mixer input x: (b, L, d_model)."""
        log_a, B, C = self.realisation(x)
        meta = {
            "mixer": self.kind,
            "n_heads": self.n_heads,
            "length": x.shape[1],
            "d_state": self.state_size,
        }
        return LayerOperator(layer, "ssm", {"A": torch.exp(log_a), "B": B, "C": C}, meta)


class WeightedLinearAttention(LinearAttention):
    """WLA: A_t = lambda = sigmoid(w)^(1/tau), a learned static decay per head and key channel."""

    kind = "WLA"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.decay_logit = no_weight_decay(
            nn.Parameter(torch.zeros(config.n_heads, config.state_size))
        )

    def log_decay(self, h: Tensor) -> Tensor:
        b, length, _ = h.shape
        log_lambda = F.logsigmoid(self.decay_logit) / self.tau  # (H, N)
        return log_lambda[None, :, None, :].expand(b, -1, length, -1)


class GatedLinearAttention(LinearAttention):
    """GLA: A_t = sigmoid(W_a h_t + b_a)^(1/tau), input-dependent, per head and key channel."""

    kind = "GLA"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.gate = nn.Linear(config.d_model, config.n_heads * config.state_size)

    def log_decay(self, h: Tensor) -> Tensor:
        return split_heads(F.logsigmoid(self.gate(h)) / self.tau, self.n_heads)


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float) -> Tensor:
    """Bias b with softplus(b) log-uniform in [dt_min, dt_max] (Mamba's dt initialisation): (n,)."""
    dt = torch.exp(torch.linspace(math.log(dt_min), math.log(dt_max), n))
    return dt + torch.log(-torch.expm1(-dt))


def s4d_real_log_a(rows: int, n: int) -> Tensor:
    """A_log with A = -exp(A_log) = -(1, 2, ..., N) in every row (S4D-real): (rows, N)."""
    return torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(rows, 1)


class GLAS6(LinearAttention):
    """GLA-S6 (our definition): GLA heads with S6's featurisation and a normalisation factor.

    dt_t = softplus(w_h . h_t + b_h) per head, A_t = exp(dt_t A_h) with A_h = -exp(A_log_h) per
    key channel (S4D-real init), B_t = dt_t k_t (S6's zero-order-hold input scale),
    C_t = alpha q_t with alpha = ModelConfig.gla_s6_alpha (default 1/sqrt(N), as LA/GLA's
    query scale; S6 itself has alpha = 1, which lets C_t . x_t grow with N).
    """

    kind = "GLA-S6"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        h, n = config.n_heads, config.state_size
        self.alpha = config.gla_s6_alpha if config.gla_s6_alpha is not None else n**-0.5
        self.dt = nn.Linear(config.d_model, h, bias=False)
        self.dt_bias = no_weight_decay(
            nn.Parameter(inverse_softplus_dt(h, config.dt_min, config.dt_max))
        )
        self.A_log = no_weight_decay(nn.Parameter(s4d_real_log_a(h, n)))

    def step(self, h: Tensor) -> Tensor:
        """dt_t: (b, H, L, 1)."""
        return F.softplus(self.dt(h) + self.dt_bias).transpose(1, 2)[..., None]

    def log_decay(self, h: Tensor) -> Tensor:
        return self.step(h) * -torch.exp(self.A_log)[None, :, None, :]

    def input_output(self, h: Tensor) -> tuple[Tensor, Tensor]:
        q, k = self.qk(h).chunk(2, dim=-1)
        B = self.step(h) * split_heads(k, self.n_heads)
        return B, self.alpha * split_heads(q, self.n_heads)


class S6(nn.Module):
    """Mamba's selective SSM block (expand 1): every one of the d_model channels c is an SSM.

    (u, z) = in_proj(x); u = silu(conv(u)); dt = softplus(W_dt (W_r u) + b) (b, L, d);
    B(u), C(u) = W_B u, W_C u (b, L, N); per channel c: A_t = exp(dt_t^c A^c),
    B_t = dt_t^c B(u_t), C_t = C(u_t), A^c = -exp(A_log^c) (S4D-real init);
    y = scan + D u, gated by silu(z), then out_proj.
    """

    kind = "S6"

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, n = config.d_model, config.state_size
        self.state_size, self.dt_rank = n, math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * d)
        self.conv = ShortConv(d, config.conv_size)
        self.x_proj = nn.Linear(d, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d, bias=False)
        self.dt_bias = no_weight_decay(
            nn.Parameter(inverse_softplus_dt(d, config.dt_min, config.dt_max))
        )
        self.A_log = no_weight_decay(nn.Parameter(s4d_real_log_a(d, n)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(d)))
        self.out = nn.Linear(d, d)

    def _u(self, x: Tensor) -> Tensor:
        """The featurised input u: (b, L, d)."""
        return F.silu(self.conv(self.in_proj(x).chunk(2, dim=-1)[0]))

    def realisation(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, d, L, N) (channels as heads)."""
        u = self._u(x)
        r, B_u, C_u = self.x_proj(u).split([self.dt_rank, self.state_size, self.state_size], -1)
        dt = F.softplus(self.dt_proj(r) + self.dt_bias).transpose(1, 2)[..., None]  # (b, d, L, 1)
        log_a = dt * -torch.exp(self.A_log)[None, :, None, :]
        return log_a, dt * B_u[:, None], C_u[:, None].expand_as(log_a)

    def value_stream(self, x: Tensor) -> Tensor:
        """u: (b, d, L, 1) (each channel its own "head" with P = 1)."""
        return self._u(x).transpose(1, 2)[..., None]

    def core(self, x: Tensor) -> Tensor:
        """scan(A, B, C, u) + D u: (b, d, L, 1), before the gate and output projection."""
        log_a, B, C = self.realisation(x)
        u = self.value_stream(x)
        return scan(torch.exp(log_a), B, C, u) + self.D[:, None, None] * u

    def forward(self, x: Tensor) -> Tensor:
        y = self.core(x)[..., 0].transpose(1, 2)  # (b, L, d)
        return self.out(y * F.silu(self.in_proj(x).chunk(2, dim=-1)[1]))

    def transitions(self, x: Tensor) -> Tensor:
        """A_t: (b, d, L, N)."""
        return torch.exp(self.realisation(x)[0])

    def operator(self, x: Tensor, layer: int) -> LayerOperator:
        """A, B, C: (b, d, L, N) and the skip D: (d,) for the mixer input x: (b, L, d_model)."""
        log_a, B, C = self.realisation(x)
        tensors = {"A": torch.exp(log_a), "B": B, "C": C, "D": self.D.detach().clone()}
        meta = {
            "mixer": self.kind,
            "n_heads": len(self.D),
            "length": x.shape[1],
            "d_state": self.state_size,
        }
        return LayerOperator(layer, "ssm", tensors, meta)


def make_mixer(kind: str, config: ModelConfig) -> nn.Module:
    """The mixer module named `kind` (one of MIXERS)."""
    if kind == "SA":
        return Attention(config)
    if kind == "SWA":
        return Attention(config, window=config.window)
    if kind == "LA":
        return LinearAttention(config)
    if kind == "WLA":
        return WeightedLinearAttention(config)
    if kind == "GLA":
        return GatedLinearAttention(config)
    if kind == "S6":
        return S6(config)
    if kind == "GLA-S6":
        return GLAS6(config)
    raise ValueError(f"unknown mixer {kind!r}; known: {MIXERS}")


# ----------------------------------------------------------------------------------------------
# The model


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)) (no MLP sublayer when mlp_ratio == 0)."""

    def __init__(self, kind: str, config: ModelConfig):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(config.d_model)
        self.mixer = make_mixer(kind, config)
        self.norm2 = nn.LayerNorm(config.d_model) if config.mlp_ratio > 0 else None
        self.mlp = MLP(config) if config.mlp_ratio > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (b, L, d) -> (block output, mixer input norm1(x)), both (b, L, d)."""
        mixer_input = self.norm1(x)
        x = x + self.mixer(mixer_input)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, mixer_input


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(kind, config) for kind in config.layer_kinds())
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied, as nanoGPT
        self.apply(_init_weights)

    def hidden_with_mixer_inputs(self, input_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        """input_ids: (b, L) -> the normalised last hidden state (b, L, d_model), which the
        head maps to logits, and each layer's mixer input (b, L, d_model)."""
        x = self.embedding(input_ids)
        mixer_inputs = []
        for block in self.blocks:
            x, mixer_input = block(x)
            mixer_inputs.append(mixer_input)
        return self.norm(x), mixer_inputs

    def forward_with_mixer_inputs(self, input_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        """input_ids: (b, L) -> logits (b, L, V) and each layer's mixer input (b, L, d_model)."""
        hidden, mixer_inputs = self.hidden_with_mixer_inputs(input_ids)
        return self.head(hidden), mixer_inputs

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids: (b, L) -> logits (b, L, V)."""
        return self.forward_with_mixer_inputs(input_ids)[0]

    @torch.no_grad()
    def operators(self, input_ids: Tensor) -> list[LayerOperator]:
        """Every layer's operator (module docstring) on input_ids (b, L), from one forward,
        without gradients (for the ESS; the regulariser uses `transitions` instead)."""
        _, mixer_inputs = self.forward_with_mixer_inputs(input_ids)
        return [
            block.mixer.operator(x, layer)
            for layer, (block, x) in enumerate(zip(self.blocks, mixer_inputs, strict=True))
        ]


def _init_weights(module: nn.Module) -> None:
    """nanoGPT's initialisation: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


# ----------------------------------------------------------------------------------------------
# ESS-informed regulariser (docs/method.md, E4)


def transition_penalty(
    model: LanguageModel, mixer_inputs: list[Tensor], layers: list[int] | None = None
) -> Tensor:
    """sum over layers l of ||A^l - I||_F / sqrt(#entries of A^l)  (a scalar).

    A^l: the diagonal state transitions (b, H, L, N) of layer l on its mixer input, so the
    Frobenius norm runs over batch, heads, positions and state channels and the division by
    sqrt(b H L N) makes each layer's term the root-mean-square of (a - 1): independent of batch
    size, length and state size. layers=None takes every layer with a state-space realisation;
    naming an attention layer is an error.
    """
    blocks = model.blocks
    if layers is None:
        layers = [i for i, b in enumerate(blocks) if b.kind not in ("SA", "SWA")]
    total = mixer_inputs[0].new_zeros(())
    for i in layers:
        if not 0 <= i < len(blocks):
            raise ValueError(f"regulariser layer {i} out of range for {len(blocks)} layers")
        A = blocks[i].mixer.transitions(mixer_inputs[i])
        if A is None:
            raise ValueError(f"regulariser layer {i} is {blocks[i].kind}: it has no transitions A")
        total = total + torch.linalg.vector_norm(A - 1.0) / math.sqrt(A.numel())
    return total


def state_transition_regulariser(
    model: LanguageModel, input_ids: Tensor, layers: list[int] | None = None
) -> Tensor:
    """The E4 penalty (see `transition_penalty`) on input_ids: (b, L), with its own forward."""
    return transition_penalty(model, model.forward_with_mixer_inputs(input_ids)[1], layers)
