"""ess.paper.synthetic.tables's statistics for the figures (run selection, correlations that survive
degenerate data), ess.paper.synthetic.verdicts on the paper's claims and
ess.paper.synthetic.captions, on small hand-made tables."""

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ess.paper.synthetic.captions import notebook_settings
from ess.paper.synthetic.e1 import (
    accuracy_correlations,
    correlation_table,
    correlation_verdict,
    pooled,
)
from ess.paper.synthetic.e2 import collapse_verdict, failure_mode_table
from ess.paper.synthetic.e3 import featurisation_verdict
from ess.paper.synthetic.e4 import reference_runs, regulariser_table, regulariser_verdict
from ess.paper.synthetic.e5 import distillation_table, distillation_verdict
from ess.paper.synthetic.e7 import (
    first_layer_attention_verdict,
    hybrid_column_name,
    hybrid_table,
    layer_table,
)
from ess.paper.synthetic.e8 import tolerance_correlations, verdicts_by_tolerance
from ess.paper.synthetic.experiments import settings_text
from ess.paper.synthetic.tables import (
    downsampled_curve,
    experiment_runs,
    model_level,
    read_curves,
    smoothed_curves,
)
from ess.paper.synthetic.verdicts import combined_verdict

BOOT = {"n_boot": 200, "seed": 0}
ROOT = Path(__file__).resolve().parents[1]


def e1_runs(ess_per_item, tss_per_item, accuracy, task="mqar", seeds=1):
    """E1-like runs: one per value, memory_items 4, `seeds` consecutive runs per cell."""
    n = len(accuracy)
    return pd.DataFrame(
        {
            "run": [f"{task}/run{i}" for i in range(n)],
            "task": task,
            "difficulty": "kv4",
            "mixer": [f"mixer{i // seeds}" for i in range(n)],
            "state_size": 8.0,
            "variant": "base",
            "test_accuracy": accuracy,
            "ess_per_item": ess_per_item,
            "tss_per_item": tss_per_item,
        }
    )


PAIRED = {"paired": ("ess_per_item", "tss_per_item"), **BOOT}


def noise(n, seed):
    return np.random.default_rng(seed).uniform(size=n)


def test_experiment_runs_matches_whole_names_only():
    runs = pd.DataFrame({"run": ["a", "b", "c", "d"], "experiments": ["e1,e2", "e10", "e2", None]})
    assert experiment_runs(runs, "e1")["run"].tolist() == ["a"]
    assert experiment_runs(runs, "e2")["run"].tolist() == ["a", "c"]


def test_correlation_table_reports_undefined_instead_of_raising():
    runs = e1_runs([1.0, 2.0, 3.0, np.nan], [2.0, 2.0, 2.0, 2.0], [0.1, 0.5, 0.9, 0.3])
    table = correlation_table(runs, "test_accuracy", ["ess_per_item", "tss_per_item"], **BOOT)
    ess = table[table["x"] == "ess_per_item"]
    assert (ess["n"] == 3).all() and (ess["note"] == "").all()  # the NaN run is left out
    assert ess["r"].to_numpy() == pytest.approx([1.0, 1.0])
    tss = table[table["x"] == "tss_per_item"]
    assert tss["r"].isna().all() and tss["note"].str.contains("tss_per_item constant").all()
    two = correlation_table(runs.head(2), "test_accuracy", ["ess_per_item"], **BOOT)
    assert two["r"].isna().all() and two["note"].str.contains("2 runs").all()


def test_accuracy_correlations_pools_only_several_tasks():
    accuracy = noise(6, 1)
    one = accuracy_correlations(e1_runs(accuracy, noise(6, 2), accuracy), **BOOT)
    assert set(one["task"]) == {"mqar"}
    two = pd.concat([e1_runs(accuracy, accuracy, accuracy, t) for t in ("mqar", "copy")])
    table = accuracy_correlations(two, **BOOT)
    assert set(table["task"]) == {"mqar", "copy", "all"}
    assert (pooled(table)["n"] == 12).all()


