"""The design of the synthetic experiments (docs/method.md §4, E1-E5, E7, E8): which training
runs each one needs, resolved from the config's `synthetic` section into typed runs.

`synthetic_grid(synthetic)` expands every configured experiment into runs, {key: Run}. A run is
one training of one model on one task; experiments that need the same run share it (E1, E2 and
E8 share all of theirs). A key is also the run's results path:

    {task}/{difficulty}/{mixer pattern}/{tss}/{variant}/seed{seed}

where tss is "tss<N>" or "kvcache" (attention only: no state of fixed size) and variant is
"base" or names what differs from the E1 run (E3's alpha, E4's regulariser, E5's teacher).
A run carries its spec (the plain JSON of `run_configs`, what the train job receives and its
manifest records) and its labels (the columns of the runs table), both structured: nothing is
parsed back from a key or a variant name.

This module imports no torch at import time: the workflow expands the grid before any job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ess.models import ModelConfig
    from ess.tasks import TaskConfig
    from ess.train import TrainConfig

ATTENTION_MIXERS = ("SA", "SWA")
EXPERIMENTS = ("e1", "e2", "e3", "e4", "e5", "e7", "e8")
# What each experiment publishes (results/figures/<name>.{png,pdf}, results/tables/<name>.{csv,
# md,tex}); "runs" is every run, published whenever there is one.
FIGURES = {
    "e1": ("e1_accuracy_vs_ess",),
    "e2": ("e2_state_utilisation",),
    "e3": ("e3_ess_vs_tss",),
    "e4": ("e4_regulariser",),
    "e5": ("e5_distillation",),
    "e7": ("e7_hybrid_layers",),
    "e8": ("e8_tolerance_sensitivity",),
    "runs": ("synthetic_training_curves",),
}
TABLES = {
    "e1": ("e1_correlations",),
    "e2": ("e2_failure_modes",),
    "e3": ("e3_featurisation",),
    "e4": ("e4_regulariser_runs",),
    "e5": ("e5_distillation_runs",),
    "e7": ("e7_hybrids",),
    "e8": ("e8_tolerance_correlations",),
    "runs": ("synthetic_runs",),
}


@dataclasses.dataclass(frozen=True)
class Labels:
    """What a run is, as the runs table's columns.

    state_size: N of the recurrent layers, None for attention only (its KV cache grows with
    the position); teacher: the key of a distillation run's teacher; reg_lambda, reg_layers:
    E4's regulariser and the layers it acts on (None: all); alpha: E3's GLA-S6 normalisation
    (None: the default 1/sqrt(N)).
    """

    task: str
    difficulty: str
    mixer: str
    state_size: int | None
    seed: int
    variant: str = "base"
    teacher: str | None = None
    reg_lambda: float = 0.0
    reg_layers: tuple[int, ...] | None = None
    alpha: float | None = None

    def job_labels(self) -> dict:
        """The labels the train job writes into its metrics.json."""
        fields = ("task", "difficulty", "mixer", "state_size", "seed", "variant", "teacher")
        return {name: getattr(self, name) for name in fields}

    def table_labels(self) -> dict:
        """The structured labels the aggregate adds: reg_lambda, reg_layers ("all" or the
        regularised layers joined by "+", "0+1") and alpha."""
        layers = "all" if self.reg_layers is None else "+".join(map(str, self.reg_layers))
        return {"reg_lambda": self.reg_lambda, "reg_layers": layers, "alpha": self.alpha}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: key (its results path), spec ({"task", "model", "train"} fields of
    `run_configs`), labels, and the experiments that use it (in config order)."""

    key: str
    spec: dict
    labels: Labels
    experiments: tuple[str, ...]


def attention_only(pattern: str) -> bool:
    """True when no layer of the pattern has a state of fixed size (TSS is then ignored)."""
    return all(kind.strip().upper() in ATTENTION_MIXERS for kind in pattern.split(","))


