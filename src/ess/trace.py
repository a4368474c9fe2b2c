"""`ess trace`: the ESS of every mixer of a causal LM along one text, as a table and a picture.

One forward pass captures every layer's operator (ess.hf.capture_operators, each checked
against the mixer's own output); `trace_table` then measures tolerance-ESS at each tau,
entropy-ESS, the TSS and the utilisation (ESS at the first tau / TSS) per layer, mixer,
head/channel and split position (docs/method.md §5). `write_trace` keeps the table as parquet
with its provenance in the file metadata; `plot_trace` draws it, from the table alone.
"""

from __future__ import annotations

import itertools
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ess.layers import LayerOperator
from ess.measure import layer_ess
from ess.metric import tolerance_ess
from ess.outputs import atomic_output, sha256_file, sha256_tree, tau_column

METADATA_KEY = b"ess_trace"
DEFAULT_UNITS = 16  # heads/channels measured per mixer unless asked: evenly spread
DEFAULT_SPLITS = 64  # split positions measured unless asked: every L // 64-th


# ---------------------------------------------------------------------------------------------
# Choices from the command line


def parse_indices(spec: str | None, count: int, what: str) -> list[int]:
    """Indices in 0 .. count-1 from "3", "0,4,7", "2-5" (inclusive) or a slice "::4" / "1:9:2".

    None: all of them. A value outside 0 .. count-1 or a malformed spec raises ValueError naming
    it and what is allowed."""
    if spec is None or spec == "all":
        return list(range(count))
    allowed = f'{what} take "all", "3", "0,4,7", "2-5" or a slice "::4"; there are {count}'
    try:
        if ":" in spec:
            parts = [int(p) if p else None for p in spec.split(":")]
            chosen = list(range(count))[slice(*parts)]
        else:
            chosen = []
            for part in spec.split(","):
                low, dash, high = part.partition("-")
                chosen += list(range(int(low), int(high) + 1)) if dash else [int(low)]
    except (ValueError, TypeError):
        raise ValueError(f"bad {what} {spec!r}: {allowed}") from None
    outside = [i for i in chosen if not 0 <= i < count]
    if outside or not chosen:
        raise ValueError(f"bad {what} {spec!r}: {outside or 'none chosen'}; {allowed}")
    return sorted(set(chosen))


def spread(count: int, at_most: int) -> list[int]:
    """`at_most` indices evenly spread over 0 .. count-1 (all of them if count <= at_most)."""
    if count <= at_most:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, at_most).round().astype(int).tolist()))