def test_e1_verdict_holds_when_only_ess_tracks_accuracy():
    accuracy = np.linspace(0.1, 0.9, 30)
    runs = e1_runs(accuracy * 3, noise(30, 3), accuracy, seeds=3)
    table = accuracy_correlations(runs, **PAIRED)
    verdict = correlation_verdict(table, "ess_per_item", "tss_per_item")
    assert verdict.verdict == "holds", verdict.evidence
    assert "1.00 [1.00, 1.00] with ESS/kv" in verdict.evidence
    assert "paired difference" in verdict.evidence and "10 cells" in verdict.evidence
    difference = table[(table["x"] == "ess_per_item - tss_per_item")]
    assert (difference["cells"] == 10).all() and (difference["n"] == 30).all()
    assert (difference["low"] > 0).all()
    # the decided difference needs no more cells than it had
    assert (difference["cells_to_decide"] <= 10).all()


def test_e1_verdict_does_not_hold_when_only_tss_tracks_accuracy():
    accuracy = np.linspace(0.1, 0.9, 30)
    runs = e1_runs(noise(30, 3), accuracy * 3, accuracy)
    verdict = correlation_verdict(
        accuracy_correlations(runs, **PAIRED), "ess_per_item", "tss_per_item"
    )
    assert verdict.verdict == "does not hold"


def test_e1_verdict_is_inconclusive_or_undefined_on_weak_data():
    accuracy = noise(8, 4)
    runs = e1_runs(noise(8, 5), noise(8, 6), accuracy)
    table = accuracy_correlations(runs, **PAIRED)
    verdict = correlation_verdict(table, "ess_per_item", "tss_per_item")
    assert verdict.verdict == "inconclusive (the difference's interval contains 0)"
    assert "cells (" in verdict.evidence and "would decide it" in verdict.evidence
    constant = accuracy_correlations(e1_runs(noise(8, 5), noise(8, 6), np.full(8, 0.03)), **PAIRED)
    verdict = correlation_verdict(constant, "ess_per_item", "tss_per_item")
    assert verdict.verdict == "undefined" and "test_accuracy constant" in verdict.evidence
    with pytest.raises(ValueError, match="paired"):
        correlation_verdict(accuracy_correlations(runs, **BOOT), "ess_per_item", "tss_per_item")


def test_the_paired_difference_is_the_difference_of_the_two_correlations_per_task():
    accuracy = noise(12, 7)
    two = pd.concat(
        [e1_runs(accuracy + noise(12, 8), noise(12, 9), accuracy, t, seeds=3) for t in "ab"]
    )
    table = accuracy_correlations(two, methods=["pearson", "spearman"], **PAIRED)
    for (task, method), rows in table.groupby(["task", "method"]):
        r = rows.set_index("x")["r"]
        expected = r["ess_per_item"] - r["tss_per_item"]
        assert r["ess_per_item - tss_per_item"] == pytest.approx(expected), (task, method)
    pooled_rows = pooled(table).set_index("x")
    assert pooled_rows.loc["ess_per_item - tss_per_item", "cells"].tolist() == [8, 8]


def test_combined_verdict():
    assert combined_verdict("c", [(True, "a"), (True, "b")]).verdict == "holds"
    assert combined_verdict("c", [(False, "a"), (False, "b")]).verdict == "does not hold"
    assert combined_verdict("c", [(True, "a"), (False, "b")]).verdict.startswith("partly holds")
    mixed = combined_verdict("c", [(True, "a"), (None, "b")])
    assert (
        mixed.verdict == "undefined (part 2)" and "(1) a: yes; (2) b: undefined" in mixed.evidence
    )