def task_fields(synthetic: dict, task: str, difficulty: str, where: str) -> dict:
    """TaskConfig fields of `task` at `difficulty`; `where` names the config key that asked."""
    tasks = synthetic["tasks"]
    if task not in tasks:
        raise ValueError(
            f"config key {where} names task {task!r}, which is not a key of synthetic.tasks "
            f"({', '.join(tasks) or 'none'})"
        )
    if difficulty not in tasks[task]["difficulties"]:
        raise ValueError(
            f"config key {where} names difficulty {difficulty!r}, which is not a key of "
            f"synthetic.tasks.{task}.difficulties ({', '.join(tasks[task]['difficulties'])})"
        )
    return {
        "name": task,
        **tasks[task].get("common", {}),
        **tasks[task]["difficulties"][difficulty],
    }


def cell_key(labels: Labels) -> str:
    """The run's cell, every label but the seed: {task}/{difficulty}/{mixer}/{tss}/{variant}."""
    tss = "kvcache" if labels.state_size is None else f"tss{labels.state_size}"
    mixer = labels.mixer.replace(",", "+")
    return f"{labels.task}/{labels.difficulty}/{mixer}/{tss}/{labels.variant}"


def run_key(labels: Labels) -> str:
    """The run's results path: {cell}/seed{seed}."""
    return f"{cell_key(labels)}/seed{labels.seed}"


def difficulty_train_fields(synthetic: dict, task: str, difficulty: str) -> dict:
    """TrainConfig fields that synthetic.tasks.<task>.train sets for the runs of `difficulty`
    (for example more steps for a task that is learned later), over synthetic.train."""
    return synthetic["tasks"][task].get("train", {}).get(difficulty, {})


def run_spec(synthetic: dict, labels: Labels, where: str, model: dict, train: dict) -> dict:
    """The spec of a run: the shared synthetic.model / synthetic.train fields, the run's
    difficulty's own train fields, its pattern and seed, then `model` (with the state size:
    attention ignores it) and `train` on top."""
    task = task_fields(synthetic, labels.task, labels.difficulty, where)
    spec = {
        "task": task,
        "model": {**synthetic["model"], "layers": labels.mixer, **model},
        "train": {
            **synthetic["train"],
            **difficulty_train_fields(synthetic, labels.task, labels.difficulty),
            "seed": labels.seed,
            **train,
        },
    }
    spec["model"].setdefault("vocab_size", task.get("vocab_size", 64))
    return spec


def _e1_runs(synthetic: dict) -> Iterator[tuple[str, Labels, dict, dict]]:
    """E1 (shared by E2 and E8): every task difficulty x mixer x TSS x seed; attention once."""
    e1 = synthetic["e1"]
    for task, difficulties in e1["tasks"].items():
        for difficulty in difficulties:
            for mixer in e1["mixers"]:
                sizes = e1["state_sizes"][:1] if attention_only(mixer) else e1["state_sizes"]
                for state_size in sizes:
                    for seed in synthetic["seeds"]:
                        labels = _labels(task, difficulty, mixer, state_size, seed)
                        for experiment in ("e1", "e2", "e8"):
                            yield experiment, labels, {"state_size": state_size}, {}


def _e3_runs(synthetic: dict) -> Iterator[tuple[str, Labels, dict, dict]]:
    """E3: S6, GLA and GLA-S6 over TSS; GLA-S6 again at each alpha of e3.alphas."""
    e3 = synthetic["e3"]
    for mixer in e3["mixers"]:
        for state_size in e3["state_sizes"]:
            for seed in synthetic["seeds"]:
                common = (e3["task"], e3["difficulty"], mixer, state_size, seed)
                model = {"state_size": state_size}
                yield "e3", _labels(*common), model, {}
                if mixer.upper() == "GLA-S6":
                    for alpha in e3["alphas"]:
                        labels = _labels(*common, variant=f"alpha{alpha:g}", alpha=alpha)
                        yield "e3", labels, {**model, "gla_s6_alpha": alpha}, {}


