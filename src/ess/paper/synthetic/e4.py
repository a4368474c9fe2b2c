"""E4: a regulariser on the transitions A_t (lambda) counters the collapse of gated mixers
(docs/method.md §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pandas as pd

from ess.paper.synthetic.captions import number_text, tasks_text, unique
from ess.paper.synthetic.e2 import failure_mode
from ess.paper.synthetic.grid import (
    Experiment,
    Labels,
    run_labels,
)
from ess.paper.synthetic.verdicts import Part, Verdict, combined_verdict


def runs(synthetic: dict) -> Iterator[tuple[Labels, dict, dict]]:
    """E4: each mixer without the regulariser (the E1 run), at each lambda on every layer,
    and at the largest lambda on each of e4.layer_sets only."""
    e4 = synthetic["e4"]
    for mixer in e4["mixers"]:
        for seed in synthetic["seeds"]:
            common = (e4["task"], e4["difficulty"], mixer, e4["state_size"], seed)
            model = {"state_size": e4["state_size"]}
            yield run_labels(*common), model, {}
            for reg in e4["lambdas"]:
                labels = run_labels(*common, variant=f"reg{reg:g}", reg_lambda=reg)
                yield labels, model, {"reg_lambda": reg}
            reg = max(e4["lambdas"])
            for layers in e4["layer_sets"]:
                variant = f"reg{reg:g}-layers{'+'.join(map(str, layers))}"
                labels = run_labels(*common, variant, reg_lambda=reg, reg_layers=tuple(layers))
                yield labels, model, {"reg_lambda": reg, "reg_layers": layers}


def regulariser_table(runs: pd.DataFrame) -> pd.DataFrame:
    """E4 runs (with their labels reg_lambda and reg_layers: "all" or the regularised layers,
    "0+1") sorted by mixer, layers (all first), lambda and seed."""
    order = ["mixer", "reg_layers", "reg_lambda", "seed"]
    return runs.sort_values(order, key=_all_first).reset_index(drop=True)


def _all_first(column: pd.Series) -> pd.Series:
    return column.replace({"all": ""}) if column.name == "reg_layers" else column


def reference_runs(runs: pd.DataFrame, like: pd.DataFrame, mixer: str = "LA") -> pd.DataFrame:
    """The base runs of `mixer` at the task, difficulty, state_size and seed of any row of
    `like` (e.g. E4's LA reference among the E1 runs)."""
    keys = ["task", "difficulty", "state_size", "seed"]
    candidates = runs[(runs["mixer"] == mixer) & (runs["variant"] == "base")]
    return candidates.merge(like[keys].drop_duplicates(), on=keys).reset_index(drop=True)


E4_CLAIM = (
    "the regulariser lambda ||A - I||_F counters collapse, and regularised GLA/WLA beat LA on "
    "hard settings"
)


def regulariser_verdict(
    table: pd.DataFrame, reference: pd.DataFrame, e2: dict | None = None
) -> Verdict:
    """E4 at the largest lambda on all layers against lambda = 0, per mixer (means over seeds
    of `regulariser_table` rows), in two parts: (1) utilisation (ESS/TSS) rises for every
    mixer; (2) accuracy is above the reference's (`reference_runs`, mean) for every mixer.
    See `combined_verdict`. With e2 (synthetic.e2: learned_accuracy, saturation_utilisation)
    the evidence also counts the lambda = 0 runs that collapsed (`failure_mode`): with none,
    there was no collapse to counter, and the verdict says what the penalty does to a working
    state."""
    all_layers = table[table["reg_layers"] == "all"]
    means = all_layers.groupby(["mixer", "reg_lambda"])[["utilisation", "test_accuracy"]].mean()
    top = all_layers["reg_lambda"].max() if len(all_layers) else 0.0
    mixers = sorted(all_layers["mixer"].unique())
    pairs = {
        m: (means.loc[(m, 0.0)], means.loc[(m, top)]) for m in mixers if (m, 0.0) in means.index
    }
    if top == 0.0 or len(pairs) < len(mixers) or not mixers:
        undefined = (None, "needs runs at lambda = 0 and at a lambda > 0 for every mixer")
        return combined_verdict(E4_CLAIM, [undefined, undefined])
    utilisation = ", ".join(
        f"{m} {base['utilisation']:.3f} -> {reg['utilisation']:.3f}"
        for m, (base, reg) in pairs.items()
    )
    rises = all(reg["utilisation"] > base["utilisation"] for base, reg in pairs.values())
    parts: list[Part] = [(rises, f"utilisation at lambda 0 -> {top:g}: {utilisation}")]
    if reference.empty:
        parts.append((None, "no reference run at this task, difficulty and TSS"))
    else:
        floor = reference["test_accuracy"].mean()
        accuracy = ", ".join(f"{m} {reg['test_accuracy']:.3f}" for m, (_, reg) in pairs.items())
        beats = all(reg["test_accuracy"] > floor for _, reg in pairs.values())
        parts.append((beats, f"accuracy at lambda {top:g}: {accuracy} vs reference {floor:.3f}"))
    verdict = combined_verdict(E4_CLAIM, parts)
    if e2 is None:
        return verdict
    base = all_layers[all_layers["reg_lambda"] == 0.0]
    modes = [
        failure_mode(a, u, e2["learned_accuracy"], e2["saturation_utilisation"])
        for a, u in zip(base["test_accuracy"], base["utilisation"], strict=True)
    ]
    collapsed = f"{modes.count('collapse')} of {len(modes)} runs at lambda 0 collapsed"
    if "collapse" not in modes:
        collapsed += " (no collapse to counter)"
    return dataclasses.replace(verdict, evidence=f"{verdict.evidence}; {collapsed}")


def grid_text(synthetic: dict, labels: list[Labels]) -> str:
    """E4's grid in words: task, mixers, TSS, the lambdas on all layers and on layer sets."""
    task = tasks_text(synthetic, [label for label in labels if label.variant == "base"])
    mixers = ", ".join(unique(label.mixer for label in labels))
    sizes = sorted({label.state_size for label in labels if label.state_size is not None})
    every_layer = unique(r.reg_lambda for r in labels if r.reg_lambda and not r.reg_layers)
    some_layers = [r for r in labels if r.reg_layers]
    text = (
        f"{task}; mixers {mixers}; TSS {', '.join(map(str, sizes))}; lambda 0 (the E1 run), "
        f"{', '.join(map(number_text, every_layer))} on all layers"
    )
    if some_layers:
        text += (
            f", {', '.join(map(number_text, unique(r.reg_lambda for r in some_layers)))} on "
            f"layers {[list(layers) for layers in unique(r.reg_layers for r in some_layers)]}"
        )
    return text


EXPERIMENT = Experiment(
    name="e4",
    claim=E4_CLAIM,
    figures=("e4_regulariser",),
    tables=("e4_regulariser_runs",),
    runs=runs,
    verdict=regulariser_verdict,
    grid_text=grid_text,
)