def stateful_runs(rows):
    """E2-like runs from (mixer, difficulty, memory_items, state_size, utilisation, accuracy)."""
    columns = ["mixer", "difficulty", "memory_items", "state_size", "utilisation", "test_accuracy"]
    runs = pd.DataFrame(rows, columns=columns)
    runs["run"] = [f"run{i}" for i in range(len(runs))]
    runs["task"], runs["seed"] = "mqar", 0
    runs["tss"] = runs["state_size"]
    runs["ess_tolerance"] = runs["utilisation"] * runs["tss"]
    return runs


def test_failure_modes_leave_out_attention_and_label_runs():
    runs = stateful_runs(
        [
            ("SA", "kv8", 8, np.nan, 0.1, 0.1),
            ("GLA", "kv8", 8, 32, 0.1, 0.1),
            ("GLA", "kv8", 8, 8, 0.9, 0.1),
            ("LA", "kv8", 8, 8, 0.2, 0.9),
        ]
    )
    modes = failure_mode_table(runs, learned_accuracy=0.5, saturation_utilisation=0.5)
    assert modes["mixer"].tolist() == ["GLA", "GLA", "LA"]
    assert modes["failure_mode"].tolist() == ["collapse", "saturation", "learned"]


@pytest.mark.parametrize(
    ("gla_utilisation", "la_utilisation", "expected"),
    [(0.1, 0.9, "holds"), (0.9, 0.1, "does not hold"), (0.1, 0.1, "does not hold")],
)
def test_collapse_verdict_on_the_hardest_difficulty(gla_utilisation, la_utilisation, expected):
    runs = stateful_runs(
        [
            ("GLA", "kv8", 8, 32, gla_utilisation, 0.1),
            ("WLA", "kv8", 8, 32, gla_utilisation, 0.1),
            ("LA", "kv8", 8, 32, la_utilisation, 0.1),
            ("LA", "kv4", 4, 32, 0.1, 0.1),  # easier: not counted
        ]
    )
    verdict = collapse_verdict(failure_mode_table(runs, 0.5, 0.5))
    assert verdict.verdict == expected
    assert "mqar kv8" in verdict.evidence and "kv4" not in verdict.evidence.split(";")[0]


def test_collapse_verdict_is_inconclusive_when_no_gla_or_wla_run_failed():
    runs = stateful_runs(
        [("GLA", "kv8", 8, 32, 0.1, 0.9), ("WLA", "kv8", 8, 32, 0.1, 0.8)]
        + [("LA", "kv8", 8, 32, 0.1, 0.1)]
    )
    verdict = collapse_verdict(failure_mode_table(runs, 0.5, 0.5))
    assert verdict.verdict == "inconclusive (no GLA/WLA run failed there)", verdict.evidence


def test_collapse_verdict_undefined_without_reference():
    runs = stateful_runs([("GLA", "kv8", 8, 32, 0.1, 0.1)])
    assert collapse_verdict(failure_mode_table(runs, 0.5, 0.5)).verdict == "undefined"


def e3_runs(s6_ess, gla_ess, s6_accuracy, gla_s6_accuracy):
    """E3-like runs at TSS 8 and 32: S6, GLA and GLA-S6 (plus an alpha variant)."""
    rows = []
    for tss, i in ((8, 0), (32, 1)):
        rows.append(("S6", "base", tss, s6_ess[i], s6_accuracy))
        rows.append(("GLA", "base", tss, gla_ess[i], 0.9))
        rows.append(("GLA-S6", "base", tss, gla_ess[i], gla_s6_accuracy))
        rows.append(("GLA-S6", "alpha1", tss, s6_ess[i], 0.0))
    runs = pd.DataFrame(
        rows, columns=["mixer", "variant", "state_size", "ess_tolerance", "test_accuracy"]
    )
    runs["seed"], runs["tss"] = 0, runs["state_size"]
    runs["utilisation"] = runs["ess_tolerance"] / runs["tss"]
    return runs


