"""The synthetic-task experiments (ESS.md E1-E5, E7, E8): a run from a plain spec, the ESS of a
trained model, and the statistics the figures and tables show.

A run spec is plain JSON (what the workflow config gives and the manifests record):

    {"task": {TaskConfig fields}, "model": {ModelConfig fields}, "train": {TrainConfig fields}}

`model_ess` measures a trained model the way ESS.md defines it: per layer, the ESS of every
head/channel at every split position of each of n test sequences, from one spectrum per
position, so that tolerance-ESS at several tau and entropy-ESS come from one computation (E8).
Aggregates are means over sequences, heads/channels and positions ("average ESS"); a model's
ESS is the mean over its layers. State utilisation is ESS / TSS, and the memory load of a task
(`memory_items`) normalises both: ESS/kv and TSS/kv for MQAR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ess.metric import (
    EssResult,
    effective_state_size,
    effective_state_size_ssm,
    tolerance_ess,
)
from ess.models import LanguageModel, ModelConfig
from ess.stats import CORRELATION_METHODS, correlation_with_ci
from ess.tasks import TaskConfig
from ess.train import TrainConfig

TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
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
# ESS of a trained model


def operator_spectra(op: dict) -> tuple[EssResult, Tensor]:
    """Spectra of every H_i of one layer's operator (`LanguageModel.operators` convention).

    Attention ("T": (b, H, L, L)) goes through the dense path, recurrences ("A", "B", "C":
    (b, H, L, N)) through the realisation path; S6's skip D only touches T's diagonal, which
    no H_i contains. Returns the EssResult with spectrum (b, H, P, R) and the TSS at each split
    position: (P,) float64.
    """
    if "T" in op:
        result = effective_state_size(op["T"], spectrum=True)
        state_size = op["tss"][result.positions].to(torch.float64)
    else:
        result = effective_state_size_ssm(op["A"], op["B"], op["C"], spectrum=True)
        state_size = torch.full((len(result.positions),), float(op["tss"]), dtype=torch.float64)
    return result, state_size


@torch.no_grad()
def model_ess(
    model: LanguageModel,
    inputs: Tensor,
    tolerances: Sequence[float] = TOLERANCES,
    relative: bool = True,
) -> pd.DataFrame:
    """Average ESS of each layer of `model` on inputs: (n, L) token sequences.

    One row per layer and tolerance tau: layer, layer_mixer (SA, GLA, ...), tss (mean TSS over
    split positions: N for a recurrence, the mean KV-cache length for attention), tolerance,
    ess_tolerance and
    ess_entropy (means over sequences, heads/channels and split positions), utilisation
    (ess_tolerance / tss).
    """
    if len(tolerances) == 0:
        raise ValueError("tolerances must name at least one tau")
    model.eval()
    rows = []
    for op in model.operators(inputs):
        result, state_size = operator_spectra(op)
        for tol in tolerances:
            ess = tolerance_ess(result.spectrum, tol, relative).to(torch.float64).mean().item()
            rows.append(
                {
                    "layer": op["layer"],
                    "layer_mixer": op["mixer"],
                    "tss": state_size.mean().item(),
                    "tolerance": float(tol),
                    "ess_tolerance": ess,
                    "ess_entropy": result.entropy.mean().item(),
                    "utilisation": ess / state_size.mean().item(),
                }
            )
    return pd.DataFrame(rows)


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