def _e4_runs(synthetic: dict) -> Iterator[tuple[str, Labels, dict, dict]]:
    """E4: each mixer without the regulariser (the E1 run), at each lambda on every layer,
    and at the largest lambda on each of e4.layer_sets only."""
    e4 = synthetic["e4"]
    for mixer in e4["mixers"]:
        for seed in synthetic["seeds"]:
            common = (e4["task"], e4["difficulty"], mixer, e4["state_size"], seed)
            model = {"state_size": e4["state_size"]}
            yield "e4", _labels(*common), model, {}
            for reg in e4["lambdas"]:
                labels = _labels(*common, variant=f"reg{reg:g}", reg_lambda=reg)
                yield "e4", labels, model, {"reg_lambda": reg}
            reg = max(e4["lambdas"])
            for layers in e4["layer_sets"]:
                variant = f"reg{reg:g}-layers{'+'.join(map(str, layers))}"
                labels = _labels(*common, variant, reg_lambda=reg, reg_layers=tuple(layers))
                yield "e4", labels, model, {"reg_lambda": reg, "reg_layers": layers}


def _e5_runs(synthetic: dict) -> Iterator[tuple[str, Labels, dict, dict]]:
    """E5: a teacher per difficulty and seed, and students of each TSS distilled from it."""
    e5 = synthetic["e5"]
    distillation = {
        "distill_weight": e5["distill_weight"],
        "distill_temperature": e5["temperature"],
    }
    for difficulty in e5["teacher_difficulties"]:
        for seed in synthetic["seeds"]:
            common = (e5["task"], difficulty, e5["mixer"])
            teacher = _labels(*common, e5["teacher_state_size"], seed)
            yield "e5", teacher, {"state_size": e5["teacher_state_size"]}, {}
            for state_size in e5["student_state_sizes"]:
                variant = f"distil-tss{e5['teacher_state_size']}"
                student = _labels(*common, state_size, seed, variant, teacher=run_key(teacher))
                yield "e5", student, {"state_size": state_size}, distillation


def _e7_runs(synthetic: dict) -> Iterator[tuple[str, Labels, dict, dict]]:
    """E7: each hybrid layer pattern at one TSS."""
    e7 = synthetic["e7"]
    for pattern in e7["patterns"]:
        for seed in synthetic["seeds"]:
            labels = _labels(e7["task"], e7["difficulty"], pattern, e7["state_size"], seed)
            yield "e7", labels, {"state_size": e7["state_size"]}, {}


def _labels(task, difficulty, mixer, state_size, seed, variant="base", **structured) -> Labels:
    size = None if attention_only(mixer) else state_size
    return Labels(task, difficulty, mixer, size, seed, variant, **structured)


EXPERIMENT_RUNS = {
    "e1": _e1_runs,
    "e3": _e3_runs,
    "e4": _e4_runs,
    "e5": _e5_runs,
    "e7": _e7_runs,
}


def synthetic_grid(synthetic: dict) -> dict[str, Run]:
    """Every run of every experiment configured in `synthetic` (the config section):
    {key: Run}, in config order; a run shared by experiments is listed once with all of them."""
    specs, labels_of, experiments = {}, {}, {}
    for name, runs_of in EXPERIMENT_RUNS.items():
        if name not in synthetic:
            continue
        for experiment, labels, model, train in runs_of(synthetic):
            key = run_key(labels)
            if key not in specs:
                where = f"synthetic.{experiment}"
                specs[key] = run_spec(synthetic, labels, where, model, train)
                labels_of[key] = labels
            experiments.setdefault(key, []).append(experiment)
    return {key: Run(key, specs[key], labels_of[key], tuple(experiments[key])) for key in specs}


