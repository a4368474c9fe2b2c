"""Caption text of the synthetic figures and tables: the config behind an experiment's numbers
(its grid, seeds, training, model size and tau), from the settings the workflow resolves once
(`notebook_settings`) and the grid of ess.experiments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml

from ess.experiments import Labels, experiment_labels


def notebook_settings(config: dict) -> dict:
    """The `settings` the synthetic notebooks state in their captions, from a workflow config:
    synthetic (the section), tolerance, relative, stats, and model and train: the shared
    synthetic.model / synthetic.train fields with the dataclasses' defaults filled in."""
    from ess.experiments import run_configs  # imports torch: the workflow has it

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


def _number(value: float | str) -> str:
    """A config number as text; float() first, as papermill -y reads the notebooks' JSON
    parameters as YAML 1.1, where 1e-05 (no dot) is a string."""
    return f"{float(value):g}"


def _difficulty_text(spec: dict, difficulty: str) -> str:
    """'kv4 (num_kv_pairs=4)', with the difficulty's own train fields if it has any:
    'kv4 (num_kv_pairs=4; trained with steps=750)'."""
    fields = ", ".join(f"{k}={v}" for k, v in spec["difficulties"][difficulty].items())
    train = spec.get("train", {}).get(difficulty, {})
    if train:
        fields += "; trained with " + ", ".join(f"{k}={v}" for k, v in train.items())
    return f"{difficulty} ({fields})"


def _task_text(synthetic: dict, task: str, difficulties: Sequence[str]) -> str:
    spec = synthetic["tasks"][task]
    levels = ", ".join(_difficulty_text(spec, d) for d in difficulties)
    common = spec.get("common", {})
    shape = ", ".join(f"{k}={common[k]}" for k in ("seq_len", "vocab_size") if k in common)
    return f"{task} {levels}" + (f", {shape}" if shape else "")


def _unique(values) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def _tasks_text(synthetic: dict, labels: Sequence[Labels]) -> str:
    """Each task of the runs with its difficulties, in grid order."""
    difficulties = {}
    for label in labels:
        difficulties.setdefault(label.task, []).append(label.difficulty)
    return "; ".join(_task_text(synthetic, t, _unique(d)) for t, d in difficulties.items())


def _grid_text(synthetic: dict, experiment: str) -> str:
    """The grid of one experiment as text, from the labels of its runs."""
    key = "e1" if experiment in ("e1", "e2", "e8") else experiment
    labels = experiment_labels(synthetic, key)
    mixers = ", ".join(_unique(label.mixer for label in labels))
    sizes = sorted({label.state_size for label in labels if label.state_size is not None})
    base = [label for label in labels if label.variant == "base"]
    if key == "e1":
        attention = _unique(m.mixer for m in labels if m.state_size is None)
        cache = f" ({', '.join(attention)}: the KV cache)" if attention else ""
        return f"{_tasks_text(synthetic, labels)}; mixers {mixers}; TSS {sizes}{cache}"
    if key == "e5":
        teachers = [label for label in labels if label.teacher is None]
        students = sorted({label.state_size for label in labels if label.teacher is not None})
        e5 = synthetic["e5"]
        return (
            f"{_tasks_text(synthetic, teachers)}; {mixers} teachers with TSS "
            f"{', '.join(str(t) for t in _unique(t.state_size for t in teachers))}, students "
            f"with TSS {students}; distillation weight {_number(e5['distill_weight'])}, "
            f"temperature {_number(e5['temperature'])}"
        )
    task = _tasks_text(synthetic, base)
    if key == "e3":
        alphas = ", ".join(map(_number, _unique(r.alpha for r in labels if r.alpha is not None)))
        text = f"{task}; mixers {mixers}; TSS {sizes}; GLA-S6 with alpha = 1/sqrt(N)"
        return text + (f" (base) and alpha = {alphas}" if alphas else "")
    if key == "e4":
        every_layer = _unique(r.reg_lambda for r in labels if r.reg_lambda and not r.reg_layers)
        some_layers = [r for r in labels if r.reg_layers]
        text = (
            f"{task}; mixers {mixers}; TSS {', '.join(map(str, sizes))}; lambda 0 (the E1 run), "
            f"{', '.join(map(_number, every_layer))} on all layers"
        )
        if some_layers:
            text += (
                f", {', '.join(map(_number, _unique(r.reg_lambda for r in some_layers)))} on "
                f"layers {[list(layers) for layers in _unique(r.reg_layers for r in some_layers)]}"
            )
        return text
    if key == "e7":
        return f"{task}; TSS {', '.join(map(str, sizes))}; patterns {mixers}"
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
    train, model = settings["train"], settings["model"]
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
