"""ess.paper.synthetic.experiments and grid: the synthetic grid expanded from a config section
into typed runs, shared runs, structured labels, the experiment records, and the checks that run
before any job."""

import copy
from pathlib import Path

import pytest
import yaml

from ess.paper.results import run_inputs
from ess.paper.synthetic.experiments import experiment_labels, published, synthetic_grid
from ess.paper.synthetic.grid import Labels, cells, check_runs, run_key, run_of

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["synthetic"]


def small_grid() -> dict:
    """A grid with every experiment at one seed: E1 over SA and GLA on MQAR kv4 and kv8 at two
    TSS, E3 with an alpha variant, E4 at two lambdas with the layer sets of paper.yaml."""
    synthetic = copy.deepcopy(SYNTHETIC)
    synthetic["seeds"] = [0]
    synthetic["e1"].update(tasks={"mqar": ["kv4", "kv8"]}, mixers=["SA", "GLA"])
    synthetic["e1"]["state_sizes"] = [8, 32]
    synthetic["e3"].update(state_sizes=[8, 32], alphas=[1.0])
    synthetic["e4"].update(mixers=["GLA"], lambdas=[0.1, 1.0], layer_sets=[[0], [1]])
    return synthetic


def test_the_default_grid_trains_every_run_once_with_three_seeds():
    runs = synthetic_grid(SYNTHETIC)
    # E1 20 cells (MQAR kv8 and compression: SA + 3 mixers x 3 TSS), E3 4 (S6 and GLA-S6 at
    # TSS 2 and 8), E4 2 (GLA and WLA at lambda 1), E5 3 (the kv4 teacher, 2 students), E7 2
    assert len(runs) == 93
    assert all(key == run.key == run_key(run.labels) for key, run in runs.items())
    cells = {}
    for run in runs.values():
        labels = run.labels
        cell = (labels.task, labels.difficulty, labels.mixer, labels.state_size, labels.variant)
        cells.setdefault(cell, set()).add(labels.seed)
    assert all(seeds == {0, 1, 2} for seeds in cells.values())


def test_attention_has_no_state_size_and_trains_once_per_seed():
    runs = synthetic_grid(small_grid())
    attention = [run for run in runs.values() if run.labels.mixer == "SA"]
    assert [run.key for run in attention] == [
        "mqar/kv4/SA/kvcache/base/seed0",
        "mqar/kv8/SA/kvcache/base/seed0",
    ]
    assert all(run.labels.state_size is None for run in attention)
    # the model still gets a state size (attention ignores it): the first of e1.state_sizes
    assert all(run.spec["model"]["state_size"] == 8 for run in attention)


def test_experiments_share_runs_with_equal_keys():
    runs = synthetic_grid(small_grid())
    gla = runs["mqar/kv8/GLA/tss32/base/seed0"]
    # E1's GLA at kv8, TSS 32 is E3's GLA, E4's lambda = 0 run, E5's kv8 teacher and E7's GLA
    assert gla.experiments == ("e1", "e2", "e8", "e3", "e4", "e5", "e7")
    assert runs["mqar/kv8/SA/kvcache/base/seed0"].experiments == ("e1", "e2", "e8", "e7")


