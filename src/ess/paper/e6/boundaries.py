"""The ESS of an E6 trace around each context delimiter: windows, offsets and drops.

Position conventions. Tokens are 0-based. A split i (1 <= i <= L-1) has past tokens 0..i-1, so
ESS_i is the state "after reading token i-1". For boundary k with p = last token of passage k and
n = first token of passage k+1 (the delimiter occupies p+1 .. n-1):

- before window: the states after reading the last `before` tokens of passage k,
  splits i = p-before+2 .. p+1;
- at the delimiter: the state after reading the delimiter's last token, split i = n;
- after window: the states after reading the first `after` tokens of passage k+1,
  splits i = n+1 .. n+after.

Both windows cover passage tokens only, so they hold the same text in every condition.

Offsets (the boundary-aligned profile, `offset_splits`): offset o < 0 is the state after reading
the |o|-th last token of passage k (split p + 2 + o, so o = -1 is split p + 1), o = 0 the state
after the delimiter's last token (split n), o > 0 the state after the o-th token of passage k+1
(split n + o). An offset counts for a boundary only while its token lies in one of the two
passages around it (`offset_mask`): with short passages the far offsets reach fewer boundaries.

The look-ahead bound. H_i = T[i:, :i] holds every FUTURE row. If no output at or after position r
reads anything before r (the operator fully resets at r), rows r.. of H_i (i < r) are zero and
ESS_i <= rank(T[i:r, :i]) <= r - i: ESS must fall linearly towards a full reset, before it
happens (`reset_bound`). In general ESS_i <= (r - i) + rank(T[r:, :i]), what crosses r.
drop = mean ESS(before) - mean ESS(after) (> 0: ESS falls after the delimiter), each mean over
EVERY split of its window (`trace_positions` evaluates them all), and drop_vs_control = drop -
the same boundary's drop in the control. ESS_i <= min(i, L-i) for any operator: a boundary where
some head is AT that bound at a split of its windows (from the first before split to the last
after split, in either sequence: `bound_flags`) measures the bound rather than the model's
state, so it is flagged `near_end` and summarised apart (`summarise_drops`). The rule reads the
heads themselves, not a fixed distance from the ends.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ess.paper.stats import bootstrap_mean_ci


def as_trace(trace: Any, seq_len: int | None = None, value: str = "ess") -> tuple[pd.Series, int]:
    """(ESS indexed by split position, L) from any of the trace forms `delimiter_drop` takes.

    trace: (L-1,) array or tensor for splits 1..L-1; a Series indexed by split position; or a
    DataFrame with a "position" column and a `value` column (e.g. a strided trace). seq_len: L;
    inferred as len + 1 for an array and as the largest position + 1 otherwise (pass it for a
    trace that leaves out the last splits).
    """
    if isinstance(trace, pd.DataFrame):
        missing = {"position", value} - set(trace.columns)
        if missing:
            raise ValueError(f"trace DataFrame lacks columns {sorted(missing)}: {list(trace)}")
        series = pd.Series(trace[value].to_numpy(float), index=trace["position"].to_numpy(int))
    elif isinstance(trace, pd.Series):
        series = pd.Series(trace.to_numpy(float), index=trace.index.to_numpy(int))
    else:
        # A tensor exists only once torch is imported: look for it there rather than import
        # torch here (the analysis modules and notebooks run without it).
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(trace, torch.Tensor):
            trace = trace.detach().cpu()
        values = np.asarray(trace)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"trace array must have shape (L-1,), got {values.shape}")
        series = pd.Series(values.astype(float), index=np.arange(1, values.size + 1))
    if series.index.has_duplicates:
        raise ValueError("trace has duplicate split positions")
    if series.index.min() < 1:
        raise ValueError(f"split positions start at 1, trace has {series.index.min()}")
    length = int(series.index.max()) + 1 if seq_len is None else int(seq_len)
    if length <= series.index.max():
        raise ValueError(f"seq_len={length} but the trace has split {series.index.max()}")
    return series.sort_index(), length


def window_means(trace: pd.Series, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Mean of the trace over the split positions first[k]..last[k] present in it, per window k
    (NaN where none; NaN values are left out, as pandas' mean does). trace: sorted index."""
    splits, values = trace.index.to_numpy(), trace.to_numpy(float)
    start = np.searchsorted(splits, first, side="left")
    stop = np.searchsorted(splits, last, side="right")
    means = np.full(len(start), np.nan)
    for k, (a, b) in enumerate(zip(start.tolist(), stop.tolist(), strict=True)):
        inside = values[a:b]
        inside = inside[~np.isnan(inside)]
        if inside.size:
            means[k] = inside.mean()
    return means


