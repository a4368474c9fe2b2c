"""The mixer zoo of docs/method.md §1.2 as causal operators: per channel, y = T u.

Each mixer gets two functions:

- `<mixer>(...) -> Operator`: the materialised causal operator T, built from the closed form in
  the table of docs/method.md §1.2; its state-space realisation (A, B, C) where one of fixed size
  exists; its TSS.
- `<mixer>_forward(...)`: the mixer's own computation (attention kernel, recurrent scan, direct
  convolution), the slow, obvious reference that `T` must reproduce.

Realisation convention (the one `ess.effective_state_size_ssm` uses), t = 0 .. L-1 and
x_{-1} = 0:

    x_t = A_t x_{t-1} + B_t u_t,    y_t = C_t . x_t

so T[t, j] = C_t^T A_t A_{t-1} ... A_{j+1} B_j for j < t and T[t, t] = C_t . B_t. A is
(..., L, N) for diagonal transitions or (..., L, N, N) for dense ones (the same number of dims as
B, or one more); B and C are (..., L, N). `ess.kernels.materialise` turns a realisation into T,
and `ess.kernels.scan` runs it: the recurrent mixers' forward computations are that scan.

Leading dims (...) are batch dims (batch, head, channel) and broadcast. Everything runs in the
inputs' dtype; use float64 for reference comparisons. The closed forms build (..., L, L, d)
intermediates (d the key or state width): they are references for moderate L. For long sequences
hand the realisation to `effective_state_size_ssm`, which never materialises T.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ess.kernels import attention_matrix, operator_from_log_decay, scan, segment_sum

FeatureMap = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Operator:
    """A reference mixer's causal operator: T and its realisation side by side, so that each can
    be checked against the other and against the mixer's forward computation.

    T: (..., L, L) lower-triangular, y = T u per channel.
    realisation: (A, B, C) in the module's convention, or None when no fixed-size state exists.
    tss: the state size per channel; an int for fixed-size states, else a (L-1,) int64 tensor
        with the state size at each split position i = 1 .. L-1 (the KV cache of attention):
        the convention of docs/method.md §1.4, which ess.layers.LayerOperator.tss follows too.

    A model layer's operator is an ess.layers.LayerOperator instead: one stored form (T, a
    realisation, or the factors a transformers model computes), its layer index and meta.
    """

    T: Tensor
    realisation: tuple[Tensor, Tensor, Tensor] | None
    tss: int | Tensor


# --- checks -------------------------------------------------------------------------------------


def _check_shape(name: str, x: Tensor, dims: Sequence[tuple[str, int | None]]) -> tuple[int, ...]:
    """Check that `x` is (..., *dims), each size positive and equal to the given one where one is
    given; return the sizes of those trailing dims."""
    layout = "(..., " + ", ".join(dim for dim, _ in dims) + ")"
    if x.ndim < len(dims):
        raise ValueError(f"{name} must have shape {layout}; got {tuple(x.shape)}")
    sizes = tuple(x.shape[x.ndim - len(dims) :])
    for (dim, want), got in zip(dims, sizes, strict=True):
        if got < 1:
            raise ValueError(
                f"{name} must have shape {layout} with {dim} >= 1; got {tuple(x.shape)}"
            )
        if want is not None and got != want:
            raise ValueError(
                f"{name} must have shape {layout} with {dim}={want}; got {tuple(x.shape)}"
            )
    return sizes


def _check_exact_shape(name: str, x: Tensor, shape: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}; got {tuple(x.shape)}")


def _batch_shape(*named: tuple[str, Tensor, int]) -> torch.Size:
    """Broadcast the batch dims of (name, tensor, number of trailing core dims) triples."""
    try:
        return torch.broadcast_shapes(*(x.shape[: x.ndim - core] for _, x, core in named))
    except RuntimeError as err:
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x, _ in named)
        raise ValueError(f"the batch dims (...) must broadcast; got {shapes}") from err


# --- shared pieces ------------------------------------------------------------------------------


def _toeplitz(h: Tensor, length: int) -> Tensor:
    """h: (..., k) -> (..., L, L) with [i, j] = h[i - j] for 0 <= i - j < k, else 0."""
    lag = torch.arange(length, device=h.device)[:, None] - torch.arange(length, device=h.device)
    taps = F.pad(h, (0, max(length - h.shape[-1], 0)))[..., :length]
    return taps[..., lag.clamp(min=0)].tril()


# --- attention ----------------------------------------------------------------------------------


def _attention_mask(length: int, window: int | None, device: torch.device) -> Tensor:
    """(L, L) bool, True where key j is visible to query i: 0 <= i - j (< window). The forward's
    own mask, for scaled_dot_product_attention: independent of `attention_matrix`'s."""
    lag = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)
    return (lag >= 0) & (lag < window) if window is not None else lag >= 0


