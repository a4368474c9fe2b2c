"""Where the paper's results live, one home for both groups (the synthetic experiments and E6):
what each publishes, the aggregate tables its notebooks read, and the paths of result files.

The rules (workflow/rules/*.smk), the run plan (ess.paper.plan) and the tests read them from
here. Torch-free.
"""

from __future__ import annotations

from ess.paper.synthetic.experiments import published
from ess.paper.synthetic.grid import Run

# What each kind of published result is written as (results/figures/<name>.png, ...).
FORMATS = {"figure": ("png", "pdf"), "table": ("csv", "md", "tex")}
FOLDERS = {"figure": "results/figures", "table": "results/tables"}

# E6 publishes these, one notebook each (notebooks/<name>.ipynb).
E6_FIGURES = ("e6_delimiter_traces", "e6_boundary_profile", "e6_drop_by_layer", "e6_drop_vs_recall")
E6_TABLES = ("e6_delimiter_drop", "e6_hierarchy", "e6_drop_by_tau")
E6_KEY_TABLE = "results/tables/e6_delimiter_drop.csv"  # the one results/summary.md shows

E6_AGGREGATE = {
    # ESS per evaluated split position, mean over the heads/channels of each layer
    "traces": "results/aggregate/e6_traces.parquet",
    # one row per boundary, layer (-1 = mean over layers), control and ESS kind
    "boundaries": "results/aggregate/e6_boundary_drops.parquet",
    # drop_vs_control per layer, bootstrap CI over boundaries (and seeds)
    "by_layer": "results/aggregate/e6_drop_by_layer.parquet",
    "by_layer_csv": "results/aggregate/e6_drop_by_layer.csv",
    # the same on the mean over layers, at every tau and entropy-ESS, with each model's recall
    "by_model": "results/aggregate/e6_drop.parquet",
    "by_model_csv": "results/aggregate/e6_drop.csv",
    # correlation of the drop with recall over the models whose recall is measured
    "correlation": "results/aggregate/e6_recall_correlation.parquet",
    "correlation_csv": "results/aggregate/e6_recall_correlation.csv",
    # mean ESS at each offset from the delimiter, per layer group and condition
    "profile": "results/aggregate/e6_boundary_profile.parquet",
    "profile_csv": "results/aggregate/e6_boundary_profile.csv",
    # Kendall's tau of the drops of e6.hierarchy against its stated order
    "hierarchy": "results/aggregate/e6_hierarchy.parquet",
    "hierarchy_csv": "results/aggregate/e6_hierarchy.csv",
}
SYNTHETIC_AGGREGATE = {
    # one row per run: labels, test scores, mean over layers at ess.tolerance
    "runs": "results/aggregate/synthetic_runs.parquet",
    # one row per run x layer x tau of synthetic.ess.tolerances
    "layers": "results/aggregate/synthetic_layers.parquet",
    # one row per run x training step: loss, accuracy, lr
    "curves": "results/aggregate/synthetic_curves.parquet",
}
# What each group's notebooks read: its aggregate's parquet tables (each CSV is a copy of one)
NOTEBOOK_INPUTS = {
    "e6": {name: path for name, path in E6_AGGREGATE.items() if path.endswith(".parquet")},
    "synthetic": SYNTHETIC_AGGREGATE,
}


def published_names(runs: dict[str, Run]) -> dict[tuple[str, str], list[str]]:
    """{(group, kind): names}: the figures and tables of E6 and of the synthetic experiments
    that have runs (ess.paper.synthetic.experiments.published)."""
    figures, tables = published(runs)
    return {
        ("e6", "figure"): list(E6_FIGURES),
        ("e6", "table"): list(E6_TABLES),
        ("synthetic", "figure"): figures,
        ("synthetic", "table"): tables,
    }


def result_paths(kind: str, name: str) -> list[str]:
    """The files of one published figure or table: results/figures/<name>.png, ..."""
    return [f"{FOLDERS[kind]}/{name}.{ext}" for ext in FORMATS[kind]]


def task_split_path(task: str, difficulty: str, split: str) -> str:
    """The cached split of a task at a difficulty: results/tasks/<task>/<difficulty>/<split>."""
    return f"results/tasks/{task}/{difficulty}/{split}.safetensors"


def run_path(key: str, name: str) -> str:
    """results/train/<run key>/<name>: model.safetensors, curves.csv, metrics.json, ess.parquet."""
    return f"results/train/{key}/{name}"


def run_inputs(run: Run) -> dict:
    """What a run's training reads: its task's train and test splits, and its teacher's
    checkpoint (a list: empty unless the run distils)."""
    labels = run.labels
    splits = {s: task_split_path(labels.task, labels.difficulty, s) for s in ("train", "test")}
    teacher = [run_path(labels.teacher, "model.safetensors")] if labels.teacher else []
    return {**splits, "teacher": teacher}