def test_featurisation_verdict():
    holds = featurisation_verdict(e3_runs((5, 5), (6, 20), 0.1, 0.8), learned_accuracy=0.5)
    assert holds.verdict == "holds", holds.evidence
    assert "S6 x1.00, GLA x3.33" in holds.evidence
    fails = featurisation_verdict(e3_runs((5, 20), (6, 7), 0.9, 0.1), learned_accuracy=0.5)
    assert fails.verdict == "does not hold", fails.evidence
    partly = featurisation_verdict(e3_runs((5, 5), (6, 20), 0.9, 0.95), learned_accuracy=0.5)
    assert partly.verdict == "partly holds (2 of 3 parts)"
    no_s6 = e3_runs((5, 5), (6, 20), 0.1, 0.8)
    assert featurisation_verdict(no_s6[no_s6["mixer"] != "S6"], 0.5).verdict.startswith("undefined")


def e4_runs(utilisation_at_1, accuracy_at_1):
    rows = [
        ("GLA", "base", 0.0, "all", 0.2, 0.1),
        ("GLA", "reg1", 1.0, "all", utilisation_at_1, accuracy_at_1),
        ("GLA", "reg1-layers0", 1.0, "0", 0.9, 0.9),
        ("LA", "base", 0.0, "all", 0.5, 0.4),
    ]
    columns = ["mixer", "variant", "reg_lambda", "reg_layers", "utilisation", "test_accuracy"]
    runs = pd.DataFrame(rows[::-1], columns=columns)  # regulariser_table sorts them
    runs["task"], runs["difficulty"], runs["state_size"], runs["seed"] = "mqar", "kv8", 32.0, 0
    return runs


def test_regulariser_table_and_verdict():
    runs = e4_runs(utilisation_at_1=0.6, accuracy_at_1=0.7)
    table = regulariser_table(runs[runs["mixer"] == "GLA"])
    assert table["variant"].tolist() == ["base", "reg1", "reg1-layers0"]  # "all" layers first
    reference = reference_runs(runs, table)
    assert reference["mixer"].tolist() == ["LA"]
    verdict = regulariser_verdict(table, reference)
    assert verdict.verdict == "holds", verdict.evidence
    assert "GLA 0.200 -> 0.600" in verdict.evidence and "reference 0.400" in verdict.evidence
    worse = regulariser_table(e4_runs(0.1, 0.2).query("mixer == 'GLA'"))
    assert regulariser_verdict(worse, reference).verdict == "does not hold"
    assert regulariser_verdict(table, reference.head(0)).verdict == "undefined (part 2)"
    # the lambda = 0 run (accuracy 0.1, ESS/TSS 0.2) failed with its state unused: collapse
    e2 = {"learned_accuracy": 0.5, "saturation_utilisation": 0.5}
    counted = regulariser_verdict(table, reference, e2)
    assert counted.verdict == verdict.verdict
    assert counted.evidence.endswith("; 1 of 1 runs at lambda 0 collapsed")
    e2["learned_accuracy"] = 0.05  # now it learned
    evidence = regulariser_verdict(table, reference, e2).evidence
    assert evidence.endswith("; 0 of 1 runs at lambda 0 collapsed (no collapse to counter)")


def e5_runs(losses_of_high_ess_teacher, losses_of_low_ess_teacher):
    rows = []
    for teacher, ess, losses in (
        ("t/kv8", 20.0, losses_of_high_ess_teacher),
        ("t/kv4", 5.0, losses_of_low_ess_teacher),
    ):
        for tss, loss in zip((4, 8), losses, strict=True):
            rows.append((f"s/{teacher}/{tss}", teacher, ess, 0.9, float(tss), loss))
    columns = ["run", "teacher", "teacher_ess_tolerance", "teacher_test_accuracy", "state_size"]
    runs = pd.DataFrame(rows, columns=[*columns, "test_distillation_loss"])
    runs["task"], runs["difficulty"], runs["seed"] = "mqar", "kv", 0
    runs["tss"], runs["ess_tolerance"], runs["test_accuracy"] = runs["state_size"], 1.0, 0.5
    teachers = pd.DataFrame({"run": ["t/kv8", "t/kv4"], "teacher": None})
    return pd.concat([runs, teachers], ignore_index=True)


