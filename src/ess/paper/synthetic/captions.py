"""Caption text of the synthetic figures and tables: the settings the workflow resolves once
(`notebook_settings`) and the phrases each experiment's `grid_text` builds its grid from
(ess.paper.synthetic.experiments.settings_text joins them into a caption).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml

from ess.paper.synthetic.grid import Labels


def notebook_settings(config: dict) -> dict:
    """The `settings` the synthetic notebooks state in their captions, from a workflow config:
    synthetic (the section), tolerance, relative, stats, and model and train: the shared
    synthetic.model / synthetic.train fields with the dataclasses' defaults filled in."""
    from ess.paper.synthetic.grid import run_configs  # imports torch: the workflow has it

    model, _, train = run_configs(
        {"model": config["synthetic"]["model"], "train": config["synthetic"]["train"]}
    )
    return {
        "synthetic": config["synthetic"],
        "tolerance": config["ess"]["tolerance"],
        "relative": config["ess"]["relative"],
        "stats": config["stats"],
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
    }


def settings_of_config(path: str | Path) -> dict:
    """`notebook_settings` of a config file, for a notebook run by hand."""
    return notebook_settings(yaml.safe_load(Path(path).read_text()))


def number_text(value: float | str) -> str:
    """A config number as text; float() first, as papermill -y reads the notebooks' JSON
    parameters as YAML 1.1, where 1e-05 (no dot) is a string."""
    return f"{float(value):g}"


def difficulty_text(spec: dict, difficulty: str) -> str:
    """'kv4 (num_kv_pairs=4)', with the difficulty's own train fields if it has any:
    'kv4 (num_kv_pairs=4; trained with steps=750)'."""
    fields = ", ".join(f"{k}={v}" for k, v in spec["difficulties"][difficulty].items())
    train = spec.get("train", {}).get(difficulty, {})
    if train:
        fields += "; trained with " + ", ".join(f"{k}={v}" for k, v in train.items())
    return f"{difficulty} ({fields})"


def task_text(synthetic: dict, task: str, difficulties: Sequence[str]) -> str:
    spec = synthetic["tasks"][task]
    levels = ", ".join(difficulty_text(spec, d) for d in difficulties)
    common = spec.get("common", {})
    shape = ", ".join(f"{k}={common[k]}" for k in ("seq_len", "vocab_size") if k in common)
    return f"{task} {levels}" + (f", {shape}" if shape else "")


def unique(values) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def tasks_text(synthetic: dict, labels: Sequence[Labels]) -> str:
    """Each task of the runs with its difficulties, in grid order."""
    difficulties = {}
    for label in labels:
        difficulties.setdefault(label.task, []).append(label.difficulty)
    return "; ".join(task_text(synthetic, t, unique(d)) for t, d in difficulties.items())


def bootstrap_text(settings: dict) -> str:
    """The bootstrap behind the intervals, from the settings' stats section."""
    stats = settings["stats"]
    return f"{stats['n_boot']} bootstrap resamples over runs, {stats['confidence']:.0%} CIs"
