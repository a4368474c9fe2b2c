"""E5: students distilled from a larger teacher keep more of its ESS (docs/method.md §4)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from ess.paper.stats import spearman_rows
from ess.paper.synthetic.captions import number_text, tasks_text, unique
from ess.paper.synthetic.grid import (
    Experiment,
    Labels,
    run_key,
    run_labels,
)
from ess.paper.synthetic.verdicts import Verdict


def runs(synthetic: dict) -> Iterator[tuple[Labels, dict, dict]]:
    """E5: a teacher per difficulty and seed, and students of each TSS distilled from it."""
    e5 = synthetic["e5"]
    distillation = {
        "distill_weight": e5["distill_weight"],
        "distill_temperature": e5["temperature"],
    }
    for difficulty in e5["teacher_difficulties"]:
        for seed in synthetic["seeds"]:
            common = (e5["task"], difficulty, e5["mixer"])
            teacher = run_labels(*common, e5["teacher_state_size"], seed)
            yield teacher, {"state_size": e5["teacher_state_size"]}, {}
            for state_size in e5["student_state_sizes"]:
                variant = f"distil-tss{e5['teacher_state_size']}"
                student = run_labels(*common, state_size, seed, variant, teacher=run_key(teacher))
                yield student, {"state_size": state_size}, distillation


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


E5_CLAIM = "the higher the teacher's ESS, the harder it is to distil into a small state"


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


def grid_text(synthetic: dict, labels: list[Labels]) -> str:
    """E5's grid in words: teachers, students' TSS, the distillation's weight and temperature."""
    mixers = ", ".join(unique(label.mixer for label in labels))
    teachers = [label for label in labels if label.teacher is None]
    students = sorted({label.state_size for label in labels if label.teacher is not None})
    e5 = synthetic["e5"]
    return (
        f"{tasks_text(synthetic, teachers)}; {mixers} teachers with TSS "
        f"{', '.join(str(t) for t in unique(t.state_size for t in teachers))}, students "
        f"with TSS {students}; distillation weight {number_text(e5['distill_weight'])}, "
        f"temperature {number_text(e5['temperature'])}"
    )


EXPERIMENT = Experiment(
    name="e5",
    claim=E5_CLAIM,
    figures=("e5_distillation",),
    tables=("e5_distillation_runs",),
    runs=runs,
    verdict=distillation_verdict,
    grid_text=grid_text,
)
