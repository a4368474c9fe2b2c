"""E3: featurisation: S6's ESS stalls as TSS grows, GLA's grows, and GLA-S6's normalisation
fixes S6 (docs/method.md §4).
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from ess.paper.synthetic.captions import number_text, tasks_text, unique
from ess.paper.synthetic.grid import (
    Experiment,
    Labels,
    run_labels,
)
from ess.paper.synthetic.tables import seed_means
from ess.paper.synthetic.verdicts import Part, Verdict, combined_verdict


def runs(synthetic: dict) -> Iterator[tuple[Labels, dict, dict]]:
    """E3: S6, GLA and GLA-S6 over TSS; GLA-S6 again at each alpha of e3.alphas."""
    e3 = synthetic["e3"]
    for mixer in e3["mixers"]:
        for state_size in e3["state_sizes"]:
            for seed in synthetic["seeds"]:
                common = (e3["task"], e3["difficulty"], mixer, state_size, seed)
                model = {"state_size": state_size}
                yield run_labels(*common), model, {}
                if mixer.upper() == "GLA-S6":
                    for alpha in e3["alphas"]:
                        labels = run_labels(*common, variant=f"alpha{alpha:g}", alpha=alpha)
                        yield labels, {**model, "gla_s6_alpha": alpha}, {}


def mixer_label(mixer: str, variant: str) -> str:
    """How a mixer pattern and variant are named in figures: "GLA-S6", "GLA-S6 (alpha1)"."""
    return mixer if variant == "base" else f"{mixer} ({variant})"


E3_CLAIM = (
    "S6's ESS stalls or falls as TSS grows and S6 fails MQAR, GLA's ESS grows with TSS, and "
    "GLA-S6 (normalisation alpha = 1/sqrt(N)) fixes S6"
)


def _at_tss(means: pd.DataFrame, mixer: str, tss: float, column: str) -> float:
    rows = means[(means["mixer"] == mixer) & (means["variant"] == "base")]
    return float(rows.loc[rows["state_size"] == tss, column].iloc[0])


def _tss_values(means: pd.DataFrame, *mixers: str) -> list[float]:
    """TSS values that every base run of `mixers` was trained at, ascending."""
    sets = [
        set(means.loc[(means["mixer"] == m) & (means["variant"] == "base"), "state_size"])
        for m in mixers
    ]
    return sorted(set.intersection(*sets))


def _ess_growth_part(means: pd.DataFrame) -> Part:
    sizes = _tss_values(means, "S6", "GLA")
    if len(sizes) < 2:
        return None, "ESS growth of S6 and GLA: needs both at two TSS values"
    growth = {
        m: _at_tss(means, m, sizes[-1], "ess_tolerance")
        / _at_tss(means, m, sizes[0], "ess_tolerance")
        for m in ("S6", "GLA")
    }
    text = (
        f"ESS from TSS {sizes[0]:g} to {sizes[-1]:g}: S6 x{growth['S6']:.2f}, "
        f"GLA x{growth['GLA']:.2f} (S6 grows less, GLA grows)"
    )
    return bool(growth["S6"] < growth["GLA"] and growth["GLA"] > 1), text


def _s6_fails_part(means: pd.DataFrame, learned_accuracy: float) -> Part:
    sizes = _tss_values(means, "S6")
    if not sizes:
        return None, "S6 fails MQAR: no S6 runs"
    accuracy = [_at_tss(means, "S6", tss, "test_accuracy") for tss in sizes]
    shown = ", ".join(f"TSS {tss:g}: {a:.3f}" for tss, a in zip(sizes, accuracy, strict=True))
    text = f"S6 accuracy {shown} (failed: below {learned_accuracy:g} at every TSS)"
    return bool(max(accuracy) < learned_accuracy), text


def _gla_s6_fixes_part(means: pd.DataFrame) -> Part:
    sizes = _tss_values(means, "S6", "GLA-S6")
    if not sizes:
        return None, "GLA-S6 beats S6: needs both at one TSS"
    s6, gla_s6 = (_at_tss(means, m, sizes[-1], "test_accuracy") for m in ("S6", "GLA-S6"))
    text = f"accuracy at TSS {sizes[-1]:g}: GLA-S6 {gla_s6:.3f} vs S6 {s6:.3f} (GLA-S6 higher)"
    return bool(gla_s6 > s6), text


def featurisation_verdict(runs: pd.DataFrame, learned_accuracy: float) -> Verdict:
    """E3 from its runs (means over seeds per mixer and TSS; base variants), in three parts:
    (1) from the smallest to the largest TSS, S6's ESS grows by a smaller factor than GLA's,
    and GLA's grows; (2) S6 fails: accuracy below learned_accuracy at every TSS; (3) GLA-S6
    (alpha = 1/sqrt(N)) is more accurate than S6 at the largest TSS. See `combined_verdict`.
    """
    means = seed_means(runs)
    parts = [
        _ess_growth_part(means),
        _s6_fails_part(means, learned_accuracy),
        _gla_s6_fixes_part(means),
    ]
    return combined_verdict(E3_CLAIM, parts)


def grid_text(synthetic: dict, labels: list[Labels]) -> str:
    """E3's grid in words: task, mixers, TSS values and GLA-S6's alphas."""
    task = tasks_text(synthetic, [label for label in labels if label.variant == "base"])
    mixers = ", ".join(unique(label.mixer for label in labels))
    sizes = sorted({label.state_size for label in labels if label.state_size is not None})
    alphas = ", ".join(map(number_text, unique(r.alpha for r in labels if r.alpha is not None)))
    text = f"{task}; mixers {mixers}; TSS {sizes}; GLA-S6 with alpha = 1/sqrt(N)"
    return text + (f" (base) and alpha = {alphas}" if alphas else "")


EXPERIMENT = Experiment(
    name="e3",
    claim=E3_CLAIM,
    figures=("e3_ess_vs_tss",),
    tables=("e3_featurisation",),
    runs=runs,
    verdict=featurisation_verdict,
    grid_text=grid_text,
)
