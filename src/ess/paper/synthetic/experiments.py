"""The synthetic experiments E1-E5, E7, E8 (docs/method.md §4), one record each, and what the
workflow builds from them: the grid of runs, what is published, the captions' settings text.

Each experiment lives in its own module here (e1.py, ...): its runs, its tables, its verdict
and its caption's grid text, gathered in its `EXPERIMENT` record (ess.paper.synthetic.grid.
Experiment). Adding one (docs/workflow.md, "Adding an experiment") touches that module, a line
in EXPERIMENTS below, its notebooks and its config section.

Torch-free: the workflow expands the grid before any job.
"""

from __future__ import annotations

from ess.paper.synthetic import e1, e2, e3, e4, e5, e7, e8
from ess.paper.synthetic.captions import number_text
from ess.paper.synthetic.grid import Experiment, Labels, Run, run_key, run_spec

EXPERIMENTS: dict[str, Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT for module in (e1, e2, e3, e4, e5, e7, e8)
}
# Published whenever there is a run: every run's table and training curves.
RUNS_FIGURES = ("synthetic_training_curves",)
RUNS_TABLES = ("synthetic_runs",)


def experiment(name: str) -> Experiment:
    """The record of experiment `name` (a key of EXPERIMENTS)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def readers(name: str) -> list[str]:
    """The experiments that analyse the runs of `name` (E1: E2 and E8)."""
    return [other.name for other in EXPERIMENTS.values() if other.reads == name]


def synthetic_grid(synthetic: dict) -> dict[str, Run]:
    """Every run of every experiment configured in `synthetic` (the config section):
    {key: Run}, in config order; a run shared by experiments is listed once with all of them."""
    specs, labels_of, used_by = {}, {}, {}
    for record in EXPERIMENTS.values():
        if record.runs is None or record.name not in synthetic:
            continue
        users = (record.name, *readers(record.name))
        for labels, model, train in record.runs(synthetic):
            key = run_key(labels)
            if key not in specs:
                where = f"synthetic.{record.name}"
                specs[key] = run_spec(synthetic, labels, where, model, train)
                labels_of[key] = labels
            for name in users:
                if name not in used_by.setdefault(key, []):
                    used_by[key].append(name)
    return {key: Run(key, specs[key], labels_of[key], tuple(used_by[key])) for key in specs}


def experiment_labels(synthetic: dict, name: str) -> list[Labels]:
    """The labels of one experiment's runs in its own grid order (a reader: those it reads)."""
    owner = experiment(experiment(name).reads or name)
    runs = owner.runs(synthetic) if owner.name in synthetic else []
    return list(dict.fromkeys(labels for labels, _, _ in runs))


def published(runs: dict[str, Run]) -> tuple[list[str], list[str]]:
    """(figure names, table names) of the experiments that have runs, in EXPERIMENTS order,
    then every run's; ([], []) for no runs."""
    used = {name for run in runs.values() for name in run.experiments}
    chosen = [record for name, record in EXPERIMENTS.items() if name in used]
    figures = [name for record in chosen for name in record.figures]
    tables = [name for record in chosen for name in record.tables]
    if runs:
        figures, tables = figures + list(RUNS_FIGURES), tables + list(RUNS_TABLES)
    return figures, tables


def settings_text(settings: dict, name: str | None = None) -> str:
    """The config behind an experiment's numbers as caption text: its grid (tasks and
    difficulties, mixers, TSS values), seeds, training, model size and tau.

    settings: the notebooks' settings (ess.paper.synthetic.captions.notebook_settings);
    name: "e1".."e8", or None for every run. {} gives "".
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
    record = experiment(name) if name else None
    parts = [record.grid_text(s, experiment_labels(s, name))] if record else []
    parts += [
        seed_text,
        f"{train['steps']} training steps, batch {train['batch_size']}, "
        f"lr {number_text(train['lr'])}",
        f"d_model {model['d_model']}, {model['n_layers']} layers, {model['n_heads']} head(s)",
        f"ESS over {s['ess']['n_sequences']} test sequences, tolerance-ESS tau = "
        f"{number_text(settings['tolerance'])} ({mode})",
    ]
    return "; ".join(parts + (record.settings_parts(settings) if record else []))