def test_distillation_verdict():
    students = distillation_table(e5_runs([0.5, 0.4], [0.1, 0.05]))
    assert len(students) == 4  # the teachers are not students
    assert distillation_verdict(students).verdict == "holds"
    assert distillation_verdict(distillation_table(e5_runs([0.1, 0.05], [0.5, 0.4]))).verdict == (
        "does not hold"
    )
    partly = distillation_verdict(distillation_table(e5_runs([0.5, 0.01], [0.1, 0.4])))
    assert partly.verdict.startswith("partly holds (1 of 2")
    one_teacher = students[students["teacher"] == "t/kv8"]
    assert distillation_verdict(one_teacher).verdict == "undefined"


def e7_layers(ess):
    """E7-like per-layer rows: pattern -> (ess of layer 0, ess of layer 1); accuracy by pattern."""
    accuracy = {"GLA,SA": 0.9, "SA,GLA": 0.3, "GLA": 0.8}
    rows = []
    for pattern, values in ess.items():
        for layer, (kind, value) in enumerate(zip(pattern.split(","), values, strict=False)):
            rows.append((f"r/{pattern}", pattern, layer, kind, value, accuracy[pattern]))
    columns = ["run", "mixer", "layer", "layer_mixer", "ess_tolerance", "test_accuracy"]
    layers = pd.DataFrame(rows, columns=columns)
    layers["seed"], layers["tss"], layers["tolerance"], layers["ess_entropy"] = 0, 32.0, 1e-3, 1.0
    layers["utilisation"] = layers["ess_tolerance"] / layers["tss"]
    return layers


def test_hybrid_table_is_one_row_per_run_in_layer_order():
    per_layer = layer_table(e7_layers({"GLA,SA": (2.0, 9.0), "SA,GLA": (3.0, 8.0)}), 1e-3)
    table = hybrid_table(per_layer)
    assert table.columns.tolist()[:4] == ["run", "mixer", "seed", "test_accuracy"]
    row = table.set_index("mixer").loc["SA,GLA"]
    assert (row["layer0_mixer"], row["layer0_ess"], row["layer1_mixer"]) == ("SA", 3.0, "GLA")
    assert row["layer1_utilisation"] == pytest.approx(8.0 / 32)


def test_first_layer_attention_verdict():
    # recurrent first is more accurate; recurrent layers have little ESS in layer 0
    layers = e7_layers({"GLA,SA": (2.0, 9.0), "SA,GLA": (3.0, 8.0), "GLA": (1.0, 7.0)})
    verdict = first_layer_attention_verdict(layer_table(layers, 1e-3))
    assert verdict.verdict == "holds", verdict.evidence
    flipped = e7_layers({"GLA,SA": (9.0, 2.0), "SA,GLA": (3.0, 1.0), "GLA": (8.0, 1.0)})
    assert (
        first_layer_attention_verdict(layer_table(flipped, 1e-3)).verdict
        == "partly holds (1 of 2 parts)"
    )


def sweep_layers(n_runs=12, seed=0):
    """Per-layer rows of E1-like runs at two tau: ESS/kv tracks accuracy at tau 0.1 only."""
    rng = np.random.default_rng(seed)
    accuracy = np.linspace(0.1, 0.9, n_runs)
    rows = []
    for i, a in enumerate(accuracy):
        for layer in (0, 1):
            for tau, ess in ((0.1, 10 * a + layer), (1e-3, rng.uniform(1, 9))):
                rows.append((f"run{i}", layer, tau, ess, 2.0 + a, 8.0 * (1 + i % 2), a))
    columns = ["run", "layer", "tolerance", "ess_tolerance", "ess_entropy", "tss", "test_accuracy"]
    layers = pd.DataFrame(rows, columns=columns)
    layers["task"], layers["memory_items"] = "mqar", 4
    layers["difficulty"], layers["variant"] = "kv4", "base"
    layers["mixer"], layers["state_size"] = layers["run"], layers["tss"]  # a cell per run
    layers["utilisation"] = layers["ess_tolerance"] / layers["tss"]
    return layers


