"""The sequence mixers of ess.paper.training.models.LanguageModel; each exposes its operator
(docs/method.md §1.3).

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ess.kernels import attention_matrix, scan, scan_chunked, scan_from
from ess.layers import LayerOperator
from ess.paper.training import registry
from ess.paper.training.model_config import ModelConfig

# S6 builds A_t, B_t, C_t of shape (b, d_model, L, N) and its scan keeps a state per step for
# the backward: memory b d L N several times over. Above this many elements per such tensor
# (64 MB in float32) it scans in chunks of S6_SCAN_CHUNK steps, each recomputed in the backward
# (`S6.core_chunked`), so that memory grows as b d N (L / chunk + chunk) instead.
S6_FULL_SCAN_ELEMENTS = 2**24
S6_SCAN_CHUNK = 32


def _layer_operator(layer: int, mixer: str, tensors: dict, size: dict) -> LayerOperator:
    """A mixer's LayerOperator from its tensors, T (attention) or A, B, C (b, H, L, ...):
    meta is mixer, n_heads and length (from the tensors' shape), then `size` (window or
    d_state), in the key order that E6's operator files were written with."""
    kind = "attention" if "T" in tensors else "ssm"
    _, n_heads, length = tensors["T" if kind == "attention" else "A"].shape[:3]
    meta = {"mixer": mixer, "n_heads": n_heads, "length": length, **size}
    return LayerOperator(layer, kind, tensors, meta)


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
        T = self.attention_matrix(q, k)
        return _layer_operator(layer, self.kind, {"T": T}, {"window": self.window})

    def transitions(self, x: Tensor) -> None:
        """Attention has no state-space realisation of fixed size: no transitions."""
        return None


