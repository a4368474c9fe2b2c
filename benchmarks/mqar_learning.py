"""Controlled MQAR training runs with learning curves (the evidence in docs/synthetic-training.md).

Each run is ess.paper.training.train.train on one (ModelConfig, TaskConfig, TrainConfig) that
differs from a base setting by the fields named on the command line; the test accuracy on
eval_sequences test sequences is recorded every eval_every steps. Runs go to a process pool, one
thread each.

    python benchmarks/mqar_learning.py --out results/learning/vocab \\
        --base '{"model": {"layers": "GLA", "state_size": 32}, "train": {"steps": 1500}}' \\
        --vary task.vocab_size=64,128,256 --vary train.seed=0,1

prints one row per run (final test accuracy, the step where the curve first reaches 0.5 and 0.9,
seconds) and writes curves.csv (run, step, sequences, test_accuracy) and runs.csv.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import torch

from ess.paper.training.model_config import ModelConfig
from ess.paper.training.tasks import TaskConfig
from ess.paper.training.train import TrainConfig, train

BASE = {
    "model": {"vocab_size": 64, "d_model": 64, "n_layers": 2, "layers": "GLA", "state_size": 32},
    "task": {
        "name": "mqar",
        "vocab_size": 64,
        "seq_len": 64,
        "num_kv_pairs": 4,
        "n_train": 20_000,
        "n_test": 1_000,
    },
    "train": {
        "steps": 1500,
        "batch_size": 32,
        "lr": 3e-3,
        "warmup_steps": 50,
        "eval_every": 100,
        "eval_sequences": 256,
    },
}
SECTIONS = {"model": ModelConfig, "task": TaskConfig, "train": TrainConfig}


def parse_value(text: str):
    """'3e-3' -> 0.003, '64' -> 64, 'GLA' -> 'GLA', 'true' -> True, 'null' -> None."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def settings(base: dict, varies: list[str]) -> list[dict]:
    """The product of the --vary lists applied to base: [{section: {field: value}}, ...]."""
    axes = []
    for vary in varies:
        key, _, values = vary.partition("=")
        section, _, name = key.partition(".")
        if section not in SECTIONS or name not in {f.name for f in fields(SECTIONS[section])}:
            raise SystemExit(
                f"--vary {vary!r}: expected SECTION.FIELD=v1,v2 with SECTION in "
                f"{sorted(SECTIONS)} and FIELD a field of its config class"
            )
        axes.append([(section, name, parse_value(v)) for v in values.split(",")])
    runs = []
    for combination in itertools.product(*axes):
        setting = {section: dict(values) for section, values in base.items()}
        for section, name, value in combination:
            setting[section][name] = value
        if "vocab_size" in setting["task"]:  # the model reads the task's tokens
            setting["model"]["vocab_size"] = max(
                setting["model"].get("vocab_size", 0), setting["task"]["vocab_size"]
            )
        runs.append(setting)
    return runs


def label(setting: dict, varies: list[str]) -> str:
    parts = []
    for vary in varies:
        section, _, name = vary.partition("=")[0].partition(".")
        parts.append(f"{name}={setting[section][name]}")
    return " ".join(parts) or "base"


def run_one(args: tuple[str, dict]) -> dict:
    name, setting = args
    torch.set_num_threads(1)
    model, task, config = (SECTIONS[s](**setting[s]) for s in ("model", "task", "train"))
    result = train(model, task, config)
    curve = result.curves

    def first(threshold: float):
        return next(
            (
                s + 1
                for s, a in zip(curve.eval_step, curve.eval_accuracy, strict=True)
                if a >= threshold
            ),
            None,
        )

    return {
        "run": name,
        "setting": json.dumps(setting, sort_keys=True),
        "test_accuracy": result.test_accuracy,
        "step_0.5": first(0.5),
        "step_0.9": first(0.9),
        "seconds": round(result.seconds, 1),
        "curve": [
            (s + 1, (s + 1) * config.batch_size, a)
            for s, a in zip(curve.eval_step, curve.eval_accuracy, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--base", default="{}", help="JSON overrides of BASE, by section")
    parser.add_argument("--vary", action="append", default=[], help="SECTION.FIELD=v1,v2,...")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    base = {s: {**BASE[s], **json.loads(args.base).get(s, {})} for s in BASE}
    runs = [(label(s, args.vary), s) for s in settings(base, args.vary)]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(runs)} runs, {args.workers} workers; base {json.dumps(base)}", flush=True)
    curves_path, runs_path = args.out / "curves.csv", args.out / "runs.csv"
    columns = ["run", "test_accuracy", "step_0.5", "step_0.9", "seconds", "setting"]
    with open(curves_path, "w", newline="") as f:
        csv.writer(f).writerow(["run", "step", "sequences", "test_accuracy"])
    with open(runs_path, "w", newline="") as f:
        csv.DictWriter(f, columns).writeheader()
    with ProcessPoolExecutor(args.workers) as pool:  # each run's rows appended as it ends
        for row in pool.map(run_one, runs):
            print(
                f"{row['run']:<40} acc {row['test_accuracy']:.3f}  0.5@{row['step_0.5']}  "
                f"0.9@{row['step_0.9']}  {row['seconds']} s",
                flush=True,
            )
            with open(curves_path, "a", newline="") as f:
                csv.writer(f).writerows((row["run"], *point) for point in row["curve"])
            with open(runs_path, "a", newline="") as f:
                csv.DictWriter(f, columns, extrasaction="ignore").writerow(row)


if __name__ == "__main__":
    main()
