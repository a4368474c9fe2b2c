"""The synthetic-task experiments (docs/method.md, E1-E5, E7, E8): a run from a plain spec and
the statistics the figures and tables show (the ESS of a trained model: ess.measure).

A run spec is plain JSON (what the workflow config gives and the manifests record):

    {"task": {TaskConfig fields}, "model": {ModelConfig fields}, "train": {TrainConfig fields}}

A model's ESS is the mean over its layers of ess.measure.model_ess. State utilisation is
ESS / TSS, and the memory load of a task (`memory_items`) normalises both: ESS/kv and TSS/kv
for MQAR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ess.models import ModelConfig
from ess.stats import CORRELATION_METHODS, correlation_with_ci, spearman_rows
from ess.tasks import TaskConfig
from ess.train import TrainConfig

FAILURE_MODES = ("learned", "saturation", "collapse")


def run_configs(spec: dict) -> tuple[ModelConfig, TaskConfig, TrainConfig]:
    """The three dataclasses of a run spec {"model": {...}, "task": {...}, "train": {...}}."""
    unknown = set(spec) - {"model", "task", "train"}
    if unknown:
        raise ValueError(f"unknown run spec keys {sorted(unknown)}; allowed: model, task, train")
    train = dict(spec.get("train", {}))
    if train.get("reg_layers") is not None:
        train["reg_layers"] = tuple(train["reg_layers"])
    fields = {"model": spec.get("model", {}), "task": spec.get("task", {}), "train": train}
    configs = []
    classes = (ModelConfig, TaskConfig, TrainConfig)
    for (part, values), cls in zip(fields.items(), classes, strict=True):
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(
                f"unknown {part} field(s) {unknown}; {cls.__name__} has {sorted(allowed)}"
            )
        configs.append(cls(**values))
    return tuple(configs)


def memory_items(task: TaskConfig) -> int:
    """How many items the state must carry to solve the task: the normaliser of ESS/kv.

    MQAR: the key-value pairs; selective copying: the tokens to copy; compression: the L/2
    tokens to reproduce.
    """
    if task.name == "mqar":
        return task.num_kv_pairs
    if task.name == "selective_copying":
        return task.num_tokens_to_copy
    return task.seq_len // 2


# ----------------------------------------------------------------------------------------------
# Statistics over runs (one row per run)


ESS_COLUMNS = ("tss", "ess_tolerance", "ess_entropy", "utilisation")


def model_level(layers: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per run at one tau: the mean over layers. layers: rows of `model_ess` with a
    "run" column. Returns run, tss, ess_tolerance, ess_entropy, utilisation."""
    at_tol = layers[np.isclose(layers["tolerance"], tolerance)]
    if at_tol.empty:
        raise ValueError(
            f"no ESS at tolerance {tolerance}; measured: {sorted(layers['tolerance'].unique())}"
        )
    return at_tol.groupby("run", as_index=False)[list(ESS_COLUMNS)].mean()


