"""The computations every operator shares (docs/method.md §1.1), written once.

A diagonal recurrence, per head or channel, t = 0 .. L-1 and x_{-1} = 0:

    x_t = A_t x_{t-1} + B_t u_t^T,     y_t = C_t^T x_t
    T[i, j] = C_i . (prod_{t=j+1..i} A_t) B_j   (j <= i),   0 above the diagonal

- `segment_sum`: the log decay products sum_{t=j+1..i} log A_t;
- `operator_from_log_decay`: T from (log A, B, C), the closed form, vectorised;
- `scan`: the recurrence step by step (diagonal or dense A), the slow, obvious reference;
  `scan_from` the same from a given state (S6's chunked, recomputed scan resumes with it);
- `materialise`: T from (A, B, C) by its definition: the scan of a unit impulse at every step;
  `materialise_by_rows` the same for a diagonal A, one row of T per step, in O(N L) memory;
- `scan_chunked`: the recurrence in chunks (GLA's chunkwise form), fast for training;
- `attention_matrix`: softmax attention's T from its logits, causal (and windowed).

ess.operators (the reference mixers), ess.paper.training.models (the trained mixers) and ess.layers
(captured layers) all call these. ess.paper.training.models trains through `scan`, `scan_chunked`
and `attention_matrix`: their arithmetic, and its order, is what trained checkpoints were computed
with, so change it only knowing that every trained model and table downstream changes too.
No input checks here: callers validate.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(log_a: Tensor) -> Tensor:
    """S[..., i, j, n] = sum_{t=j+1..i} log_a[..., t, n] for j <= i, -inf for j > i.

    log_a: (..., L, N) -> (..., L, L, N). Summed directly (not as a difference of cumulative
    sums) so that long products of small decays lose no precision (as ssd_minimal's segsum);
    a log_a of -inf (an exact zero decay) gives -inf wherever it enters the product.
    """
    length = log_a.shape[-2]
    x = log_a[..., :, None, :].expand(*log_a.shape[:-2], length, length, log_a.shape[-1])
    strictly_lower = torch.tril(
        torch.ones(length, length, dtype=torch.bool, device=log_a.device), -1
    )
    x = x.masked_fill(~strictly_lower[:, :, None], 0.0)
    s = torch.cumsum(x, dim=-3)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=log_a.device))
    return s.masked_fill(~causal[:, :, None], -math.inf)


def operator_from_log_decay(log_a: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """T[..., i, j] = C_i . exp(sum_{t=j+1..i} log_a_t) B_j for j <= i, 0 above the diagonal.

    log_a = log A, B, C: (..., L, N) -> T: (..., L, L). Builds an (..., L, L, N) intermediate.
    """
    return torch.einsum("...in,...ijn,...jn->...ij", C, torch.exp(segment_sum(log_a)), B)


def scan(A: Tensor, B: Tensor, C: Tensor, u: Tensor) -> Tensor:
    """The recurrence step by step: x_t = A_t x_{t-1} + B_t u_t^T, y_t = C_t^T x_t, x_{-1} = 0.

    A: (..., L, N) diagonal, or (..., L, N, N) dense (one more dim than B; use size-1 dims to
    broadcast); B, C: (..., L, N); u: (..., L, P) -> y: (..., L, P). The state x_t is
    (..., N, P): each of the P value channels has its own N-dimensional state driven by the
    shared (A, B, C).
    """
    return scan_from(A, B, C, u, None)[0]


def scan_from(
    A: Tensor, B: Tensor, C: Tensor, u: Tensor, state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """`scan` from the state x_{-1} = state (..., N, P) (None = 0): (y (..., L, P), x_{L-1})."""
    dense = A.ndim == B.ndim + 1
    Bu = (B[..., :, None] * u[..., None, :]).unbind(-3)  # L x (..., N, P)
    # unbind: one backward copy, not one per step; a diagonal A_t becomes a column (..., N, 1)
    A = A.unbind(-3) if dense else A[..., None].unbind(-3)
    if state is None:
        state = torch.zeros_like(Bu[0])
    states = []
    for A_t, Bu_t in zip(A, Bu, strict=True):
        state = Bu_t + (A_t @ state if dense else A_t * state)
        states.append(state)
    return (C[..., None] * torch.stack(states, dim=-3)).sum(-2), state


def materialise(A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """T of a realisation by its definition: column j of T is the output for a unit input at
    step j, so T = scan(A, B, C, I_L). Exact zeros stay zeros (no logarithms).

    A: (..., L, N) diagonal or (..., L, N, N) dense; B, C: (..., L, N) -> T: (..., L, L).
    """
    identity = torch.eye(B.shape[-2], dtype=B.dtype, device=B.device)
    return scan(A, B, C, identity)


def materialise_by_rows(A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """`materialise` for a diagonal A, holding one state instead of all L: the impulse
    responses X_i = A_i X_{i-1} + B_i e_i^T (..., N, L) and row i of T is C_i^T X_i.

    A, B, C: (..., L, N) -> T: (..., L, L), in (..., N, L) + (..., L, L) memory where
    `materialise` builds (..., L, N, L).
    """
    length = B.shape[-2]
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], C.shape[:-2])
    state = B.new_zeros(*batch, B.shape[-1], length)
    T = B.new_zeros(*batch, length, length)
    for i in range(length):
        state = A[..., i, :, None] * state
        state[..., i] = state[..., i] + B[..., i, :]
        T[..., i, :] = (C[..., i, :, None] * state).sum(-2)
    return T


# Largest |log prod a_t| inside one chunk for which the factorised intra-chunk form is used:
# exp(-b_j) stays below exp(60) ~ 1e26 and exp(b_i) above 1e-26, far from float32's limits.
FACTORISED_LOG_DECAY_LIMIT = 60.0


def intra_chunk_operator(log_a: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """T inside each chunk: (..., c, l, N) each -> (..., c, l, l), 0 above the diagonal.

    With b_i = sum_{t<=i} log a_t (cumulative log decay from the chunk's start),
    prod_{t=j+1..i} a_t = exp(b_i - b_j), so T = tril((C * exp(b)) (B * exp(-b))^T): one small
    matmul instead of the (l, l, N) tensor of `operator_from_log_decay`. The factors stay
    finite while |b| <= FACTORISED_LOG_DECAY_LIMIT; stronger decays (a long product
    underflows) fall back to the exact segment sum.
    """
    b = torch.cumsum(log_a, dim=-2)
    if b.detach().min() < -FACTORISED_LOG_DECAY_LIMIT:
        return operator_from_log_decay(log_a, B, C)
    return torch.tril((C * torch.exp(b)) @ (B * torch.exp(-b)).transpose(-1, -2))


def scan_chunked(log_a: Tensor, B: Tensor, C: Tensor, u: Tensor, chunk: int = 16) -> Tensor:
    """The scan of (exp(log_a), B, C) on u in chunks of `chunk` steps (GLA's chunkwise form).

    log_a, B, C: (..., L, N); u: (..., L, P) -> y: (..., L, P). Inside a chunk, y = T_chunk u
    (`intra_chunk_operator`); across chunks the state S (..., N, P) is carried by a short loop.
    Every exponent of the inter-chunk terms is a sum of log decays, hence <= 0.
    """
    length = u.shape[-2]
    pad = (-length) % chunk
    if pad:
        log_a, B, C, u = (F.pad(z, (0, 0, 0, pad)) for z in (log_a, B, C, u))
    batch = torch.broadcast_shapes(log_a.shape[:-2], B.shape[:-2], C.shape[:-2], u.shape[:-2])
    n, p, n_chunks = B.shape[-1], u.shape[-1], (length + pad) // chunk
    log_a, B, C = (
        z.expand(*batch, length + pad, n).unflatten(-2, (n_chunks, chunk)) for z in (log_a, B, C)
    )
    u = u.expand(*batch, length + pad, p).unflatten(-2, (n_chunks, chunk))  # (..., c, l, P)

    y_intra = intra_chunk_operator(log_a, B, C) @ u  # diagonal blocks: (..., c, l, P)
    decay_in = torch.cumsum(log_a, dim=-2)  # log prod_{t<=i} a_t inside the chunk: (..., c, l, N)
    decay_out = decay_in[..., -1:, :] - decay_in  # log prod_{t>i} a_t to the chunk's end
    chunk_states = (B * torch.exp(decay_out)).transpose(-1, -2) @ u  # (..., c, N, P)
    chunk_decay = torch.exp(decay_in[..., -1, :])  # (..., c, N)

    state = u.new_zeros(*batch, n, p)
    states_in = []
    for decay_c, state_c in zip(chunk_decay.unbind(-2), chunk_states.unbind(-3), strict=True):
        states_in.append(state)
        state = decay_c[..., None] * state + state_c
    states_in = torch.stack(states_in, dim=-3)  # state entering each chunk: (..., c, N, P)
    y_inter = (C * torch.exp(decay_in)) @ states_in  # (..., c, l, P)
    return (y_intra + y_inter).flatten(-3, -2)[..., :length, :]


def attention_matrix(
    scores: Tensor, window: int | None = None, sinks: Tensor | None = None
) -> Tensor:
    """Softmax attention's T: T[i, j] = softmax_j(scores[i, j]) over the keys query i sees,
    0 <= i - j (< window), and 0 elsewhere.

    scores: (..., L, L) logits, already scaled (and soft-capped): that is the caller's
    featurisation. sinks: (H,) for scores (..., H, L, L), one extra logit per head that takes
    probability mass but no column (attention sinks, gpt-oss style), or (H, L), one per head and
    query (inkling2's input-dependent sinks); rows then sum to < 1.
    Returns T: (..., L, L) in the scores' dtype.
    """
    i = torch.arange(scores.shape[-1], device=scores.device)
    visible = i[:, None] >= i[None, :]
    if window is not None:
        visible = visible & (i[:, None] - i[None, :] < window)
    scores = scores.masked_fill(~visible, -math.inf)
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    per_row = sinks.to(scores.dtype)[..., None]  # (H, 1) or, one per query, (H, L, 1)
    sink = (per_row if sinks.dim() > 1 else per_row[:, None]).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
