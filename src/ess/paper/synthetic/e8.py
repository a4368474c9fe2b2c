"""E8: E1's correlations at every tau of synthetic.ess.tolerances: how the verdict depends on
the tolerance (docs/method.md §4). It reads E1's runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ess.paper.stats import CORRELATION_METHODS
from ess.paper.synthetic import e1
from ess.paper.synthetic.captions import bootstrap_text, number_text
from ess.paper.synthetic.e1 import CELL_COLUMNS, accuracy_correlations, correlation_verdict, pooled
from ess.paper.synthetic.grid import Experiment
from ess.paper.synthetic.tables import model_level
from ess.paper.synthetic.verdicts import Verdict


def _per_item(level: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`model_level` rows with the run labels and ESS/kv, entropy-ESS/kv and TSS/kv."""
    level = level.join(labels, on="run")
    level["ess_per_item"] = level["ess_tolerance"] / level["memory_items"]
    level["entropy_per_item"] = level["ess_entropy"] / level["memory_items"]
    level["tss_per_item"] = level["tss"] / level["memory_items"]
    return level


def tolerance_correlations(
    layers: pd.DataFrame,
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """E8: `accuracy_correlations` of test accuracy with ESS/kv at each tau of `layers`
    (largest first), with entropy-ESS/kv and with TSS/kv; for each ESS measure also its paired
    difference with TSS/kv (x "ess_per_item - tss_per_item", E1's test at that measure).

    layers: per run x layer x tau rows (synthetic_layers) of the runs to correlate over, with
    memory_items, test_accuracy and CELL_COLUMNS. Returns measure ("tolerance-ESS",
    "entropy-ESS", "TSS"), tolerance (NaN but for tolerance-ESS), task, x, method, r, low,
    high, n, note, cells, cells_to_decide, runs_to_decide (the last three on difference rows).
    """
    columns = ["memory_items", "test_accuracy", *CELL_COLUMNS]
    labels = layers.groupby("run")[columns].first()
    boot = {"methods": methods, "n_boot": n_boot, "confidence": confidence, "seed": seed}
    taus = sorted(layers["tolerance"].unique(), reverse=True)
    tables = []
    for tau in taus:
        level = _per_item(model_level(layers, tau), labels)
        paired = ("ess_per_item", "tss_per_item")
        table = accuracy_correlations(level, ["ess_per_item"], paired=paired, **boot)
        tables.append(table.assign(measure="tolerance-ESS", tolerance=tau))
    level = _per_item(model_level(layers, taus[0]), labels)
    for measure, x in (("entropy-ESS", "entropy_per_item"), ("TSS", "tss_per_item")):
        paired = (x, "tss_per_item") if measure != "TSS" else None
        table = accuracy_correlations(level, [x], paired=paired, **boot)
        tables.append(table.assign(measure=measure, tolerance=float("nan")))
    table = pd.concat(tables, ignore_index=True)
    return table[["measure", "tolerance", *table.columns.drop(["measure", "tolerance"])]]


def verdicts_by_tolerance(table: pd.DataFrame, method: str = "spearman") -> pd.DataFrame:
    """E1's verdict (`correlation_verdict`: ESS/kv against TSS/kv, pooled runs) at each tau of
    a `tolerance_correlations` table and for entropy-ESS: measure, tolerance, verdict."""
    table = pooled(table)
    tss = table[table["measure"] == "TSS"]
    rows = []
    for (measure, tolerance), group in table.groupby(
        ["measure", "tolerance"], dropna=False, sort=False
    ):
        if measure == "TSS":
            continue
        x = group["x"].iloc[0]
        verdict = correlation_verdict(pd.concat([group, tss]), x, "tss_per_item", method)
        rows.append({"measure": measure, "tolerance": tolerance, "verdict": verdict.verdict})
    return pd.DataFrame(rows, columns=["measure", "tolerance", "verdict"])


E8_CLAIM = "none (the paper did not analyse tau); here: E1's verdict does not depend on tau"


def tolerance_verdict(verdicts: pd.DataFrame) -> Verdict:
    """E8 from `verdicts_by_tolerance` rows (measure, tolerance, verdict): "holds" when E1's
    verdict is the same at every tau and at entropy-ESS, "does not hold" when it differs,
    "undefined" without rows. The evidence lists the verdict at each tau."""
    by_tau = "; ".join(
        f"{'entropy-ESS' if pd.isna(t) else f'tau {t:g}'}: {v}"
        for t, v in zip(verdicts["tolerance"], verdicts["verdict"], strict=True)
    )
    if verdicts.empty:
        return Verdict(E8_CLAIM, "undefined", "no tau measured")
    same = verdicts["verdict"].nunique() == 1
    return Verdict(E8_CLAIM, "holds" if same else "does not hold", f"E1's verdict by {by_tau}")


def settings_parts(settings: dict) -> list[str]:
    """The bootstrap and the taus swept."""
    taus = settings["synthetic"]["ess"]["tolerances"]
    return [bootstrap_text(settings), f"tau swept over {', '.join(map(number_text, taus))}"]


EXPERIMENT = Experiment(
    name="e8",
    claim=E8_CLAIM,
    figures=("e8_tolerance_sensitivity",),
    tables=("e8_tolerance_correlations",),
    runs=None,
    reads="e1",
    verdict=tolerance_verdict,
    grid_text=e1.grid_text,
    settings_parts=settings_parts,
)