def _check_attention(q: Tensor, k: Tensor, window: int | None) -> tuple[int, int]:
    L, d = _check_shape("q", q, [("L", None), ("d", None)])
    _check_shape("k", k, [("L", L), ("d", d)])
    _batch_shape(("q", q, 2), ("k", k, 2))
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"window must be a positive int or None; got {window!r}")
    return L, d


def softmax_attention(
    q: Tensor, k: Tensor, window: int | None = None, scale: float | None = None
) -> Operator:
    """Softmax attention (SA), or sliding-window attention (SWA) when `window` is given.

    T[i, j] = softmax_j(scale * q_i . k_j) over the visible keys j: 0 <= i - j (< window for SWA).
    All value channels of a head share this T.

    q, k: (..., L, d); scale defaults to 1/sqrt(d).
    Returns T: (..., L, L); no realisation (the KV cache grows); tss: (L-1,) int64, the KV-cache
    size at split i = 1 .. L-1: i (SA) or min(i, window) (SWA).
    """
    L, d = _check_attention(q, k, window)
    scale = d**-0.5 if scale is None else scale
    T = attention_matrix(scale * torch.einsum("...id,...jd->...ij", q, k), window)
    splits = torch.arange(1, L)
    return Operator(T, None, splits if window is None else splits.clamp(max=window))


def softmax_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, window: int | None = None, scale: float | None = None
) -> Tensor:
    """Softmax attention applied to values with `scaled_dot_product_attention` and a causal
    (sliding-window when `window` is given) mask.

    q, k: (..., L, d), v: (..., L, d_v) -> (..., L, d_v).
    """
    L, _ = _check_attention(q, k, window)
    _check_shape("v", v, [("L", L), ("d_v", None)])
    mask = _attention_mask(L, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# --- linear attention family --------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1, the positive feature map of Katharopoulos et al. (2020)."""
    return F.elu(x) + 1


def _features(q: Tensor, k: Tensor, feature_map: FeatureMap | None) -> tuple[Tensor, Tensor]:
    L, d = _check_shape("q", q, [("L", None), ("d", None)])
    _check_shape("k", k, [("L", L), ("d", d)])
    if feature_map is None:
        return q, k
    fq, fk = feature_map(q), feature_map(k)
    _, d_k = _check_shape("feature_map(q)", fq, [("L", L), ("d_k", None)])
    _check_shape("feature_map(k)", fk, [("L", L), ("d_k", d_k)])
    return fq, fk


def linear_attention(q: Tensor, k: Tensor, feature_map: FeatureMap | None = None) -> Operator:
    """Linear attention (LA): T[i, j] = phi(q_i) . phi(k_j) for j <= i (no normalisation).

    q, k: (..., L, d); feature_map phi: (..., L, d) -> (..., L, d_k), the identity if None
    (`elu_feature_map` is the classic choice).
    Returns T: (..., L, L); realisation A_t = I (diagonal ones), B_t = phi(k_t), C_t = phi(q_t),
    each (..., L, d_k); tss = d_k.
    """
    fq, fk = _features(q, k, feature_map)
    batch = _batch_shape(("feature_map(q)", fq, 2), ("feature_map(k)", fk, 2))
    T = torch.einsum("...in,...jn->...ij", fq, fk).tril()
    A = fq.new_ones(*batch, *fq.shape[-2:])
    realisation = (A, fk.expand(A.shape), fq.expand(A.shape))
    return Operator(T, realisation, fq.shape[-1])


def linear_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, feature_map: FeatureMap | None = None
) -> Tensor:
    """Recurrent LA: S_t = S_{t-1} + v_t phi(k_t)^T, o_t = S_t phi(q_t), i.e. the scan of
    x_t = S_t^T with A_t = 1, B_t = phi(k_t), C_t = phi(q_t).

    q, k: (..., L, d), v: (..., L, d_v) -> (..., L, d_v).
    """
    fq, fk = _features(q, k, feature_map)
    _check_shape("v", v, [("L", q.shape[-2]), ("d_v", None)])
    batch = _batch_shape(("feature_map(q)", fq, 2), ("feature_map(k)", fk, 2))
    shape = (*batch, *fk.shape[-2:])
    return scan(fk.new_ones(shape), fk.expand(shape), fq, v)


