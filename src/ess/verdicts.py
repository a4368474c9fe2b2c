"""Whether each claim of the paper held at this scale (docs/method.md §4, E1-E5, E7, E8).

Every verdict is decided from the numbers of ess.synthetic's tables by the rule in its
function's docstring, with nothing tuned toward the paper's answer. A `Verdict` carries the
claim, the verdict ("holds", "partly holds (k of n parts)", "does not hold", "inconclusive
(why)" or "undefined (why)") and the evidence it was decided from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ess.experiments import ATTENTION_MIXERS
from ess.publish import interval_text
from ess.stats import positive_verdict, spearman_rows
from ess.synthetic import (
    COLUMN_LABELS,
    FAILURE_MODES,
    difference_name,
    failure_mode,
    hardest,
    pooled,
    seed_means,
)

E1_CLAIM = "test accuracy correlates much better with ESS/kv than with TSS/kv"


E2_CLAIM = "GLA and WLA collapse (ESS far below TSS) on hard settings, LA less so"


E3_CLAIM = (
    "S6's ESS stalls or falls as TSS grows and S6 fails MQAR, GLA's ESS grows with TSS, and "
    "GLA-S6 (normalisation alpha = 1/sqrt(N)) fixes S6"
)


E4_CLAIM = (
    "the regulariser lambda ||A - I||_F counters collapse, and regularised GLA/WLA beat LA on "
    "hard settings"
)


E5_CLAIM = "the higher the teacher's ESS, the harder it is to distil into a small state"


E7_CLAIM = "ESS per layer explains topology choices: no attention in the first layer"


E8_CLAIM = "none (the paper did not analyse tau); here: E1's verdict does not depend on tau"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a claim of the paper held at this scale.

    verdict: "holds", "partly holds (k of n parts)", "does not hold", "inconclusive (why)" or
    "undefined (why)"; evidence: the numbers it was decided from.
    """

    claim: str
    verdict: str
    evidence: str

    def sentence(self) -> str:
        """The verdict as caption text."""
        return f"Paper's claim: {self.claim}. At this scale: {self.verdict} ({self.evidence})."


Part = tuple[bool | None, str]  # one part of a claim: held (None: undefined) and its evidence


def combined_verdict(claim: str, parts: Sequence[Part]) -> Verdict:
    """A claim of several parts: "holds" if every part held, "does not hold" if none did,
    "partly holds (k of n parts)" otherwise, "undefined (...)" if any part is undefined."""
    answer = {True: "yes", False: "no", None: "undefined"}
    evidence = "; ".join(f"({i}) {text}: {answer[held]}" for i, (held, text) in enumerate(parts, 1))
    held = [h for h, _ in parts]
    undefined = [str(i) for i, h in enumerate(held, 1) if h is None]
    if undefined:
        verdict = f"undefined (part {', '.join(undefined)})"
    elif all(held):
        verdict = "holds"
    elif not any(held):
        verdict = "does not hold"
    else:
        verdict = f"partly holds ({sum(held)} of {len(held)} parts)"
    return Verdict(claim, verdict, evidence)


def correlation_verdict(
    table: pd.DataFrame, better: str, worse: str, method: str = "spearman", claim: str = E1_CLAIM
) -> Verdict:
    """Does accuracy correlate better with `better` than with `worse`? Decided by the paired
    difference r(better) - r(worse) and its cell-bootstrap interval (docs/method.md E1).

    table: `accuracy_correlations(..., paired=(better, worse))` rows of one group: the two
    correlation rows and the difference row (x `difference_name(better, worse)`).
    "holds": the difference's interval lies above 0; "does not hold": below 0; "inconclusive
    (the difference's interval contains 0)" otherwise, with the cells (and runs) that would
    decide it at the observed difference; "undefined" when a correlation is NaN.
    """
    rows = table[table["method"] == method].set_index("x")
    name = difference_name(better, worse)
    if name not in rows.index:
        raise ValueError(f"no paired-difference row {name!r}: use accuracy_correlations(paired=)")
    b, w, d = rows.loc[better], rows.loc[worse], rows.loc[name]
    label = {x: COLUMN_LABELS.get(x, x) for x in (better, worse)}
    if np.isnan(b["r"]) or np.isnan(w["r"]) or np.isnan(d["r"]):
        notes = "; ".join(f"{label[x]}: {rows.loc[x, 'note']}" for x in (better, worse))
        return Verdict(claim, "undefined", f"{method} r {notes}")
    evidence = (
        f"{method} r = {interval_text(b['r'], b['low'], b['high'])} with {label[better]} vs "
        f"{interval_text(w['r'], w['low'], w['high'])} with {label[worse]} over "
        f"{int(b['n'])} runs; paired difference {interval_text(d['r'], d['low'], d['high'])} "
        f"(cells of seeds resampled, {int(d['cells'])} cells)"
    )
    verdict = positive_verdict(d["low"], d["high"])
    if verdict == "not shown":
        needed = d["cells_to_decide"]
        if np.isfinite(needed):
            evidence += (
                f"; at this difference about {int(needed)} cells ({int(d['runs_to_decide'])} "
                f"runs) would decide it"
            )
        return Verdict(claim, "inconclusive (the difference's interval contains 0)", evidence)
    return Verdict(claim, "holds" if verdict == "held" else "does not hold", evidence)


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


def distillation_verdict(students: pd.DataFrame) -> Verdict:
    """E5: at each student TSS and seed, the Spearman correlation over teachers of the
    teacher's ESS with the student's distillation loss (> 0: more teacher ESS, harder to
    distil). "holds": > 0 at every student TSS and seed; "does not hold": at none; "partly
    holds (k of n)": at some; "undefined": no group with two teachers of different ESS."""
    rhos = {}
    for (tss, seed), group in students.groupby(["state_size", "seed"]):
        x = group["teacher_ess_tolerance"].to_numpy(dtype=np.float64)
        y = group["test_distillation_loss"].to_numpy(dtype=np.float64)
        if len(group) >= 2 and np.all(np.isfinite(x) & np.isfinite(y)):
            rho = float(spearman_rows(x, y))
            if np.isfinite(rho):
                rhos[(tss, seed)] = rho
    teachers = students.groupby("teacher")[["teacher_ess_tolerance", "teacher_test_accuracy"]]
    shown = ", ".join(
        f"{teacher} ESS {row.teacher_ess_tolerance:.2f} (accuracy {row.teacher_test_accuracy:.3f})"
        for teacher, row in teachers.first().iterrows()
    )
    if not rhos:
        return Verdict(
            E5_CLAIM,
            "undefined",
            f"no student TSS with two teachers of different ESS; teachers: {shown}",
        )
    rises = sum(rho > 0 for rho in rhos.values())
    per_tss = ", ".join(f"TSS {tss:g} seed {seed}: {rho:+.2f}" for (tss, seed), rho in rhos.items())
    evidence = f"Spearman rho of teacher ESS with distillation loss: {per_tss}; teachers: {shown}"
    if rises == len(rhos):
        verdict = "holds"
    elif rises == 0:
        verdict = "does not hold"
    else:
        verdict = f"partly holds ({rises} of {len(rhos)} student TSS and seeds)"
    return Verdict(E5_CLAIM, verdict, evidence)


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