def boundary_windows(boundaries: np.ndarray, before: int, after: int) -> np.ndarray:
    """(K, 2) boundaries [p, n] -> (K, 5) splits [before_first, before_last, at, after_first,
    after_last] (see the module docstring)."""
    bounds = np.asarray(boundaries, dtype=np.int64).reshape(-1, 2)
    p, n = bounds[:, 0], bounds[:, 1]
    return np.stack([p - before + 2, p + 1, n, n + 1, n + after], axis=1)


def _check_windows(boundaries: np.ndarray, windows: np.ndarray, name: str) -> None:
    """Each boundary's windows must be passage tokens: no overlap with its neighbours'."""
    if np.any(boundaries[:, 1] <= boundaries[:, 0]):
        raise ValueError(f"{name}: every boundary needs p < n, got {boundaries.tolist()}")
    clash = np.flatnonzero(windows[1:, 0] <= windows[:-1, 4])
    if clash.size:
        k = int(clash[0])
        raise ValueError(
            f"{name}: the after window of boundary {k} (to split {windows[k, 4]}) reaches the "
            f"before window of boundary {k + 1} (from split {windows[k + 1, 0]}): a passage is "
            "shorter than before + after tokens; make them smaller"
        )


def offset_splits(boundaries: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """(K, 2) boundaries [p, n], offsets (O,) -> (K, O) int64 split positions (module
    docstring: p + 2 + o for o < 0, n + o for o >= 0)."""
    bounds = np.asarray(boundaries, dtype=np.int64).reshape(-1, 2)
    o = np.asarray(offsets, dtype=np.int64)[None, :]
    return np.where(o < 0, bounds[:, :1] + 2 + o, bounds[:, 1:] + o)


def offset_mask(
    boundaries: np.ndarray, passage_spans: np.ndarray, offsets: Sequence[int], length: int
) -> np.ndarray:
    """(K, O) bool: whether offset o of boundary k reads a token of passage k (o < 0) or k+1
    (o > 0) and its split lies in 1..L-1. Offset 0 (right after the delimiter) always counts.

    boundaries: (K, 2) [p, n]; passage_spans: (P, 2) [start, stop) with P >= K + 1 (boundary k
    lies between passages k and k+1); length: L.
    """
    bounds = np.asarray(boundaries, dtype=np.int64).reshape(-1, 2)
    spans = np.asarray(passage_spans, dtype=np.int64).reshape(-1, 2)
    if spans.shape[0] < bounds.shape[0] + 1:
        raise ValueError(f"{bounds.shape[0]} boundaries need >= {bounds.shape[0] + 1} passages")
    splits = offset_splits(bounds, offsets)
    o = np.asarray(offsets, dtype=np.int64)[None, :]
    token = splits - 1  # the last token read before the split
    first_before = spans[: bounds.shape[0], :1]  # passage k's first token
    last_after = spans[1 : bounds.shape[0] + 1, 1:] - 1  # passage k+1's last token
    inside = np.where(o < 0, token >= first_before, np.where(o > 0, token <= last_after, True))
    return inside & (splits >= 1) & (splits <= length - 1)


def window_splits(boundaries: np.ndarray, before: int, after: int) -> np.ndarray:
    """Every split of every boundary's before window, delimiter split and after window
    (`boundary_windows`): (K, 2) boundaries -> sorted unique int64 splits."""
    b0, b1, at, a0, a1 = boundary_windows(boundaries, before, after).T
    ranges = [np.arange(first, last + 1) for first, last in zip(b0, b1, strict=True)]
    ranges += [np.arange(first, last + 1) for first, last in zip(a0, a1, strict=True)]
    return np.unique(np.concatenate([at, *ranges])).astype(np.int64)


def trace_positions(
    boundaries: np.ndarray,
    passage_spans: np.ndarray,
    length: int,
    offsets: Sequence[int],
    stride: int,
    before: int,
    after: int,
) -> np.ndarray:
    """The split positions E6 evaluates ESS at: every split of every boundary's windows
    (`window_splits`: the drop's means are over all of them), every counted offset of every
    boundary (`offset_mask`, for the profile) and a coarse trace 1, 1 + stride, ... (for the
    full-trace figure). Returns sorted unique int64 splits in 1..L-1."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    splits = offset_splits(boundaries, offsets)
    near = splits[offset_mask(boundaries, passage_spans, offsets, length)]
    windows = window_splits(boundaries, before, after)
    windows = windows[(windows >= 1) & (windows <= length - 1)]
    return np.union1d(np.union1d(near, windows), np.arange(1, length, stride)).astype(np.int64)


def bound_flags(ess: np.ndarray, splits: np.ndarray, length: int) -> np.ndarray:
    """Whether each ESS value is at the bound min(i, L-i) of its split i (module docstring):
    ess, splits: (N,) -> (N,) bool. Tolerance-ESS is a count, so "at" is >= bound - 0.5."""
    splits = np.asarray(splits, dtype=np.int64)
    return np.asarray(ess, dtype=float) >= np.minimum(splits, length - splits) - 0.5


def window_any(flags: pd.Series, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Whether any split first[k]..last[k] is flagged, per window k (bool Series indexed by
    sorted split; a split it lacks counts as unflagged)."""
    splits, values = flags.index.to_numpy(), flags.to_numpy(bool)
    start = np.searchsorted(splits, first, side="left")
    stop = np.searchsorted(splits, last, side="right")
    flagged = np.concatenate([[0], np.cumsum(values)])
    return flagged[stop] > flagged[start]


def reset_bound(splits: np.ndarray, reset: int) -> np.ndarray:
    """The most ESS_i can be when the operator fully resets at position `reset` (no output at
    or after it reads an input before it): max(reset - i, 0) per split i (module docstring)."""
    return np.maximum(int(reset) - np.asarray(splits, dtype=np.int64), 0)


def boundary_profile(
    trace: pd.Series,
    boundaries: np.ndarray,
    passage_spans: np.ndarray,
    length: int,
    offsets: Sequence[int],
) -> pd.DataFrame:
    """ESS at each offset from each boundary (one trace, forms: `as_trace`'s Series).

    Returns one row per boundary and counted offset (`offset_mask`): boundary, offset, split,
    value (NaN where the trace has no such split, e.g. a strided one).
    """
    splits = offset_splits(boundaries, offsets)
    mask = offset_mask(boundaries, passage_spans, offsets, length)
    k, j = np.nonzero(mask)
    chosen = splits[k, j]
    return pd.DataFrame(
        {
            "boundary": k.astype(np.int64),
            "offset": np.asarray(offsets, dtype=np.int64)[j],
            "split": chosen,
            "value": trace.reindex(chosen).to_numpy(float),
        }
    )


def trace_drops(
    trace: pd.Series,
    length: int,
    at_bound: pd.Series | None,
    boundaries: np.ndarray,
    before: int,
    after: int,
) -> pd.DataFrame:
    """Per boundary: p, n, ESS before / at / after the delimiter, drop, near_end (one trace).
    at_bound: bool per split (`bound_flags`: some head at min(i, L-i)), None = nowhere; a
    window that leaves splits 1 .. L-1 (cut by an end: incomplete) also flags near_end."""
    bounds = np.asarray(boundaries, dtype=np.int64).reshape(-1, 2)
    b0, b1, at, a0, a1 = boundary_windows(bounds, before, after).T
    ess_before, ess_after = window_means(trace, b0, b1), window_means(trace, a0, a1)
    near_end = (b0 < 1) | (a1 > length - 1)
    if at_bound is not None:
        near_end |= window_any(at_bound, b0, a1)
    return pd.DataFrame(
        {
            "prev_end": bounds[:, 0],
            "next_start": bounds[:, 1],
            "ess_before": ess_before,
            "ess_at_delimiter": window_means(trace, at, at),
            "ess_after": ess_after,
            "drop": ess_before - ess_after,
            "near_end": near_end,
        }
    )


def delimiter_drop(
    ess_trace: Any,
    boundary_positions: np.ndarray,
    control_trace: Any,
    control_positions: np.ndarray,
    before: int = 8,
    after: int = 8,
    at_bound: Any = None,
    control_at_bound: Any = None,
    seq_len: int | None = None,
    control_seq_len: int | None = None,
    value: str = "ess",
) -> pd.DataFrame:
    """ESS just before vs just after each delimiter, minus the same in a control.

    ess_trace, control_trace: ESS per split position of the delimited sequence and of a control
    (forms: `as_trace`). boundary_positions, control_positions: (K, 2) [p, n] per boundary
    (`DelimitedSequence.boundaries`), boundary k being the same passage pair in both.
    before, after: window sizes in tokens (module docstring). at_bound, control_at_bound:
    whether some head is at the bound min(i, L-i) at each split (`bound_flags`; forms:
    `as_trace`, a DataFrame's column "at_bound"; None = at no split): a boundary with a
    flagged split inside its windows in either sequence, or a window cut by an end of it, is
    flagged near_end and left out of `summarise_drops`'s interior estimate.

    Returns one row per boundary k: boundary, prev_end, next_start, ess_before,
    ess_at_delimiter, ess_after, drop (= ess_before - ess_after), the same with a control_
    prefix, drop_vs_control (= drop - control_drop) and near_end. NaN where a trace has no
    split in a window.
    """
    if before < 1 or after < 1:
        raise ValueError(f"before and after must be >= 1, got before={before}, after={after}")
    bounds = np.asarray(boundary_positions, dtype=np.int64).reshape(-1, 2)
    control_bounds = np.asarray(control_positions, dtype=np.int64).reshape(-1, 2)
    if bounds.shape != control_bounds.shape:
        raise ValueError(
            f"boundary_positions {bounds.shape} and control_positions {control_bounds.shape} "
            "must list the same boundaries"
        )
    for name, b in (("boundary_positions", bounds), ("control_positions", control_bounds)):
        _check_windows(b, boundary_windows(b, before, after), name)
    trace, length = as_trace(ess_trace, seq_len, value)
    control, control_length = as_trace(control_trace, control_seq_len, value)
    flags = [
        None if form is None else as_trace(form, n, "at_bound")[0].astype(bool)
        for form, n in ((at_bound, length), (control_at_bound, control_length))
    ]
    main = trace_drops(trace, length, flags[0], bounds, before, after)
    ctrl = trace_drops(control, control_length, flags[1], control_bounds, before, after)
    columns = {"boundary": np.arange(len(main))}
    columns |= {column: main[column].to_numpy() for column in main.columns.drop("near_end")}
    columns |= {f"control_{c}": ctrl[c].to_numpy() for c in ctrl.columns.drop("near_end")}
    columns["drop_vs_control"] = columns["drop"] - columns["control_drop"]
    columns["near_end"] = main["near_end"].to_numpy() | ctrl["near_end"].to_numpy()
    return pd.DataFrame(columns)


def summarise_drops(
    drops: pd.DataFrame,
    column: str = "drop_vs_control",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean of a drop column with a bootstrap CI, interior boundaries and near-end ones apart.

    drops: `delimiter_drop`'s table. Returns rows "interior" (near_end False) and "near_end"
    with columns n, mean, lo, hi (NaN when a group is empty); NaN drops are left out.
    """
    if column not in drops.columns:
        raise ValueError(f"drops has no column {column!r}: {list(drops.columns)}")
    rows = {}
    for name, near in (("interior", False), ("near_end", True)):
        values = drops.loc[drops["near_end"] == near, column].dropna().to_numpy(float)
        mean, lo, hi = (
            bootstrap_mean_ci(values, n_boot, confidence, seed) if values.size else (np.nan,) * 3
        )
        rows[name] = {"n": int(values.size), "mean": mean, "lo": lo, "hi": hi}
    return pd.DataFrame.from_dict(rows, orient="index")