class SlidingWindowAttention(Attention):
    """Attention over the last config.window positions (SWA)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, window=config.window)


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

    def _realisation(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, H, L, N) from the convolved input h: (b, L, d_model)."""
        B, C = self.input_output(h)
        return self.log_decay(h), B, C

    def _values(self, h: Tensor) -> Tensor:
        """u: (b, H, L, P) from the convolved input h."""
        return split_heads(self.v(h), self.n_heads)

    def realisation(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, H, L, N) for the mixer input x: (b, L, d_model)."""
        return self._realisation(self.conv(x))

    def value_stream(self, x: Tensor) -> Tensor:
        """u: (b, H, L, P), P = d_model / H."""
        return self._values(self.conv(x))

    def core(self, x: Tensor) -> Tensor:
        """y = T u: (b, H, L, P), the output before the output projection."""
        h = self.conv(x)  # once: both the realisation and the values read it
        return scan_chunked(*self._realisation(h), self._values(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(merge_heads(self.head_norm(self.core(x))))

    def transitions(self, x: Tensor) -> Tensor:
        """A_t: (b, H, L, N)."""
        return torch.exp(self.log_decay(self.conv(x)))

    def operator(self, x: Tensor, layer: int) -> LayerOperator:
        """A, B, C: (b, H, L, N) for the mixer input x: (b, L, d_model)."""
        log_a, B, C = self.realisation(x)
        tensors = {"A": torch.exp(log_a), "B": B, "C": C}
        return _layer_operator(layer, self.kind, tensors, {"d_state": self.state_size})


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

    def _stream_and_gate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The featurised input u and the gate's input z: (b, L, d) each, one projection."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        return F.silu(self.conv(u)), z

    def _u(self, x: Tensor) -> Tensor:
        """The featurised input u: (b, L, d)."""
        return self._stream_and_gate(x)[0]

    def _realisation(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, d, L, N) from the featurised input u: (b, L, d)."""
        r, B_u, C_u = self.x_proj(u).split([self.dt_rank, self.state_size, self.state_size], -1)
        dt = F.softplus(self.dt_proj(r) + self.dt_bias).transpose(1, 2)[..., None]  # (b, d, L, 1)
        log_a = dt * -torch.exp(self.A_log)[None, :, None, :]
        return log_a, dt * B_u[:, None], C_u[:, None].expand_as(log_a)

    def _values(self, u: Tensor) -> Tensor:
        """u: (b, L, d) -> (b, d, L, 1): each channel its own "head" with P = 1."""
        return u.transpose(1, 2)[..., None]

    def _core(self, u: Tensor) -> Tensor:
        """scan(A, B, C, u) + D u: (b, d, L, 1) from the featurised input u: (b, L, d), by
        `core_full`, or by `core_chunked` when (b, d, L, N) exceeds S6_FULL_SCAN_ELEMENTS."""
        b, length, d = u.shape
        if b * d * length * self.state_size > S6_FULL_SCAN_ELEMENTS:
            return self.core_chunked(u)
        return self.core_full(u)

    def core_full(self, u: Tensor) -> Tensor:
        """`_core` with A, B, C (b, d, L, N) built whole and one scan."""
        log_a, B, C = self._realisation(u)
        values = self._values(u)
        return scan(torch.exp(log_a), B, C, values) + self.D[:, None, None] * values

    def core_chunked(self, u: Tensor, chunk: int = S6_SCAN_CHUNK) -> Tensor:
        """`_core` in chunks of `chunk` steps: each chunk builds its own A, B, C from dt,
        B(u), C(u) (b, d, chunk, N), scans from the state the previous chunk left, and is
        recomputed in the backward (activation checkpointing), so that only the states between
        chunks (b, d, N) and one chunk's tensors are held. Same arithmetic as `core_full`."""
        r, B_u, C_u = self.x_proj(u).split([self.dt_rank, self.state_size, self.state_size], -1)
        dt = F.softplus(self.dt_proj(r) + self.dt_bias).transpose(1, 2)[..., None]  # (b, d, L, 1)
        A = -torch.exp(self.A_log)  # (d, N)
        values = self._values(u)
        state = values.new_zeros(*values.shape[:2], self.state_size, 1)  # (b, d, N, 1)
        ys = []
        for start in range(0, u.shape[1], chunk):
            steps = slice(start, start + chunk)
            y, state = checkpoint(
                _selective_scan_chunk,
                dt[:, :, steps],
                A,
                B_u[:, steps],
                C_u[:, steps],
                values[:, :, steps],
                state,
                use_reentrant=False,
            )
            ys.append(y)
        return torch.cat(ys, dim=2) + self.D[:, None, None] * values

    def realisation(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log A, B, C: (b, d, L, N) (channels as heads)."""
        return self._realisation(self._u(x))

    def value_stream(self, x: Tensor) -> Tensor:
        """u: (b, d, L, 1) (each channel its own "head" with P = 1)."""
        return self._values(self._u(x))

    def core(self, x: Tensor) -> Tensor:
        """scan(A, B, C, u) + D u: (b, d, L, 1), before the gate and output projection."""
        return self._core(self._u(x))

    def forward(self, x: Tensor) -> Tensor:
        u, z = self._stream_and_gate(x)
        y = self._core(u)[..., 0].transpose(1, 2)  # (b, L, d)
        return self.out(y * F.silu(z))

    def transitions(self, x: Tensor) -> Tensor:
        """A_t: (b, d, L, N)."""
        return torch.exp(self.realisation(x)[0])

    def operator(self, x: Tensor, layer: int) -> LayerOperator:
        """A, B, C: (b, d, L, N) and the skip D: (d,) for the mixer input x: (b, L, d_model)."""
        log_a, B, C = self.realisation(x)
        tensors = {"A": torch.exp(log_a), "B": B, "C": C, "D": self.D.detach().clone()}
        return _layer_operator(layer, self.kind, tensors, {"d_state": self.state_size})


def _selective_scan_chunk(
    dt: Tensor, A: Tensor, B_u: Tensor, C_u: Tensor, values: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """S6's scan over one chunk of l steps from `state`: dt (b, d, l, 1), A (d, N), B_u and
    C_u (b, l, N), values (b, d, l, 1), state (b, d, N, 1) -> (y (b, d, l, 1), last state)."""
    log_a = dt * A[None, :, None, :]  # (b, d, l, N)
    C = C_u[:, None].expand_as(log_a)
    return scan_from(torch.exp(log_a), dt * B_u[:, None], C, values, state)


def make_mixer(kind: str, config: ModelConfig) -> nn.Module:
    """The mixer module named `kind` (ess.paper.training.registry.MIXER_NAMES)."""
    return globals()[registry.mixer(kind).module](config)
