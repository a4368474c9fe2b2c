"""ess.paper.synthetic.tables: run specs, the ESS of a trained model against the naive definition,
and the per-run table the synthetic figures read."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ess.kernels import materialise, materialise_by_rows
from ess.layers import LayerOperator
from ess.measure import TOLERANCES, cheaper_path, layer_ess
from ess.metric import effective_state_size_naive, tolerance_ess
from ess.paper.synthetic.grid import memory_items, run_configs
from ess.paper.synthetic.model_ess import model_ess
from ess.paper.synthetic.tables import runs_table
from ess.paper.training.model_config import ModelConfig
from ess.paper.training.models import LanguageModel
from ess.paper.training.tasks import TaskConfig


def naive_layer_ess(op: LayerOperator, tol: float) -> tuple[float, float]:
    """Mean tolerance- and entropy-ESS of one layer from one SVD per H_i (the definition)."""
    if op.kind == "attention":
        T = op.matrix()
    else:
        T = materialise(*(x.double() for x in op.realisation()))
    result = effective_state_size_naive(T.double(), tol=tol)
    return result.tolerance.double().mean().item(), result.entropy.mean().item()


@pytest.mark.parametrize("layers", ["SA,GLA", "S6", "WLA,LA", "GLA-S6"])
def test_model_ess_is_the_mean_of_the_naive_definition(layers):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=16, d_model=8, layers=layers, state_size=4))
    inputs = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(1))
    table = model_ess(model, inputs, tolerances=[1e-1, 1e-3])
    assert len(table) == 2 * 2  # layers x tolerances
    for op in model.operators(inputs):
        for tol in (1e-1, 1e-3):
            row = table[(table["layer"] == op.layer) & (table["tolerance"] == tol)].iloc[0]
            tolerance_ess, entropy_ess = naive_layer_ess(op, tol)
            assert row["layer_mixer"] == op.meta["mixer"]
            assert row["ess_tolerance"] == pytest.approx(tolerance_ess, rel=1e-12)
            assert row["ess_entropy"] == pytest.approx(entropy_ess, rel=1e-5)
            expected_tss = 4 if op.kind == "ssm" else np.arange(1, 12).mean()  # SA: KV cache i
            assert row["tss"] == pytest.approx(expected_tss)
            assert row["utilisation"] == pytest.approx(row["ess_tolerance"] / row["tss"])
    # a looser tau counts fewer singular values
    loose, strict = (
        table[table["tolerance"] == t]["ess_tolerance"].to_numpy() for t in (1e-1, 1e-3)
    )
    assert np.all(loose <= strict)


def test_model_ess_needs_a_tolerance():
    model = LanguageModel(ModelConfig(vocab_size=16, d_model=8, state_size=4))
    with pytest.raises(ValueError, match="at least one tau"):
        model_ess(model, torch.zeros(1, 8, dtype=torch.long), tolerances=[])


def test_run_configs_builds_the_dataclasses_and_names_unknown_fields():
    model, task, train = run_configs(
        {"model": {"layers": "GLA,SA"}, "task": {"num_kv_pairs": 2}, "train": {"reg_layers": [0]}}
    )
    assert model.layer_kinds() == ["GLA", "SA"] and task.num_kv_pairs == 2
    assert train.reg_layers == (0,)
    with pytest.raises(ValueError, match=r"unknown model field\(s\) \['state'\]; ModelConfig has"):
        run_configs({"model": {"state": 4}})
    with pytest.raises(ValueError, match=r"unknown run spec keys \['optimiser'\]"):
        run_configs({"optimiser": {}})


def test_memory_items_per_task():
    assert memory_items(TaskConfig(num_kv_pairs=8)) == 8
    assert memory_items(TaskConfig(name="selective_copying", num_tokens_to_copy=5)) == 5
    assert memory_items(TaskConfig(name="compression", seq_len=32)) == 16


def test_runs_table_means_over_layers_and_joins_the_teacher():
    metrics = pd.DataFrame(
        {
            "run": ["teacher", "student"],
            "teacher": [None, "teacher"],
            "memory_items": [4, 4],
            "test_accuracy": [0.9, 0.5],
        }
    )
    layers = pd.DataFrame(
        {
            "run": ["teacher"] * 4 + ["student"] * 4,
            "layer": [0, 1, 0, 1] * 2,
            "layer_mixer": ["GLA"] * 8,
            "tss": [32.0] * 4 + [8.0] * 4,
            "tolerance": [1e-3, 1e-3, 1e-2, 1e-2] * 2,
            "ess_tolerance": [10.0, 20.0, 1.0, 1.0, 4.0, 6.0, 1.0, 1.0],
            "ess_entropy": [1.0] * 8,
            "utilisation": [0.0] * 8,
        }
    )
    runs, per_layer = runs_table(metrics, layers, tolerance=1e-3)
    teacher, student = runs.set_index("run").loc["teacher"], runs.set_index("run").loc["student"]
    assert teacher["ess_tolerance"] == 15.0 and teacher["ess_per_item"] == 15.0 / 4
    assert teacher["tss_per_item"] == 8.0 and math.isnan(teacher["teacher_ess_tolerance"])
    assert student["teacher_ess_tolerance"] == 15.0 and student["teacher_test_accuracy"] == 0.9
    assert len(per_layer) == 8 and set(per_layer["test_accuracy"]) == {0.9, 0.5}
    with pytest.raises(ValueError, match=r"without both scores and ESS: \['student'\]"):
        runs_table(metrics, layers[layers["run"] == "teacher"], tolerance=1e-3)
    with pytest.raises(ValueError, match="no ESS at tolerance 0.1"):
        runs_table(metrics, layers, tolerance=0.1)


@pytest.mark.parametrize(
    ("layers", "state_size"), [("GLA", 16), ("S6", 24), ("WLA,LA", 8), ("GLA-S6", 32)]
)
def test_both_exact_paths_give_the_same_ess_on_the_same_layers(layers, state_size):
    """The realisation path and the dense path (T built row by row) on the same trained-model
    layers: the same tolerance-ESS at every tau of E8, the same entropy-ESS up to the dense
    path's rounding of the zero singular values; model_ess gives the same table either way."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, d_model=8, layers=layers, state_size=state_size)
    model = LanguageModel(config)
    inputs = torch.randint(0, 16, (2, 40), generator=torch.Generator().manual_seed(1))
    for op in model.operators(inputs):
        realisation, tss_r = layer_ess(op, spectrum=True, path="realisation")
        dense, tss_d = layer_ess(op, spectrum=True, path="dense")
        np.testing.assert_array_equal(tss_r, tss_d)
        assert torch.equal(realisation.positions, dense.positions)
        for tol in TOLERANCES:
            assert torch.equal(
                tolerance_ess(realisation.spectrum, tol, True),
                tolerance_ess(dense.spectrum, tol, True),
            ), (op.layer, tol)
        torch.testing.assert_close(dense.entropy, realisation.entropy, rtol=1e-5, atol=0)
    tables = [model_ess(model, inputs, path=path) for path in ("realisation", "dense")]
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=False, rtol=1e-5)