def runs_table(
    metrics: pd.DataFrame, layers: pd.DataFrame, tolerance: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run and one per run x layer x tau, both with the run's labels.

    metrics: one row per run (run, labels, memory_items, test scores; a distillation run names
    its teacher's run); layers: rows of `model_ess` with a run column. The run rows get the
    mean over layers at `tolerance` (ESS_COLUMNS), ess_per_item and tss_per_item (ESS/kv and
    TSS/kv for MQAR), and for a student the teacher's ess_tolerance and test_accuracy.
    """
    missing = set(metrics["run"]) ^ set(layers["run"])
    if missing:
        raise ValueError(f"runs without both scores and ESS: {sorted(missing)}")
    runs = metrics.merge(model_level(layers, tolerance), on="run", validate="one_to_one")
    runs["ess_per_item"] = runs["ess_tolerance"] / runs["memory_items"]
    runs["tss_per_item"] = runs["tss"] / runs["memory_items"]
    teachers = runs.set_index("run")[["ess_tolerance", "test_accuracy"]].add_prefix("teacher_")
    runs = runs.join(teachers, on="teacher")
    per_layer = layers.merge(metrics, on="run", validate="many_to_one")
    return runs, per_layer


def correlations(
    runs: pd.DataFrame,
    y: str,
    xs: Sequence[str],
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Correlation of runs[y] with each runs[x] by each method, with bootstrap CIs over runs.

    Returns one row per (x, method): x, method, r, low, high, n.
    """
    rows = []
    for x in xs:
        for method in methods:
            r, low, high = correlation_with_ci(
                runs[x].to_numpy(),
                runs[y].to_numpy(),
                method=method,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
            rows.append(
                {"x": x, "method": method, "r": r, "low": low, "high": high, "n": len(runs)}
            )
    return pd.DataFrame(rows)


def failure_mode(
    accuracy: float, utilisation: float, learned_accuracy: float, saturation_utilisation: float
) -> str:
    """E2's label of one run: "learned" if accuracy >= learned_accuracy, otherwise
    "saturation" (ESS / TSS >= saturation_utilisation: the state is full) or "collapse"
    (the state is there but unused). Both thresholds are ours; the paper gives none."""
    if accuracy >= learned_accuracy:
        return "learned"
    return "saturation" if utilisation >= saturation_utilisation else "collapse"


# ----------------------------------------------------------------------------------------------
# Statistics for the figures
#
# What the synthetic notebooks show, computed from the aggregate tables (`runs_table`): each
# experiment's runs (`experiment_runs`), its numbers, and whether the paper's claim held at
# this scale (a `Verdict`, decided from the numbers by the rule in its function's docstring).

ATTENTION_MIXERS = ("SA", "SWA")
COLUMN_LABELS = {
    "ess_per_item": "ESS/kv",
    "tss_per_item": "TSS/kv",
    "entropy_per_item": "entropy-ESS/kv",
    "test_accuracy": "test accuracy",
}
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


def experiment_runs(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Rows of a runs or layers table whose comma-joined `experiments` name `experiment`."""
    names = runs["experiments"].fillna("").str.split(",")
    return runs[[experiment in row for row in names]].reset_index(drop=True)


def _interval(row: pd.Series) -> str:
    return f"{row['r']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def _undefined_correlation(pairs: pd.DataFrame) -> str:
    """Why the correlation of the two columns of `pairs` is undefined; "" if it is defined."""
    if len(pairs) < 3:
        return f"undefined: {len(pairs)} runs (needs at least 3)"
    constant = [column for column in pairs.columns if pairs[column].nunique() < 2]
    return f"undefined: {', '.join(constant)} constant" if constant else ""


def correlation_table(
    runs: pd.DataFrame,
    y: str,
    xs: Sequence[str],
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`correlations` of runs[y] with each runs[x], defined or not.

    Returns one row per (x, method): x, method, r, low, high, n, note. Runs where x or y is
    NaN or infinite are left out (n counts the rest). Where the correlation is undefined
    (fewer than 3 runs, x or y constant) r, low and high are NaN and note says why, else "".
    """
    tables = []
    for x in xs:
        pairs = runs[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
        note = _undefined_correlation(pairs)
        if note:
            nan = float("nan")
            rows = [(x, m, nan, nan, nan, len(pairs)) for m in methods]
            table = pd.DataFrame(rows, columns=["x", "method", "r", "low", "high", "n"])
        else:
            table = correlations(pairs, y, [x], methods, n_boot, confidence, seed)
        tables.append(table.assign(note=note))
    return pd.concat(tables, ignore_index=True)


def accuracy_correlations(
    runs: pd.DataFrame,
    xs: Sequence[str] = ("ess_per_item", "tss_per_item"),
    methods: Sequence[str] = CORRELATION_METHODS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """E1: `correlation_table` of test_accuracy with each x over runs, per task and, unless
    there is exactly one task, over all runs (task "all").

    runs: one row per run with task, test_accuracy and the xs. Returns task, x, method, r,
    low, high, n, note.
    """
    groups = list(runs.groupby("task", sort=True))
    if len(groups) != 1:
        groups.append(("all", runs))
    tables = [
        correlation_table(group, "test_accuracy", xs, methods, n_boot, confidence, seed).assign(
            task=task
        )
        for task, group in groups
    ]
    table = pd.concat(tables, ignore_index=True)
    return table[["task", *table.columns.drop("task")]]


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of an `accuracy_correlations` table over all its runs: task "all", or the
    only task."""
    tasks = table["task"].unique()
    return table[table["task"] == ("all" if "all" in tasks else tasks[0])]


def correlation_verdict(
    table: pd.DataFrame, better: str, worse: str, method: str = "spearman", claim: str = E1_CLAIM
) -> Verdict:
    """Does accuracy correlate better with `better` than with `worse`?

    table: `correlation_table` rows of one group (x, method, r, low, high, n, note).
    "holds": r(better) > r(worse) with disjoint CIs; "does not hold": r(worse) > r(better) with
    disjoint CIs; "inconclusive (CIs overlap)" otherwise; "undefined" when either r is NaN.
    """
    rows = table[table["method"] == method].set_index("x")
    b, w = rows.loc[better], rows.loc[worse]
    label = {x: COLUMN_LABELS.get(x, x) for x in (better, worse)}
    if np.isnan(b["r"]) or np.isnan(w["r"]):
        notes = "; ".join(f"{label[x]}: {rows.loc[x, 'note']}" for x in (better, worse))
        return Verdict(claim, "undefined", f"{method} r {notes}")
    evidence = (
        f"{method} r = {_interval(b)} with {label[better]} vs {_interval(w)} with "
        f"{label[worse]} over {int(b['n'])} runs"
    )
    if b["low"] > w["high"]:
        verdict = "holds"
    elif w["low"] > b["high"]:
        verdict = "does not hold"
    else:
        verdict = "inconclusive (CIs overlap)"
    return Verdict(claim, verdict, evidence)


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


def collapse_verdict(
    modes: pd.DataFrame, collapsing: Sequence[str] = ("GLA", "WLA"), reference: str = "LA"
) -> Verdict:
    """E2 on each task's hardest difficulty (rows of `failure_mode_table`): the share of
    `collapsing` runs labelled "collapse" against the share of `reference` runs.

    "holds": the collapsing share is above 0 and above the reference's; "does not hold":
    otherwise; "undefined": no collapsing or no reference runs there.
    """
    hard = hardest(modes)
    where = ", ".join(sorted(set(hard["task"] + " " + hard["difficulty"])))
    counts = modes["failure_mode"].value_counts()
    labels = ", ".join(f"{mode} {counts.get(mode, 0)}" for mode in FAILURE_MODES)
    collapsed = {}  # group name -> (runs labelled collapse, runs)
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
    held = k_mine > 0 and k_mine / n_mine > k_theirs / n_theirs
    return Verdict(E2_CLAIM, "holds" if held else "does not hold", evidence)


# The mixers in the order of the figures' legends; each keeps one colour in every figure.
MIXER_ORDER = ("SA", "LA", "WLA", "GLA", "S6", "GLA-S6")


def mixer_colour(mixer: str) -> str:
    """Matplotlib colour "C<k>" of a mixer by its place in MIXER_ORDER; grey for any other."""
    return f"C{MIXER_ORDER.index(mixer)}" if mixer in MIXER_ORDER else "0.3"


def mixer_label(mixer: str, variant: str) -> str:
    """How a mixer pattern and variant are named in figures: "GLA-S6", "GLA-S6 (alpha1)"."""
    return mixer if variant == "base" else f"{mixer} ({variant})"


def seed_means(
    runs: pd.DataFrame,
    by: Sequence[str] = ("mixer", "variant", "state_size"),
    columns: Sequence[str] = ("tss", "ess_tolerance", "utilisation", "test_accuracy"),
) -> pd.DataFrame:
    """Means over seeds: one row per `by` group with n_seeds and the means of `columns`."""
    groups = runs.groupby(list(by), sort=True)
    means = groups[list(columns)].mean()
    return means.assign(n_seeds=groups["seed"].nunique()).reset_index()


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


def regulariser_of(variant: str) -> tuple[float, str]:
    """(lambda, regularised layers) of an E4 variant name: "base" -> (0.0, "all"),
    "reg0.1" -> (0.1, "all"), "reg1-layers0+1" -> (1.0, "0+1")."""
    if variant == "base":
        return 0.0, "all"
    if not variant.startswith("reg"):
        raise ValueError(f"{variant!r} is not a regulariser variant (base or reg<lambda>...)")
    strength, _, layers = variant.removeprefix("reg").partition("-layers")
    return float(strength), layers or "all"


def regulariser_table(runs: pd.DataFrame) -> pd.DataFrame:
    """E4 runs with reg_lambda and reg_layers ("all" or the regularised layers, "0+1"),
    sorted by mixer, layers, lambda and seed."""
    regulariser = [regulariser_of(variant) for variant in runs["variant"]]
    columns = ["reg_lambda", "reg_layers"]
    table = runs.join(pd.DataFrame(regulariser, columns=columns, index=runs.index))
    order = ["mixer", "reg_layers", "reg_lambda", "seed"]
    return table.sort_values(order, key=_all_first).reset_index(drop=True)


def _all_first(column: pd.Series) -> pd.Series:
    return column.replace({"all": ""}) if column.name == "reg_layers" else column


def reference_runs(runs: pd.DataFrame, like: pd.DataFrame, mixer: str = "LA") -> pd.DataFrame:
    """The base runs of `mixer` at the task, difficulty, state_size and seed of any row of
    `like` (e.g. E4's LA reference among the E1 runs)."""
    keys = ["task", "difficulty", "state_size", "seed"]
    candidates = runs[(runs["mixer"] == mixer) & (runs["variant"] == "base")]
    return candidates.merge(like[keys].drop_duplicates(), on=keys).reset_index(drop=True)


def regulariser_verdict(table: pd.DataFrame, reference: pd.DataFrame) -> Verdict:
    """E4 at the largest lambda on all layers against lambda = 0, per mixer (means over seeds
    of `regulariser_table` rows), in two parts: (1) utilisation (ESS/TSS) rises for every
    mixer; (2) accuracy is above the reference's (`reference_runs`, mean) for every mixer.
    See `combined_verdict`."""
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
    return combined_verdict(E4_CLAIM, parts)


DISTILLATION_COLUMNS = [
    "run",
    "task",
    "difficulty",
    "seed",
    "teacher",
    "teacher_ess_tolerance",
    "teacher_test_accuracy",
    "state_size",
    "tss",
    "ess_tolerance",
    "test_accuracy",
    "test_distillation_loss",
]


def distillation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """E5's students (runs with a teacher): DISTILLATION_COLUMNS, by teacher and student TSS."""
    students = runs.loc[runs["teacher"].notna(), DISTILLATION_COLUMNS]
    return students.sort_values(["teacher", "state_size"]).reset_index(drop=True)


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
    (largest first), with entropy-ESS/kv and with TSS/kv.

    layers: per run x layer x tau rows (synthetic_layers) of the runs to correlate over, with
    task, memory_items and test_accuracy. Returns measure ("tolerance-ESS", "entropy-ESS",
    "TSS"), tolerance (NaN but for tolerance-ESS), task, x, method, r, low, high, n, note.
    """
    labels = layers.groupby("run")[["task", "memory_items", "test_accuracy"]].first()
    boot = {"methods": methods, "n_boot": n_boot, "confidence": confidence, "seed": seed}
    taus = sorted(layers["tolerance"].unique(), reverse=True)
    tables = []
    for tau in taus:
        level = _per_item(model_level(layers, tau), labels)
        table = accuracy_correlations(level, ["ess_per_item"], **boot)
        tables.append(table.assign(measure="tolerance-ESS", tolerance=tau))
    level = _per_item(model_level(layers, taus[0]), labels)
    for measure, x in (("entropy-ESS", "entropy_per_item"), ("TSS", "tss_per_item")):
        table = accuracy_correlations(level, [x], **boot)
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


def smoothed_curves(curves: pd.DataFrame, window: int) -> pd.DataFrame:
    """Training curves (run, step, loss, accuracy, ...) with loss and accuracy replaced by
    their trailing means over `window` steps, per run (fewer at a run's start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    curves = curves.sort_values(["run", "step"]).reset_index(drop=True)
    rolling = curves.groupby("run")[["loss", "accuracy"]].rolling(window, min_periods=1).mean()
    curves[["loss", "accuracy"]] = rolling.reset_index(level=0, drop=True)
    return curves


# Caption text: the config behind an experiment's numbers


def default_settings(config: str | Path = "config/config.yaml") -> dict:
    """The `settings` the workflow passes to the synthetic notebooks (see synthetic.smk), read
    from a config file, for a notebook run by hand: synthetic, tolerance, relative, stats."""
    values = yaml.safe_load(Path(config).read_text())
    return {
        "synthetic": values["synthetic"],
        "tolerance": values["ess"]["tolerance"],
        "relative": values["ess"]["relative"],
        "stats": values["stats"],
    }


def _number(value: float | str) -> str:
    """A config number as text; float() first, as papermill -y reads the notebooks' JSON
    parameters as YAML 1.1, where 1e-05 (no dot) is a string."""
    return f"{float(value):g}"


def _task_text(synthetic: dict, task: str, difficulties: Sequence[str]) -> str:
    spec = synthetic["tasks"][task]
    levels = ", ".join(
        d + " (" + ", ".join(f"{k}={v}" for k, v in spec["difficulties"][d].items()) + ")"
        for d in difficulties
    )
    common = spec.get("common", {})
    shape = ", ".join(f"{k}={common[k]}" for k in ("seq_len", "vocab_size") if k in common)
    return f"{task} {levels}" + (f", {shape}" if shape else "")


def _grid_text(synthetic: dict, experiment: str) -> str:
    """The grid of one experiment (its config section) as text."""
    if experiment in ("e1", "e2", "e8"):
        e1 = synthetic["e1"]
        tasks = "; ".join(_task_text(synthetic, t, d) for t, d in e1["tasks"].items())
        attention = [m for m in e1["mixers"] if m.upper() in ATTENTION_MIXERS]
        cache = f" ({', '.join(attention)}: the KV cache)" if attention else ""
        return f"{tasks}; mixers {', '.join(e1['mixers'])}; TSS {e1['state_sizes']}{cache}"
    e = synthetic[experiment]
    if experiment == "e5":
        difficulties = _task_text(synthetic, e["task"], e["teacher_difficulties"])
        return (
            f"{difficulties}; {e['mixer']} teachers with TSS {e['teacher_state_size']}, "
            f"students with TSS {e['student_state_sizes']}; distillation weight "
            f"{_number(e['distill_weight'])}, temperature {_number(e['temperature'])}"
        )
    task = _task_text(synthetic, e["task"], [e["difficulty"]])
    if experiment == "e3":
        alphas = ", ".join(map(_number, e["alphas"]))
        return (
            f"{task}; mixers {', '.join(e['mixers'])}; TSS {e['state_sizes']}; GLA-S6 with "
            f"alpha = 1/sqrt(N) (base) and alpha = {alphas}"
        )
    if experiment == "e4":
        lambdas = ", ".join(map(_number, e["lambdas"]))
        return (
            f"{task}; mixers {', '.join(e['mixers'])}; TSS {e['state_size']}; lambda 0 (the E1 "
            f"run), {lambdas} on all layers, {_number(max(map(float, e['lambdas'])))} on layers "
            f"{e['layer_sets']}"
        )
    if experiment == "e7":
        return f"{task}; TSS {e['state_size']}; patterns {', '.join(e['patterns'])}"
    raise ValueError(f"no grid text for experiment {experiment!r}")


def settings_text(settings: dict, experiment: str | None = None) -> str:
    """The config behind an experiment's numbers as caption text: its grid (tasks and
    difficulties, mixers, TSS values), seeds, training, model size and tau.

    settings: the notebooks' settings {"synthetic": the config section, "tolerance": tau,
    "relative": bool, "stats": {...}}; experiment: "e1".."e8", or None for every run.
    {} gives "".
    """
    if not settings:
        return ""
    s = settings["synthetic"]
    seeds = s["seeds"]
    seed_text = f"seeds {seeds}"
    if len(seeds) == 1:
        seed_text += " (a single seed: no spread over seeds)"
    # the config gives only what differs from the dataclasses' defaults
    train = {**dataclasses.asdict(TrainConfig()), **s["train"]}
    model = {**dataclasses.asdict(ModelConfig()), **s["model"]}
    mode = "relative" if settings["relative"] else "absolute"
    parts = [_grid_text(s, experiment)] if experiment else []
    parts += [
        seed_text,
        f"{train['steps']} training steps, batch {train['batch_size']}, lr {_number(train['lr'])}",
        f"d_model {model['d_model']}, {model['n_layers']} layers, {model['n_heads']} head(s)",
        f"ESS over {s['ess']['n_sequences']} test sequences, tolerance-ESS tau = "
        f"{_number(settings['tolerance'])} ({mode})",
    ]
    if experiment == "e2":
        e2 = s["e2"]
        parts.append(
            f"learned: accuracy >= {_number(e2['learned_accuracy'])}; saturation: ESS/TSS >= "
            f"{_number(e2['saturation_utilisation'])}"
        )
    if experiment in ("e1", "e8"):
        stats = settings["stats"]
        parts.append(
            f"{stats['n_boot']} bootstrap resamples over runs, {stats['confidence']:.0%} CIs"
        )
    if experiment == "e8":
        parts.append(f"tau swept over {', '.join(map(_number, s['ess']['tolerances']))}")
    return "; ".join(parts)