def test_variants_carry_structured_labels_and_their_training_fields():
    synthetic = small_grid()
    runs = synthetic_grid(synthetic)
    reg = runs["mqar/kv8/GLA/tss32/reg0.1/seed0"]
    assert (reg.labels.reg_lambda, reg.labels.reg_layers) == (0.1, None)
    assert reg.spec["train"]["reg_lambda"] == 0.1
    layers = runs["mqar/kv8/GLA/tss32/reg1-layers1/seed0"]
    assert (layers.labels.reg_lambda, layers.labels.reg_layers) == (1.0, (1,))
    assert layers.spec["train"]["reg_layers"] == [1]
    assert layers.labels.table_labels() == {"reg_lambda": 1.0, "reg_layers": "1", "alpha": None}
    alpha = runs["mqar/kv8/GLA-S6/tss8/alpha1/seed0"]
    assert alpha.labels.alpha == 1.0 and alpha.spec["model"]["gla_s6_alpha"] == 1.0
    student = runs["mqar/kv4/GLA/tss4/distil-tss32/seed0"]
    assert student.labels.teacher == "mqar/kv4/GLA/tss32/base/seed0" in runs
    assert student.spec["train"]["distill_weight"] == synthetic["e5"]["distill_weight"]
    base = runs["mqar/kv4/GLA/tss8/base/seed0"].labels
    assert base.table_labels() == {"reg_lambda": 0.0, "reg_layers": "all", "alpha": None}
    assert base.job_labels() == {
        "task": "mqar",
        "difficulty": "kv4",
        "mixer": "GLA",
        "state_size": 8,
        "seed": 0,
        "variant": "base",
        "teacher": None,
    }


def test_a_spec_is_the_shared_fields_then_the_runs_own():
    synthetic = small_grid()
    spec = synthetic_grid(synthetic)["mqar/kv8/GLA/tss8/base/seed0"].spec
    common = synthetic["tasks"]["mqar"]["common"]
    assert spec["task"] == {"name": "mqar", **common, "num_kv_pairs": 8}
    assert spec["model"] == {
        **synthetic["model"],
        "layers": "GLA",
        "state_size": 8,
        "vocab_size": common["vocab_size"],
    }
    assert spec["train"] == {**synthetic["train"], "seed": 0}


def test_a_difficultys_train_fields_come_between_the_shared_ones_and_the_experiments():
    synthetic = small_grid()
    synthetic["tasks"]["mqar"]["train"] = {"kv8": {"steps": 750, "reg_lambda": 0.5}}
    runs = synthetic_grid(synthetic)
    kv8 = runs["mqar/kv8/GLA/tss8/base/seed0"].spec["train"]
    assert kv8 == {**synthetic["train"], "steps": 750, "reg_lambda": 0.5, "seed": 0}
    kv4 = runs["mqar/kv4/GLA/tss8/base/seed0"].spec["train"]
    assert kv4 == {**synthetic["train"], "seed": 0}
    regularised = runs["mqar/kv8/GLA/tss32/reg1/seed0"].spec["train"]
    assert (regularised["steps"], regularised["reg_lambda"]) == (750, 1.0)  # E4's own wins


def test_experiment_labels_follow_the_experiments_own_order():
    synthetic = small_grid()
    e7 = [labels.mixer for labels in experiment_labels(synthetic, "e7")]
    assert e7 == synthetic["e7"]["patterns"]
    assert experiment_labels(synthetic, "e8") == experiment_labels(synthetic, "e1")
    del synthetic["e7"]
    assert experiment_labels(synthetic, "e7") == []


def test_published_lists_only_the_configured_experiments():
    synthetic = small_grid()
    for experiment in ("e3", "e4", "e5", "e7"):
        del synthetic[experiment]
    figures, tables = published(synthetic_grid(synthetic))
    assert figures == [
        "e1_accuracy_vs_ess",
        "e2_state_utilisation",
        "e8_tolerance_sensitivity",
        "synthetic_training_curves",
    ]
    assert tables[-1] == "synthetic_runs" and "e3_featurisation" not in tables
    assert published({}) == ([], [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["e3"].update(difficulty="kv99"), "synthetic.e3 names difficulty 'kv99'"),
        (lambda s: s["e1"]["tasks"].update(recall=["kv4"]), "names task 'recall'"),
    ],
)
def test_a_bad_name_fails_while_expanding(change, message):
    synthetic = small_grid()
    change(synthetic)
    with pytest.raises(ValueError, match=message):
        synthetic_grid(synthetic)