def split_positions(length: int, positions: str | None, stride: int | None) -> np.ndarray:
    """Split positions in 1 .. L-1: `positions` ("5,10,20"), else every `stride`-th from 1, else
    about DEFAULT_SPLITS of them evenly spaced; the last split L-1 is always one."""
    if length < 2:
        raise ValueError(f"the text gives {length} token(s); ESS needs at least 2")
    if positions is not None:
        chosen = parse_indices(positions, length, "--positions")
        if chosen[0] == 0:
            raise ValueError(f"bad --positions {positions!r}: splits lie in 1 .. {length - 1}")
        return np.asarray(chosen, dtype=np.int64)
    if stride is not None and stride < 1:
        raise ValueError(f"bad stride {stride}: it must be a positive integer")
    stride = stride or max(1, (length - 1) // DEFAULT_SPLITS)
    return np.unique(np.append(np.arange(1, length, stride), length - 1)).astype(np.int64)


def unit_count(op: LayerOperator) -> int:
    """The number of heads (attention, mamba2, delta rules) or channels (mamba, conv) of op."""
    for key in ("n_heads", "n_channels"):
        if key in op.meta:
            return int(op.meta[key])
    stored = op.tensors["T"] if "T" in op.tensors else op.tensors["A"]
    return int(stored.shape[-3])


# ---------------------------------------------------------------------------------------------
# The table


def mixer_trace(
    op: LayerOperator,
    mixer: int,
    units: list[int],
    positions: np.ndarray,
    taus: Sequence[float],
    relative: bool,
    device: str,
) -> pd.DataFrame:
    """ESS of one mixer's heads/channels `units` at `positions`: one row per unit and position
    with layer, mixer (its index in the layer), mixer_type, kind, head, position, tss,
    ess_entropy, a tau_column per tau and utilisation (ESS at taus[0] / TSS; NaN at TSS 0)."""
    valid = positions[positions < op.meta["length"]]
    result, tss = layer_ess(
        op,
        torch.tensor(units),
        tol=taus[0],
        relative=relative,
        device=device,
        positions=valid.tolist(),
        spectrum=True,
    )
    split = result.positions.cpu().numpy()
    columns = {
        "layer": op.layer,
        "mixer": mixer,
        "mixer_type": op.meta["mixer"],
        "kind": op.kind,
        "head": np.repeat(units, len(split)),
        "position": np.tile(split, len(units)),
        "tss": np.tile(tss, len(units)).astype(np.int64),
        "ess_entropy": result.entropy.cpu().numpy().reshape(-1),
    }
    for tau in taus:
        columns[tau_column(tau)] = tolerance_ess(result.spectrum, tau, relative).cpu().numpy()
        columns[tau_column(tau)] = columns[tau_column(tau)].reshape(-1).astype(np.int64)
    first = columns[tau_column(taus[0])].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns["utilisation"] = np.where(columns["tss"] > 0, first / columns["tss"], np.nan)
    return pd.DataFrame(columns)


def trace_table(
    ops: Sequence[LayerOperator],
    layers: Sequence[int],
    units: Callable[[LayerOperator], list[int]],
    positions: np.ndarray,
    token_ids: Sequence[int],
    tokens: Sequence[str],
    taus: Sequence[float],
    relative: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """`mixer_trace` of every mixer of `layers`, with the token before each split: token_id and
    token are the last token read, at index position - 1. units(op): the heads/channels."""
    from tqdm.auto import tqdm

    frames, seen = [], {}
    chosen = [op for op in ops if op.layer in set(layers)]
    for op in tqdm(chosen, desc="ess trace", unit="mixer", disable=not progress):
        mixer = seen[op.layer] = seen.get(op.layer, -1) + 1  # its index within the layer
        frames.append(mixer_trace(op, mixer, units(op), positions, taus, relative, device))
    table = pd.concat(frames, ignore_index=True)
    before = table["position"].to_numpy() - 1
    table.insert(6, "token_id", np.asarray(token_ids, dtype=np.int64)[before])
    table.insert(7, "token", np.asarray(tokens, dtype=object)[before])
    return table


# ---------------------------------------------------------------------------------------------
# The model


# ---------------------------------------------------------------------------------------------
# Provenance and files


def model_digest(path: Path) -> str:
    """sha256 of a model file (GGUF) or directory tree (ess.outputs)."""
    return sha256_file(path) if path.is_file() else sha256_tree(path)


def versions() -> dict[str, str]:
    """The versions that decide the numbers: python, torch, transformers, ess."""
    import transformers

    from ess import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ess": __version__,
    }


def mixer_checks(ops: Sequence[LayerOperator]) -> list[dict]:
    """Each captured mixer's self-check: layer, mixer index, type, check_error, check_share."""
    checks, seen = [], {}
    for op in ops:
        mixer = seen[op.layer] = seen.get(op.layer, -1) + 1
        checks.append(
            {
                "layer": op.layer,
                "mixer": mixer,
                "mixer_type": op.meta.get("mixer"),
                "kind": op.kind,
                "check_error": op.meta.get("check_error"),
                "check_share": op.meta.get("check_share"),
            }
        )
    return checks


def write_trace(table: pd.DataFrame, metadata: dict, path: Path) -> None:
    """The table as parquet at `path` (written to a temporary file, then renamed), with
    `metadata` as JSON under the schema key METADATA_KEY."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    schema_metadata = {**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(metadata)}
    arrow = arrow.replace_schema_metadata(schema_metadata)
    with atomic_output(Path(path)) as temporary:
        pq.write_table(arrow, temporary)


def read_trace(path: Path) -> tuple[pd.DataFrame, dict]:
    """(table, metadata) of a file `write_trace` wrote."""
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    metadata = (arrow.schema.metadata or {}).get(METADATA_KEY)
    if metadata is None:
        raise ValueError(f"{path} is not an ess trace: no {METADATA_KEY.decode()} metadata")
    return arrow.to_pandas(), json.loads(metadata)


# ---------------------------------------------------------------------------------------------
# The picture


def plot_trace(table: pd.DataFrame, metadata: dict, path: Path) -> None:
    """PNG at `path`: above, mean ESS (first tau) over heads per layer against the split
    position, a band from the 10th to the 90th percentile over heads, and each mixer type's
    mean TSS dashed; below, the mean utilisation per layer. Written via a temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau = metadata["settings"]["taus"][0]
    ess = tau_column(tau)
    layers = sorted(table["layer"].unique())
    layer_scale = plt.Normalize(min(layers), max(max(layers), min(layers) + 1))
    colours = plt.get_cmap("viridis")(layer_scale(layers))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(2, 1))
    for colour, layer in zip(colours, layers, strict=True):
        rows = table[table["layer"] == layer].groupby("position")
        top.plot(rows[ess].mean().index, rows[ess].mean(), color=colour, lw=1.2)
        top.fill_between(
            rows[ess].mean().index,
            rows[ess].quantile(0.1),
            rows[ess].quantile(0.9),
            color=colour,
            alpha=0.15,
            lw=0,
        )
        bottom.plot(rows["utilisation"].mean().index, rows["utilisation"].mean(), color=colour)
    styles = itertools.cycle(("--", ":", "-.", (0, (5, 1, 1, 1))))
    for style, (mixer_type, rows) in zip(styles, table.groupby("mixer_type"), strict=False):
        tss = rows.groupby("position")["tss"].mean()
        top.plot(tss.index, tss, color="k", ls=style, lw=1, label=f"TSS ({mixer_type})")
    top.set_yscale("symlog", linthresh=1)
    top.set_ylabel(f"ESS (tau = {tau:g}), mean over heads")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_ylabel("utilisation ESS / TSS")
    bottom.set_xlabel("split position (tokens read)")
    colourbar = figure.colorbar(
        plt.cm.ScalarMappable(cmap="viridis", norm=layer_scale),
        ax=(top, bottom),
    )
    colourbar.set_label("layer")
    colourbar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    model = metadata["model"]
    top.set_title(f"{model['name']} ({model['model_type']}), {metadata['text']['n_tokens']} tokens")
    with atomic_output(Path(path)) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