def _check_weighted(q: Tensor, k: Tensor, decay: Tensor) -> tuple[int, int]:
    L, d_k = _check_shape("q", q, [("L", None), ("d_k", None)])
    _check_shape("k", k, [("L", L), ("d_k", d_k)])
    _check_shape("decay", decay, [("d_k", d_k)])
    return L, d_k


def weighted_linear_attention(q: Tensor, k: Tensor, decay: Tensor) -> Operator:
    """Weighted linear attention (WLA), a static per-feature decay lambda:
    T[i, j] = q_i^T diag(lambda)^(i-j) k_j for j <= i.

    q, k: (..., L, d_k); decay lambda: (..., d_k), the same at every step.
    Returns T: (..., L, L); realisation A_t = diag(lambda), B_t = k_t, C_t = q_t, each
    (..., L, d_k); tss = d_k.
    """
    L, d_k = _check_weighted(q, k, decay)
    batch = _batch_shape(("q", q, 2), ("k", k, 2), ("decay", decay, 1))
    lag = torch.arange(L, device=q.device)[:, None] - torch.arange(L, device=q.device)
    powers = decay[..., None, None, :] ** lag.clamp(min=0)[..., None]  # (..., L, L, d_k)
    T = torch.einsum("...in,...ijn,...jn->...ij", q, powers, k).tril()
    shape = (*batch, L, d_k)
    realisation = (decay[..., None, :].expand(shape), k.expand(shape), q.expand(shape))
    return Operator(T, realisation, d_k)


def weighted_linear_attention_forward(q: Tensor, k: Tensor, v: Tensor, decay: Tensor) -> Tensor:
    """Recurrent WLA: S_t = S_{t-1} diag(lambda) + v_t k_t^T, o_t = S_t q_t (the scan of
    x_t = S_t^T).

    q, k: (..., L, d_k), v: (..., L, d_v), decay: (..., d_k) -> (..., L, d_v).
    """
    L, d_k = _check_weighted(q, k, decay)
    _check_shape("v", v, [("L", L), ("d_v", None)])
    shape = (*_batch_shape(("q", q, 2), ("k", k, 2), ("decay", decay, 1)), L, d_k)
    return scan(decay[..., None, :].expand(shape), k.expand(shape), q, v)


def _check_gated(q: Tensor, k: Tensor, gates: Tensor) -> tuple[int, int]:
    L, d_k = _check_shape("q", q, [("L", None), ("d_k", None)])
    _check_shape("k", k, [("L", L), ("d_k", d_k)])
    _check_shape("gates", gates, [("L", L), ("d_k", d_k)])
    return L, d_k


def gated_linear_attention(q: Tensor, k: Tensor, gates: Tensor) -> Operator:
    """Gated linear attention (GLA), an input-dependent per-feature decay a_t:
    T[i, j] = q_i^T (prod_{t=j+1..i} diag(a_t)) k_j for j <= i.

    q, k, gates a: (..., L, d_k).
    Returns T: (..., L, L); realisation A_t = diag(a_t), B_t = k_t, C_t = q_t, each
    (..., L, d_k); tss = d_k.
    """
    L, d_k = _check_gated(q, k, gates)
    batch = _batch_shape(("q", q, 2), ("k", k, 2), ("gates", gates, 2))
    shape = (*batch, L, d_k)
    T = operator_from_log_decay(torch.log(gates), k, q)  # a zero gate: log 0 = -inf, exp -> 0
    return Operator(T, (gates.expand(shape), k.expand(shape), q.expand(shape)), d_k)