def test_check_runs_names_the_run_and_the_bad_field():
    synthetic = small_grid()
    synthetic["model"]["state"] = 4
    runs = synthetic_grid(synthetic)
    with pytest.raises(
        ValueError,
        match=r"synthetic run mqar/kv4/SA/kvcache/base/seed0 \(e1, e2, e8\): unknown model field",
    ):
        check_runs(runs, 1e-3, [1e-3])
    del synthetic["model"]["state"]
    with pytest.raises(ValueError, match="ess.tolerance = 0.01 must be one of"):
        check_runs(synthetic_grid(synthetic), 0.01, [1e-3])


def test_a_cell_is_a_run_without_its_seed_and_has_every_seed():
    runs = synthetic_grid(SYNTHETIC)
    grouped = cells(runs, [2, 0, 1])
    assert len(grouped) == 31 and sum(len(keys) for keys in grouped.values()) == len(runs)
    assert grouped["mqar/kv8/GLA/tss32/reg1"] == [
        f"mqar/kv8/GLA/tss32/reg1/seed{seed}" for seed in (2, 0, 1)
    ]
    del runs["mqar/kv8/GLA/tss32/reg1/seed1"]
    with pytest.raises(ValueError, match=r"cell mqar/kv8/GLA/tss32/reg1 has seeds \[0, 2\]"):
        cells(runs, [0, 1, 2])


def test_labels_are_hashable_values():
    a = Labels("mqar", "kv4", "GLA", 8, 0, reg_layers=(0, 1))
    assert a == Labels("mqar", "kv4", "GLA", 8, 0, reg_layers=(0, 1)) and len({a, a}) == 1


def test_a_run_reads_its_task_splits_and_its_teachers_checkpoint():
    runs = synthetic_grid(small_grid())
    student = run_of(runs, "mqar/kv4/GLA/tss4/distil-tss32/seed0")
    assert run_inputs(student) == {
        "train": "results/tasks/mqar/kv4/train.safetensors",
        "test": "results/tasks/mqar/kv4/test.safetensors",
        "teacher": ["results/train/mqar/kv4/GLA/tss32/base/seed0/model.safetensors"],
    }
    assert run_inputs(run_of(runs, "mqar/kv4/GLA/tss32/base/seed0"))["teacher"] == []
    with pytest.raises(ValueError, match="mqar/kv4/RWKV/tss8/base/seed0 is not a configured"):
        run_of(runs, "mqar/kv4/RWKV/tss8/base/seed0")


def test_every_experiment_record_has_what_the_docs_say_adding_one_touches():
    """docs/workflow.md, "Adding an experiment": a module with its EXPERIMENT record, a line in
    EXPERIMENTS, a notebook per figure and table, and a config section with its schema."""
    from ess.paper.synthetic import experiments

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sections = schema["$defs"]["synthetic"]["properties"]
    modules = {p.stem for p in (ROOT / "src" / "ess" / "paper" / "synthetic").glob("e[0-9]*.py")}
    assert modules == set(experiments.EXPERIMENTS)
    for name, record in experiments.EXPERIMENTS.items():
        assert record.name == name and record.claim and (record.figures or record.tables)
        assert (record.runs is None) != (record.reads is None), name
        for notebook in record.figures + record.tables:
            assert (ROOT / "notebooks" / f"{notebook}.ipynb").is_file(), notebook
        if record.runs is not None:  # a reader (E2, E8) may have no section of its own
            assert name in sections and name in SYNTHETIC, name
        assert record.grid_text(SYNTHETIC, experiment_labels(SYNTHETIC, name))
    docs = (ROOT / "docs" / "workflow.md").read_text()
    assert "src/ess/paper/synthetic/experiments.py" in docs and "notebooks/<name>.ipynb" in docs


def test_an_unknown_experiment_is_refused_by_name():
    from ess.paper.synthetic.experiments import experiment

    with pytest.raises(ValueError, match="unknown experiment 'e6'.*e1, e2"):
        experiment("e6")
