"""What a synthetic run is (docs/method.md §4, E1-E5, E7, E8): its labels, key, spec and paths,
and the `Experiment` record each experiment's module (ess.paper.synthetic.e1, ...) fills in.

ess.paper.synthetic.experiments.synthetic_grid expands every configured experiment into runs,
{key: Run}. A run is one training of one model on one task; experiments that need the same run
share it (E1, E2 and E8 share all of theirs). A key is also the run's results path:

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
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ess.paper.training.registry import ATTENTION_MIXERS

if TYPE_CHECKING:
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.tasks import TaskConfig
    from ess.paper.training.train import TrainConfig


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


# An experiment's own runs: (labels, ModelConfig fields, TrainConfig fields) of each, over the
# shared synthetic.model / synthetic.train.
RunsOf = Callable[[dict], Iterator[tuple[Labels, dict, dict]]]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One synthetic experiment, everything the workflow and its notebooks need of it.

    name: "e1"; also its config section synthetic.<name>. claim: the paper's claim its verdict
    decides. figures, tables: what it publishes (results/figures/<name>.{png,pdf},
    results/tables/<name>.{csv,md,tex}), one notebook each (notebooks/<name>.ipynb). runs: its
    own runs, or None when it reads those of `reads` (E2 and E8 analyse E1's runs). verdict:
    the function deciding the claim from its table. grid_text: its grid in words, from the
    config section and its runs' labels, for the captions; settings_parts: any further caption
    phrases from the notebooks' settings.
    """

    name: str
    claim: str
    figures: tuple[str, ...]
    tables: tuple[str, ...]
    runs: RunsOf | None
    verdict: Callable
    grid_text: Callable[[dict, list[Labels]], str]
    settings_parts: Callable[[dict], list[str]] = lambda settings: []
    reads: str | None = None


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


def run_labels(task, difficulty, mixer, state_size, seed, variant="base", **structured) -> Labels:
    """A run's Labels; state_size None for attention only (the KV cache is its state)."""
    size = None if attention_only(mixer) else state_size
    return Labels(task, difficulty, mixer, size, seed, variant, **structured)


def run_configs(spec: dict) -> tuple[ModelConfig, TaskConfig, TrainConfig]:
    """The three dataclasses of a run spec {"model": {...}, "task": {...}, "train": {...}}."""
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.tasks import TaskConfig
    from ess.paper.training.train import TrainConfig

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