def gated_linear_attention_forward(q: Tensor, k: Tensor, v: Tensor, gates: Tensor) -> Tensor:
    """Recurrent GLA: S_t = S_{t-1} diag(a_t) + v_t k_t^T, o_t = S_t q_t (the scan of
    x_t = S_t^T).

    q, k, gates: (..., L, d_k), v: (..., L, d_v) -> (..., L, d_v).
    """
    L, d_k = _check_gated(q, k, gates)
    _check_shape("v", v, [("L", L), ("d_v", None)])
    shape = (*_batch_shape(("q", q, 2), ("k", k, 2), ("gates", gates, 2)), L, d_k)
    return scan(gates.expand(shape), k.expand(shape), q, v)


def _check_deltanet(q: Tensor, k: Tensor, beta: Tensor) -> tuple[int, int]:
    L, d_k = _check_shape("q", q, [("L", None), ("d_k", None)])
    _check_shape("k", k, [("L", L), ("d_k", d_k)])
    _check_shape("beta", beta, [("L", L)])
    return L, d_k


def _deltanet_transitions(k: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """A_t = I - b_t k_t k_t^T: (..., L, d_k, d_k) and B_t = b_t k_t: (..., L, d_k)."""
    B = beta[..., None] * k
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    return eye - B[..., :, :, None] * k[..., :, None, :], B


def deltanet(q: Tensor, k: Tensor, beta: Tensor) -> Operator:
    """DeltaNet (beyond the paper): S_t = S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T,
    o_t = S_t q_t.

    Each value channel's row s_t of S evolves as s_t = (I - b_t k_t k_t^T) s_{t-1} + b_t k_t v_t,
    so the realisation is A_t = I - b_t k_t k_t^T (dense), B_t = b_t k_t, C_t = q_t.

    T comes from the pseudo-value (WY) form, not from the recurrence: S_t = sum_{j<=t} w_j k_j^T
    with w_t = b_t (v_t - S_{t-1} k_t), so (I + tril(diag(b) K K^T, -1)) W = diag(b) V and

        T = tril(Q K^T) (I + tril(diag(b) K K^T, -1))^{-1} diag(b).

    q, k: (..., L, d_k) (DeltaNet L2-normalises keys and queries; they are used here as given),
    beta: (..., L).
    Returns T: (..., L, L); realisation A: (..., L, d_k, d_k), B, C: (..., L, d_k); tss = d_k.
    """
    L, d_k = _check_deltanet(q, k, beta)
    batch = _batch_shape(("q", q, 2), ("k", k, 2), ("beta", beta, 1))
    eye_L = torch.eye(L, dtype=k.dtype, device=k.device)
    unit_lower = eye_L + (beta[..., :, None] * (k @ k.transpose(-1, -2))).tril(-1)
    to_pseudo_values = torch.linalg.solve_triangular(
        unit_lower.expand(*batch, L, L),
        torch.diag_embed(beta).expand(*batch, L, L),
        upper=False,
        unitriangular=True,
    )
    T = (q @ k.transpose(-1, -2)).tril() @ to_pseudo_values
    A, B = _deltanet_transitions(k, beta)
    shape = (*batch, L, d_k)
    return Operator(T, (A.expand(*shape, d_k), B.expand(shape), q.expand(shape)), d_k)


def deltanet_forward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """Recurrent DeltaNet: S_t = S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T, o_t = S_t q_t (the
    scan of x_t = S_t^T, whose transition I - b_t k_t k_t^T is symmetric).

    q, k: (..., L, d_k), v: (..., L, d_v), beta: (..., L) -> (..., L, d_v).
    """
    L, d_k = _check_deltanet(q, k, beta)
    _check_shape("v", v, [("L", L), ("d_v", None)])
    shape = (*_batch_shape(("q", q, 2), ("k", k, 2), ("beta", beta, 1)), L, d_k)
    A, B = _deltanet_transitions(k, beta)
    return scan(A.expand(*shape, d_k), B.expand(shape), q, v)


# --- selective state-space models ---------------------------------------------------------------


def _check_selective(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None
) -> tuple[int, int, int]:
    L, channels = _check_shape("dt", dt, [("L", None), ("channels", None)])
    _, N = _check_shape("B", B, [("L", L), ("N", None)])
    _check_shape("C", C, [("L", L), ("N", N)])
    _check_exact_shape("A", A, (channels, N), "(channels, N)")
    if D is not None:
        _check_exact_shape("D", D, (channels,), "(channels,)")
    _batch_shape(("dt", dt, 2), ("B", B, 2), ("C", C, 2))
    return L, channels, N


def _with_skip(realisation: tuple[Tensor, Tensor, Tensor], D: Tensor | None):
    """Append the coordinate (A = 0, B = 1, C = D) that realises the skip D u_t on T's diagonal.

    It holds only the current input (its transition is 0), so it carries nothing across a split:
    the TSS does not count it. realisation: diagonal, each (..., channels, L, N); D: (channels,).
    """
    A, B, C = realisation
    if D is None:
        return realisation
    extra = torch.zeros_like(A[..., :1])
    return (
        torch.cat([A, extra], dim=-1),
        torch.cat([B, extra + 1], dim=-1),
        torch.cat([C, extra + D[:, None, None]], dim=-1),
    )


def _selective_realisation(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """S6's realisation per channel c, from dt (..., L, channels), A (channels, N), B, C
    (..., L, N): log A_t = dt_t^c A^c and B_t = dt_t^c B_t, each (..., channels, L, N), and
    C_t, (..., 1, L, N) (shared by the channels)."""
    log_decay = (dt[..., :, :, None] * A).movedim(-3, -2)
    B_bar = (dt[..., :, :, None] * B[..., :, None, :]).movedim(-3, -2)
    return log_decay, B_bar, C[..., None, :, :]


def selective_ssm(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Operator:
    """Mamba's selective SSM (S6), one operator per channel c:
    T[c, i, j] = C_i^T (prod_{t=j+1..i} exp(dt_t^c A^c)) dt_j^c B_j  (+ D^c on the diagonal).

    dt: (..., L, channels) step sizes (after softplus); A: (channels, N), diagonal state matrices
    (Mamba's -exp(A_log)); B, C: (..., L, N), shared by the channels; D: (channels,) skip or None.
    Returns T: (..., channels, L, L); realisation A_t = exp(dt_t^c A^c), B_t = dt_t^c B_t, C_t,
    each (..., channels, L, N) (N + 1 with D, see `_with_skip`); tss = N.
    """
    L, _, N = _check_selective(dt, A, B, C, D)
    log_decay, B_bar, C_bar = _selective_realisation(dt, A, B, C)
    T = operator_from_log_decay(log_decay, B_bar, C_bar)  # (..., channels, L, L)
    if D is not None:
        T = T + torch.diag_embed(D[:, None].expand(-1, L))
    shape = (*T.shape[:-2], L, N)
    realisation = (torch.exp(log_decay).expand(shape), B_bar.expand(shape), C_bar.expand(shape))
    return Operator(T, _with_skip(realisation, D), N)


def selective_ssm_forward(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> Tensor:
    """Recurrent S6 per channel c: x_t = exp(dt_t^c A^c) x_{t-1} + dt_t^c B_t u_t^c,
    y_t^c = C_t . x_t + D^c u_t^c.

    u, dt: (..., L, channels); A: (channels, N); B, C: (..., L, N); D: (channels,) or None
    -> y: (..., L, channels).
    """
    L, channels, _ = _check_selective(dt, A, B, C, D)
    _check_shape("u", u, [("L", L), ("channels", channels)])
    _batch_shape(("u", u, 2), ("dt", dt, 2), ("B", B, 2), ("C", C, 2))
    log_decay, B_bar, C_bar = _selective_realisation(dt, A, B, C)
    per_channel = u.transpose(-1, -2)[..., None]  # (..., channels, L, 1)
    y = scan(torch.exp(log_decay), B_bar, C_bar, per_channel)[..., 0].transpose(-1, -2)
    return y if D is None else y + D * u


def _check_mamba2(
    dt: Tensor, a: Tensor, B: Tensor, C: Tensor, D: Tensor | None
) -> tuple[int, int, int]:
    L, heads = _check_shape("dt", dt, [("L", None), ("heads", None)])
    _, N = _check_shape("B", B, [("L", L), ("N", None)])
    _check_shape("C", C, [("L", L), ("N", N)])
    _check_exact_shape("a", a, (heads,), "(heads,)")
    if D is not None:
        _check_exact_shape("D", D, (heads,), "(heads,)")
    _batch_shape(("dt", dt, 2), ("B", B, 2), ("C", C, 2))
    return L, heads, N


def _mamba2_realisation(
    dt: Tensor, a: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """SSD's realisation per head h, from dt (..., L, heads), a (heads,), B, C (..., L, N):
    A_t = exp(dt_t^h a_h), (..., heads, L, 1) (a scalar, the same for every state channel),
    B_t = dt_t^h B_t, (..., heads, L, N), and C_t, (..., 1, L, N) (shared by the heads)."""
    A = torch.exp(dt * a).transpose(-1, -2)[..., None]
    B_bar = dt.transpose(-1, -2)[..., None] * B[..., None, :, :]
    return A, B_bar, C[..., None, :, :]


def mamba2_ssm(dt: Tensor, a: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Operator:
    """Mamba2's SSD, one operator per head h (a scalar decay per head):
    T[h, i, j] = (C_i . B_j) exp(sum_{t=j+1..i} dt_t^h a_h) dt_j^h  (+ D_h on the diagonal).

    dt: (..., L, heads) step sizes (after softplus); a: (heads,) negative decay rates (Mamba2's
    -exp(A_log)); B, C: (..., L, N), one group shared by the heads; D: (heads,) skip or None.
    All channels of a head share T[h].
    Returns T: (..., heads, L, L); realisation A_t = exp(dt_t^h a_h) 1_N (diagonal),
    B_t = dt_t^h B_t, C_t, each (..., heads, L, N) (N + 1 with D, see `_with_skip`); tss = N.
    """
    L, _, N = _check_mamba2(dt, a, B, C, D)
    log_decay = (dt * a).transpose(-1, -2)[..., None]  # (..., heads, L, 1): one decay per head
    CB = torch.einsum("...in,...jn->...ij", C, B)[..., None, :, :]  # (..., 1, L, L)
    decay = torch.exp(segment_sum(log_decay))[..., 0]  # (..., heads, L, L)
    T = CB * decay * dt.transpose(-1, -2)[..., None, :]
    if D is not None:
        T = T + torch.diag_embed(D[:, None].expand(-1, L))
    shape = (*T.shape[:-2], L, N)
    realisation = tuple(x.expand(shape) for x in _mamba2_realisation(dt, a, B, C))
    return Operator(T, _with_skip(realisation, D), N)


def mamba2_ssm_forward(
    x: Tensor, dt: Tensor, a: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> Tensor:
    """Recurrent SSD per head h: H_t = exp(dt_t^h a_h) H_{t-1} + dt_t^h x_t^h B_t^T,
    y_t^h = H_t C_t + D_h x_t^h, with a (head_dim, N) state H per head.

    x: (..., L, heads, head_dim); dt: (..., L, heads); a: (heads,); B, C: (..., L, N);
    D: (heads,) or None -> y: (..., L, heads, head_dim).
    """
    L, heads, _ = _check_mamba2(dt, a, B, C, D)
    _check_shape("x", x, [("L", L), ("heads", heads), ("head_dim", None)])
    _batch_shape(("x", x, 3), ("dt", dt, 2), ("B", B, 2), ("C", C, 2))
    y = scan(*_mamba2_realisation(dt, a, B, C), x.movedim(-3, -2)).movedim(-2, -3)
    return y if D is None else y + D[:, None] * x


# --- input-invariant operators ------------------------------------------------------------------


def _check_lti(A: Tensor, B: Tensor, C: Tensor) -> tuple[int, bool]:
    (N,) = _check_shape("B", B, [("N", None)])
    _check_shape("C", C, [("N", N)])
    if A.ndim == B.ndim:
        _check_shape("A (diagonal)", A, [("N", N)])
        dense = False
    elif A.ndim == B.ndim + 1:
        _check_shape("A (dense)", A, [("N", N), ("N", N)])
        dense = True
    else:
        raise ValueError(
            f"A must have shape (..., N) (diagonal) or (..., N, N) (dense), with as many batch "
            f"dims as B {tuple(B.shape)} (use size-1 dims to broadcast); got {tuple(A.shape)}"
        )
    _batch_shape(("A (dense)" if dense else "A (diagonal)", A, 1 + dense), ("B", B, 1), ("C", C, 1))
    return N, dense


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int; got {length!r}")


def _lti_realisation(
    A: Tensor, B: Tensor, C: Tensor, batch: torch.Size, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(A, B, C) repeated at each of the L steps: (*batch, L, N[, N]), (*batch, L, N) twice."""
    dense = A.ndim == B.ndim + 1
    N = B.shape[-1]
    steps = (*batch, length, N)
    A_t = A[..., None, :, :].expand(*steps, N) if dense else A[..., None, :].expand(steps)
    return A_t, B[..., None, :].expand(steps), C[..., None, :].expand(steps)


def lti_ssm(A: Tensor, B: Tensor, C: Tensor, length: int) -> Operator:
    """Linear time-invariant SSM x_t = A x_{t-1} + B u_t, y_t = C . x_t: the Toeplitz operator
    T[i, j] = h[i - j] with impulse response h[m] = C^T A^m B.

    A: (..., N) diagonal or (..., N, N) dense (as many batch dims as B); B, C: (..., N);
    length: L.
    Returns T: (..., L, L); realisation (A, B, C) repeated over the L steps; tss = N (the
    realisation order).
    """
    N, dense = _check_lti(A, B, C)
    _check_length(length)
    impulse = []
    x = B
    for _ in range(length):
        impulse.append((C * x).sum(-1))
        x = (A @ x[..., None])[..., 0] if dense else A * x
    h = torch.stack(torch.broadcast_tensors(*impulse), dim=-1)
    T = _toeplitz(h, length)
    return Operator(T, _lti_realisation(A, B, C, T.shape[:-2], length), N)


def lti_ssm_forward(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Recurrent LTI SSM: x_t = A x_{t-1} + B u_t, y_t = C . x_t.

    u: (..., L); A: (..., N) diagonal or (..., N, N) dense; B, C: (..., N) -> y: (..., L).
    """
    _, dense = _check_lti(A, B, C)
    (L,) = _check_shape("u", u, [("L", None)])
    batch = _batch_shape(("u", u, 1), ("A", A, 1 + dense), ("B", B, 1), ("C", C, 1))
    return scan(*_lti_realisation(A, B, C, batch, L), u[..., None])[..., 0]


def convolution(kernel: Tensor, length: int) -> Operator:
    """Causal (long) convolution y_t = sum_{m<k} h[m] u_{t-m}: the Toeplitz operator
    T[i, j] = h[i - j] for 0 <= i - j < k.

    kernel h: (..., k); length: L.
    Returns T: (..., L, L); realisation: a shift register of order k, x_t = (u_t, u_{t-1}, ...,
    u_{t-k+1}), A_t = the down-shift (dense, nilpotent), B_t = e_0, C_t = h, so
    A: (..., L, k, k), B, C: (..., L, k); tss = k - 1. The convention has no feedthrough, so x_t
    also holds the current input u_t: the state carried from one step to the next is k - 1.
    """
    (k,) = _check_shape("kernel", kernel, [("k", None)])
    _check_length(length)
    batch = kernel.shape[:-1]
    shift = torch.diag_embed(kernel.new_ones(k - 1), offset=-1)  # (k, k): x_t[m] = x_{t-1}[m-1]
    e_0 = torch.eye(k, dtype=kernel.dtype, device=kernel.device)[0]
    realisation = (
        shift.expand(*batch, length, k, k),
        e_0.expand(*batch, length, k),
        kernel[..., None, :].expand(*batch, length, k),
    )
    return Operator(_toeplitz(kernel, length), realisation, k - 1)


def convolution_forward(u: Tensor, kernel: Tensor) -> Tensor:
    """Direct causal convolution y_t = sum_{m<k} h[m] u_{t-m} (zero before t = 0).

    u: (..., L); kernel h: (..., k) -> y: (..., L).
    """
    (k,) = _check_shape("kernel", kernel, [("k", None)])
    _check_shape("u", u, [("L", None)])
    _batch_shape(("u", u, 1), ("kernel", kernel, 1))
    windows = F.pad(u, (k - 1, 0)).unfold(-1, k, 1)  # (..., L, k): u_{t-k+1} .. u_t
    return (windows * kernel.flip(-1)[..., None, :]).sum(-1)
