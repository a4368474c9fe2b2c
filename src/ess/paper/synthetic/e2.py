"""E2: runs that fail do so by saturation (ESS near TSS) or collapse (ESS far below it); E1's
runs, each labelled by `failure_mode` (docs/method.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ess.paper.synthetic import e1
from ess.paper.synthetic.captions import number_text
from ess.paper.synthetic.grid import Experiment
from ess.paper.synthetic.verdicts import Verdict

FAILURE_MODES = ("learned", "saturation", "collapse")


def failure_mode(
    accuracy: float, utilisation: float, learned_accuracy: float, saturation_utilisation: float
) -> str:
    """E2's label of one run: "learned" if accuracy >= learned_accuracy, otherwise
    "saturation" (ESS / TSS >= saturation_utilisation: the state is full) or "collapse"
    (the state is there but unused). Both thresholds are ours; the paper gives none."""
    if accuracy >= learned_accuracy:
        return "learned"
    return "saturation" if utilisation >= saturation_utilisation else "collapse"


FAILURE_COLUMNS = [
    "run",
    "task",
    "difficulty",
    "memory_items",
    "mixer",
    "state_size",
    "seed",
    "tss",
    "ess_tolerance",
    "utilisation",
    "test_accuracy",
]


def failure_mode_table(
    runs: pd.DataFrame, learned_accuracy: float, saturation_utilisation: float
) -> pd.DataFrame:
    """E2: the runs with a state of fixed size (state_size set; attention's KV cache is not
    one), each labelled by `failure_mode`: FAILURE_COLUMNS and failure_mode."""
    modes = runs.loc[runs["state_size"].notna(), FAILURE_COLUMNS].reset_index(drop=True)
    modes["failure_mode"] = [
        failure_mode(accuracy, utilisation, learned_accuracy, saturation_utilisation)
        for accuracy, utilisation in zip(modes["test_accuracy"], modes["utilisation"], strict=True)
    ]
    return modes


def hardest(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows at each task's hardest difficulty: the most memory_items."""
    most = runs.groupby("task")["memory_items"].transform("max")
    return runs[runs["memory_items"] == most]


E2_CLAIM = "GLA and WLA collapse (ESS far below TSS) on hard settings, LA less so"


def collapse_verdict(
    modes: pd.DataFrame, collapsing: Sequence[str] = ("GLA", "WLA"), reference: str = "LA"
) -> Verdict:
    """E2 on each task's hardest difficulty (rows of `failure_mode_table`): the share of
    `collapsing` runs labelled "collapse" against the share of `reference` runs.

    "holds": the collapsing share is above 0 and above the reference's; "does not hold":
    otherwise, when some `collapsing` run failed there (collapse or saturation);
    "inconclusive (no GLA/WLA run failed there)" when every one learned: the setting was not
    hard for them, so collapse was not tested; "undefined": no collapsing or no reference runs
    there.
    """
    hard = hardest(modes)
    where = ", ".join(sorted(set(hard["task"] + " " + hard["difficulty"])))
    counts = modes["failure_mode"].value_counts()
    labels = ", ".join(f"{mode} {counts.get(mode, 0)}" for mode in FAILURE_MODES)
    collapsed = {}  # group name -> (runs labelled collapse, runs)
    failed = (hard["mixer"].isin(collapsing) & (hard["failure_mode"] != "learned")).sum()
    for name, mixers in (("/".join(collapsing), collapsing), (reference, [reference])):
        group = hard[hard["mixer"].isin(mixers)]
        collapsed[name] = (int((group["failure_mode"] == "collapse").sum()), len(group))
    evidence = f"on {where or 'no runs'}: collapse in " + " vs ".join(
        f"{k}/{n} {name} runs" for name, (k, n) in collapsed.items()
    )
    evidence += f"; labels over all {len(modes)} runs: {labels}"
    (k_mine, n_mine), (k_theirs, n_theirs) = collapsed.values()
    if not n_mine or not n_theirs:
        return Verdict(E2_CLAIM, "undefined", evidence)
    if not failed:
        failing = f"no {'/'.join(collapsing)} run failed there"
        return Verdict(E2_CLAIM, f"inconclusive ({failing})", evidence)
    held = k_mine > 0 and k_mine / n_mine > k_theirs / n_theirs
    return Verdict(E2_CLAIM, "holds" if held else "does not hold", evidence)


def settings_parts(settings: dict) -> list[str]:
    """E2's thresholds, ours (the paper gives none)."""
    e2 = settings["synthetic"]["e2"]
    return [
        f"learned: accuracy >= {number_text(e2['learned_accuracy'])}; saturation: ESS/TSS >= "
        f"{number_text(e2['saturation_utilisation'])}"
    ]


EXPERIMENT = Experiment(
    name="e2",
    claim=E2_CLAIM,
    figures=("e2_state_utilisation",),
    tables=("e2_failure_modes",),
    runs=None,
    reads="e1",
    verdict=collapse_verdict,
    grid_text=e1.grid_text,
    settings_parts=settings_parts,
)