def test_tolerance_correlations_sweeps_tau_then_entropy_and_tss():
    layers = sweep_layers()
    table = tolerance_correlations(layers, methods=["spearman"], **BOOT)
    # each ESS measure: its correlation, then its paired difference with TSS/kv
    measures = ["tolerance-ESS"] * 4 + ["entropy-ESS"] * 2 + ["TSS"]
    assert table["measure"].tolist() == measures
    assert table["x"].iloc[:2].tolist() == ["ess_per_item", "ess_per_item - tss_per_item"]
    assert table["tolerance"].iloc[[0, 2]].tolist() == [0.1, 1e-3]  # largest tau first
    assert table["r"].iloc[0] == pytest.approx(1.0)  # ESS/kv = mean over layers / kv
    assert table["r"].iloc[4] == pytest.approx(1.0)  # entropy-ESS tracks accuracy too
    tss = table["r"].iloc[-1]
    assert table["r"].iloc[1] == pytest.approx(1.0 - tss)
    full, table = table, table[~table["x"].str.contains(" - ")].reset_index(drop=True)
    level = model_level(layers, 1e-3)
    direct = correlation_table(
        level.assign(
            ess_per_item=level["ess_tolerance"] / 4,
            test_accuracy=layers.groupby("run")["test_accuracy"]
            .first()
            .loc[level["run"]]
            .to_numpy(),
        ),
        "test_accuracy",
        ["ess_per_item"],
        ["spearman"],
        **BOOT,
    )
    assert table["r"].iloc[1] == pytest.approx(direct["r"].iloc[0])
    verdicts = verdicts_by_tolerance(full)
    assert verdicts["verdict"].tolist()[0] == "holds"
    assert math.isnan(verdicts["tolerance"].iloc[-1]) and len(verdicts) == 3


def test_smoothed_curves_is_a_trailing_mean_per_run():
    curves = pd.DataFrame(
        {
            "run": ["b", "b", "b", "a", "a"],
            "step": [0, 1, 2, 0, 1],
            "loss": [3.0, 1.0, 2.0, 10.0, 0.0],
            "accuracy": [0.0, 1.0, 1.0, 0.5, 0.5],
        }
    )
    smooth = smoothed_curves(curves, window=2)
    assert smooth[smooth["run"] == "b"]["loss"].tolist() == [3.0, 2.0, 1.5]
    assert smooth[smooth["run"] == "a"]["loss"].tolist() == [10.0, 5.0]
    with pytest.raises(ValueError, match="window"):
        smoothed_curves(curves, 0)


def test_e4_text_names_layer_subsets_only_when_there_are_some():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    settings = notebook_settings(config)
    text = settings_text(settings, "e4")
    assert "mixers GLA, WLA; TSS 32; lambda 0 (the E1 run), 1 on all layers;" in text
    assert "on layers" not in text
    with_sets = copy.deepcopy(config)
    with_sets["synthetic"]["e4"].update(lambdas=[0.1, 1.0], layer_sets=[[0], [1]])
    text = settings_text(notebook_settings(with_sets), "e4")
    assert "0.1, 1 on all layers, 1 on layers [[0], [1]];" in text


def test_e3_text_names_alpha_variants_only_when_there_are_some():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    text = settings_text(notebook_settings(config), "e3")
    assert "TSS [2, 8]; GLA-S6 with alpha = 1/sqrt(N);" in text and "alpha = 1;" not in text
    config["synthetic"]["e3"]["alphas"] = [1.0]
    text = settings_text(notebook_settings(config), "e3")
    assert "GLA-S6 with alpha = 1/sqrt(N) (base) and alpha = 1;" in text