def experiment_labels(synthetic: dict, experiment: str) -> list[Labels]:
    """The labels of one experiment's runs in its own grid order (shared runs included)."""
    owner = "e1" if experiment in ("e2", "e8") else experiment
    runs = EXPERIMENT_RUNS[owner](synthetic) if owner in synthetic else []
    return list(dict.fromkeys(labels for name, labels, _, _ in runs if name == owner))


def run_configs(spec: dict) -> tuple[ModelConfig, TaskConfig, TrainConfig]:
    """The three dataclasses of a run spec {"model": {...}, "task": {...}, "train": {...}}."""
    from ess.models import ModelConfig
    from ess.tasks import TaskConfig
    from ess.train import TrainConfig

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


def check_runs(runs: dict[str, Run], tolerance: float, tolerances: Sequence[float]) -> None:
    """Build every run's dataclasses now, so that a bad field fails before any job runs; the
    main tau (ess.tolerance) must be one the runs measure (synthetic.ess.tolerances)."""
    for key, run in runs.items():
        try:
            run_configs(run.spec)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"synthetic run {key} ({', '.join(run.experiments)}): {error}"
            ) from None
    if runs and not any(abs(t - tolerance) <= 1e-12 for t in tolerances):
        raise ValueError(
            f"config key ess.tolerance = {tolerance} must be one of synthetic.ess.tolerances "
            f"{list(tolerances)} (the synthetic figures use it)"
        )


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


def published(runs: dict[str, Run]) -> tuple[list[str], list[str]]:
    """(figure names, table names) of the experiments that have runs, in EXPERIMENTS order,
    then the every-run figure and table."""
    used = {experiment for run in runs.values() for experiment in run.experiments}
    chosen = [e for e in EXPERIMENTS if e in used] + (["runs"] if runs else [])
    return (
        [name for e in chosen for name in FIGURES[e]],
        [name for e in chosen for name in TABLES[e]],
    )


# ---------------------------------------------------------------------------------------------
# Where a run's files live (the workflow's results layout)


def task_split_path(task: str, difficulty: str, split: str) -> str:
    """The cached split of a task at a difficulty: results/tasks/<task>/<difficulty>/<split>."""
    return f"results/tasks/{task}/{difficulty}/{split}.safetensors"


def run_path(key: str, name: str) -> str:
    """results/train/<run key>/<name>: model.safetensors, curves.csv, metrics.json, ess.parquet."""
    return f"results/train/{key}/{name}"


def cells(runs: dict[str, Run], seeds: Sequence[int]) -> dict[str, list[str]]:
    """The runs grouped by cell (`cell_key`): {cell: [key of each seed]}, seeds in `seeds`
    order. Every experiment trains each of its settings once per seed of synthetic.seeds, so
    every cell has exactly those seeds (checked here)."""
    grouped: dict[str, dict[int, str]] = {}
    for key, run in runs.items():
        grouped.setdefault(cell_key(run.labels), {})[run.labels.seed] = key
    for cell, by_seed in grouped.items():
        if sorted(by_seed) != sorted(seeds):
            raise ValueError(
                f"synthetic cell {cell} has seeds {sorted(by_seed)}, expected synthetic.seeds "
                f"{list(seeds)}"
            )
    return {cell: [by_seed[seed] for seed in seeds] for cell, by_seed in grouped.items()}


def run_of(runs: dict[str, Run], key: str) -> Run:
    """The run of a key, or a ValueError naming it."""
    if key not in runs:
        raise ValueError(f"{key} is not a configured synthetic run")
    return runs[key]


def run_inputs(run: Run) -> dict:
    """What a run's training reads: its task's train and test splits, and its teacher's
    checkpoint (a list: empty unless the run distils)."""
    labels = run.labels
    splits = {s: task_split_path(labels.task, labels.difficulty, s) for s in ("train", "test")}
    teacher = [run_path(labels.teacher, "model.safetensors")] if labels.teacher else []
    return {**splits, "teacher": teacher}
