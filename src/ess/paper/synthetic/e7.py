"""E7: in hybrid patterns, attention first lets the recurrent layers use more of their state
(docs/method.md §4).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from ess.paper.synthetic.captions import tasks_text, unique
from ess.paper.synthetic.grid import (
    Experiment,
    Labels,
    run_labels,
)
from ess.paper.synthetic.verdicts import Part, Verdict, combined_verdict
from ess.paper.training.registry import ATTENTION_MIXERS


def runs(synthetic: dict) -> Iterator[tuple[Labels, dict, dict]]:
    """E7: each hybrid layer pattern at one TSS."""
    e7 = synthetic["e7"]
    for pattern in e7["patterns"]:
        for seed in synthetic["seeds"]:
            labels = run_labels(e7["task"], e7["difficulty"], pattern, e7["state_size"], seed)
            yield labels, {"state_size": e7["state_size"]}, {}


def layer_table(layers: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per run x layer at one tau (rows of synthetic_layers): run, mixer, seed, layer,
    layer_mixer, tss, ess_tolerance, ess_entropy, utilisation, test_accuracy."""
    at_tol = layers[np.isclose(layers["tolerance"], tolerance)]
    if at_tol.empty and not layers.empty:
        raise ValueError(
            f"no ESS at tolerance {tolerance}; measured: {sorted(layers['tolerance'].unique())}"
        )
    columns = ["run", "mixer", "seed", "layer", "layer_mixer", "tss", "ess_tolerance"]
    columns += ["ess_entropy", "utilisation", "test_accuracy"]
    return at_tol[columns].sort_values(["mixer", "seed", "layer"]).reset_index(drop=True)


def hybrid_table(per_layer: pd.DataFrame) -> pd.DataFrame:
    """E7, one row per run from `layer_table` rows: mixer (the pattern), seed, test_accuracy
    and per layer i: layer{i}_mixer, layer{i}_ess (tolerance-ESS), layer{i}_utilisation."""
    names = {"layer_mixer": "mixer", "ess_tolerance": "ess", "utilisation": "utilisation"}
    table = per_layer.groupby("run")[["mixer", "seed", "test_accuracy"]].first()
    for layer in sorted(per_layer["layer"].unique()):
        rows = per_layer[per_layer["layer"] == layer].set_index("run")[list(names)]
        rows.columns = [f"layer{layer}_{names[c]}" for c in rows.columns]
        table = table.join(rows)
    return table.reset_index().sort_values(["mixer", "seed"], ignore_index=True)


HYBRID_COLUMN_NAMES = {"mixer": "pattern", "test_accuracy": "accuracy"}


HYBRID_LAYER_COLUMN_NAMES = {"mixer": "mixer", "ess": "ESS", "utilisation": "ESS/TSS"}


def hybrid_column_name(column: str) -> str:
    """The shown name of a `hybrid_table` column: layer0_ess -> "layer 0 ESS", mixer ->
    "pattern", test_accuracy -> "accuracy"; any other column keeps its name."""
    if column in HYBRID_COLUMN_NAMES or not column.startswith("layer"):
        return HYBRID_COLUMN_NAMES.get(column, column)
    layer, _, value = column.removeprefix("layer").partition("_")
    return f"layer {layer} {HYBRID_LAYER_COLUMN_NAMES[value]}"


E7_CLAIM = "ESS per layer explains topology choices: no attention in the first layer"


def _is_hybrid(pattern: str) -> bool:
    kinds = [kind.strip().upper() in ATTENTION_MIXERS for kind in pattern.split(",")]
    return any(kinds) and not all(kinds)


def first_layer_attention_verdict(per_layer: pd.DataFrame) -> Verdict:
    """E7 from `layer_table` rows of its runs, in two parts (our reading of the claim):
    (1) hybrids (attention and recurrent layers) with a recurrent first layer are more accurate
    (mean) than hybrids with attention first; (2) the first layer needs little memory: the mean
    ESS of recurrent layers is lower in layer 0 than in later layers (all patterns), so
    attention's KV cache would be wasted there. See `combined_verdict`."""
    attention = per_layer["layer_mixer"].str.upper().isin(ATTENTION_MIXERS)
    first = per_layer[(per_layer["layer"] == 0) & per_layer["mixer"].map(_is_hybrid)]
    accuracy = first.groupby(attention[first.index])["test_accuracy"].mean()
    if len(accuracy) < 2:
        accuracy_part: Part = (None, "needs hybrids with and without attention first")
    else:
        accuracy_part = (
            bool(accuracy[False] > accuracy[True]),
            f"accuracy of hybrids with a recurrent first layer {accuracy[False]:.3f} vs "
            f"attention first {accuracy[True]:.3f}",
        )
    recurrent = per_layer[~attention]
    ess = recurrent.groupby(recurrent["layer"] == 0)["ess_tolerance"].mean()
    if len(ess) < 2:
        ess_part: Part = (None, "needs recurrent layers both first and later")
    else:
        ess_part = (
            bool(ess[True] < ess[False]),
            f"ESS of recurrent layers in layer 0 {ess[True]:.2f} vs later {ess[False]:.2f}",
        )
    return combined_verdict(E7_CLAIM, [accuracy_part, ess_part])


def grid_text(synthetic: dict, labels: list[Labels]) -> str:
    """E7's grid in words: task, TSS and the layer patterns."""
    task = tasks_text(synthetic, [label for label in labels if label.variant == "base"])
    patterns = ", ".join(unique(label.mixer for label in labels))
    sizes = sorted({label.state_size for label in labels if label.state_size is not None})
    return f"{task}; TSS {', '.join(map(str, sizes))}; patterns {patterns}"


EXPERIMENT = Experiment(
    name="e7",
    claim=E7_CLAIM,
    figures=("e7_hybrid_layers",),
    tables=("e7_hybrids",),
    runs=runs,
    verdict=first_layer_attention_verdict,
    grid_text=grid_text,
)