def test_the_cheaper_path_is_dense_when_n_is_large_against_l():
    """S6 at the paper's N 1024 and L 256 goes dense; a small state over a long sequence (E6's
    Mamba layers: N 16, L 2048) takes the realisation; a bad path name is refused."""
    assert cheaper_path(256, 1024, 255, channels=256) == "dense"
    assert cheaper_path(2048, 16, 2047, channels=256) == "realisation"
    op = LanguageModel(ModelConfig(vocab_size=16, d_model=8, layers="GLA")).operators(
        torch.zeros(1, 8, dtype=torch.long)
    )[0]
    with pytest.raises(ValueError, match="path must be one of"):
        layer_ess(op, path="fastest")


def test_materialise_by_rows_is_materialise():
    torch.manual_seed(0)
    A, B, C = torch.rand(3, 2, 17, 5, dtype=torch.float64)
    torch.testing.assert_close(
        materialise_by_rows(A, B, C), materialise(A, B, C), rtol=0, atol=1e-12
    )


def test_model_ess_in_groups_of_sequences_is_model_ess_in_one(monkeypatch):
    """Sequences measured in groups (here of 1, as a paper-size S6 cell's operators are)
    give the table of one batch: the means weigh every sequence alike."""
    import ess.paper.synthetic.model_ess as module

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=16, d_model=8, layers="SA,S6", state_size=4))
    inputs = torch.randint(0, 16, (3, 12), generator=torch.Generator().manual_seed(1))
    whole = model_ess(model, inputs, tolerances=[1e-1, 1e-3])
    monkeypatch.setattr(module, "OPERATOR_GROUP_BYTES", 1)
    grouped = model_ess(model, inputs, tolerances=[1e-1, 1e-3])
    pd.testing.assert_frame_equal(grouped, whole, check_exact=False, rtol=1e-12)