def test_settings_text_states_the_config():
    synthetic = {
        "seeds": [0],
        "tasks": {
            "mqar": {"common": {"seq_len": 64}, "difficulties": {"kv8": {"num_kv_pairs": 8}}}
        },
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 1},
        "train": {"steps": 800, "batch_size": 32, "lr": 3e-3},
        "ess": {"n_sequences": 16, "tolerances": [0.1, "1e-05"]},  # papermill -y: 1e-05 is text
        "e1": {"tasks": {"mqar": ["kv8"]}, "mixers": ["SA", "GLA"], "state_sizes": [8, 32]},
        "e2": {"learned_accuracy": 0.5, "saturation_utilisation": 0.4},
    }
    stats = {"n_boot": 100, "confidence": 0.9}
    config = {"synthetic": synthetic, "ess": {"tolerance": 1e-3, "relative": True}}
    settings = notebook_settings({**config, "stats": stats})
    text = settings_text(settings, "e8")
    for part in ("mqar kv8 (num_kv_pairs=8), seq_len=64", "mixers SA, GLA", "TSS [8, 32]"):
        assert part in text
    assert "a single seed" in text and "800 training steps" in text and "d_model 64" in text
    assert "tau = 0.001 (relative)" in text and "tau swept over 0.1, 1e-05" in text
    assert "saturation: ESS/TSS >= 0.4" in settings_text(settings, "e2")
    assert settings_text({}, "e1") == ""
    synthetic["tasks"]["mqar"]["train"] = {"kv8": {"steps": 1200}}
    text = settings_text(notebook_settings({**config, "stats": stats}), "e1")
    assert "kv8 (num_kv_pairs=8; trained with steps=1200)" in text
    del synthetic["tasks"]["mqar"]["train"]
    del synthetic["train"]["lr"], synthetic["model"]["n_heads"]  # the dataclasses' defaults
    settings = notebook_settings({**config, "stats": stats})
    assert "lr 0.003" in settings_text(settings) and "1 head(s)" in settings_text(settings)


def test_hybrid_column_names():
    assert hybrid_column_name("layer1_ess") == "layer 1 ESS"
    assert hybrid_column_name("layer0_utilisation") == "layer 0 ESS/TSS"
    assert hybrid_column_name("mixer") == "pattern" and hybrid_column_name("seed") == "seed"


def _curve(steps: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    test = np.full(steps, np.nan)
    test[9::10] = rng.random(len(test[9::10]))
    return pd.DataFrame(
        {
            "step": np.arange(steps),
            "loss": rng.random(steps),
            "accuracy": rng.random(steps),
            "lr": np.linspace(1, 0, steps),
            "test_accuracy": test,
        }
    )


def test_downsampled_curve_is_block_means_at_each_blocks_last_step():
    """35 steps in at most 10 rows: blocks of 4 (the last of 3), means of loss, accuracy and
    lr, the block's last step and last test score; a short curve is returned as it is."""
    curve = _curve(35)
    reduced = downsampled_curve(curve, 10)
    assert len(reduced) == 9 and list(reduced.columns) == list(curve.columns)
    for b, row in reduced.iterrows():
        block = curve.iloc[4 * b : 4 * b + 4]
        assert row["step"] == block["step"].iloc[-1]
        for column in ("loss", "accuracy", "lr"):
            assert row[column] == pytest.approx(block[column].mean(), rel=1e-12)
        tests = block["test_accuracy"].dropna()
        assert (math.isnan(row["test_accuracy"]) and tests.empty) or row["test_accuracy"] == (
            tests.iloc[-1]
        )
    assert downsampled_curve(curve, 35) is curve
    with pytest.raises(ValueError, match="max_points must be >= 1"):
        downsampled_curve(curve, 0)


def test_read_curves_labels_every_run(tmp_path):
    paths = []
    for name, steps in (("a", 12), ("b", 30)):
        paths.append(tmp_path / f"{name}.csv")
        _curve(steps).to_csv(paths[-1], index=False)
    curves = read_curves(paths, ["run/a", "run/b"], max_points=10)
    assert curves.groupby("run").size().to_dict() == {"run/a": 6, "run/b": 10}
