"""ess.paper.e6.report: the tables, verdicts and caption text of E6's notebooks, on small aggregate
tables."""

import numpy as np
import pandas as pd
import pytest

from ess.outputs import tau_column
from ess.paper.e6 import report as e6


def by_model_table() -> pd.DataFrame:
    """An aggregate by_model table: models a, b; delimiter eos; controls removed, neutral; both
    measures and boundary classes; metrics ess_tolerance, ess_entropy and two taus. mean encodes
    the row: 10 * model index + measure (0 drop, 1 drop_vs_control) + 0.1 * control index."""
    rows = []
    metrics = ["ess_tolerance", "ess_entropy", tau_column(1e-2), tau_column(1e-1)]
    for m, model in enumerate("ab"):
        for c, control in enumerate(["removed", "neutral"]):
            for k, measure in enumerate(["drop", "drop_vs_control"]):
                for boundaries in ("interior", "near_end"):
                    for metric in metrics:
                        mean = 10 * m + k + 0.1 * c
                        rows.append(
                            dict(model=model, delimiter="eos", control=control, metric=metric,
                                 measure=measure, boundaries=boundaries, n=30 + m,
                                 mean=mean, lo=mean - 1, hi=mean + 1, mde=0.5 + m,
                                 significant=mean > 1, recall_gain=1.0 + m,
                                 recall_gain_lo=0.5 + m, recall_gain_hi=1.5 + m,
                                 ppl_ratio=0.9, n_second=100)
                        )  # fmt: skip
    return pd.DataFrame(rows)


def test_metric_label_names_every_ess_column():
    assert e6.metric_label("ess_tolerance") == "tolerance-ESS"
    assert e6.metric_label("ess_entropy") == "entropy-ESS"
    assert e6.metric_label(tau_column(1e-3)) == "tau 0.001"


def test_delimiter_drop_table_has_one_row_per_model_delimiter_and_control():
    table = e6.delimiter_drop_table(by_model_table(), "ess_entropy")
    assert list(table.columns) == [
        "model", "delimiter", "control", "metric", "n_boundaries",
        "drop_mean", "drop_lo", "drop_hi",
        "drop_vs_control_mean", "drop_vs_control_lo", "drop_vs_control_hi",
        "recall_gain", "recall_gain_lo", "recall_gain_hi", "ppl_ratio",
    ]  # fmt: skip
    assert table[["model", "control"]].to_numpy().tolist() == [
        ["a", "neutral"], ["a", "removed"], ["b", "neutral"], ["b", "removed"]
    ]  # fmt: skip
    b_removed = table.iloc[3]
    assert b_removed["drop_mean"] == 10.0 and b_removed["drop_vs_control_mean"] == 11.0
    assert b_removed["drop_vs_control_hi"] == 12.0 and b_removed["n_boundaries"] == 31
    assert b_removed["recall_gain"] == 2.0 and set(table["metric"]) == {"ess_entropy"}
    assert table["n_boundaries"].dtype == np.int64


def test_drop_by_tau_table_orders_the_taus_from_the_largest():
    table = e6.drop_by_tau_table(by_model_table(), "neutral", "drop_vs_control")
    metrics = [tau_column(1e-1), tau_column(1e-2), "ess_entropy"]
    assert list(table["metric"].cat.categories) == metrics
    assert table["metric"].astype(str).tolist() == metrics * 2  # sorted by model, then metric
    assert table["mean"].tolist() == [1.1] * 3 + [11.1] * 3
    assert list(table.columns) == [
        "model", "delimiter", "metric", "n", "mean", "lo", "hi", "mde", "significant"
    ]  # fmt: skip
    no_taus = by_model_table().query("metric in ['ess_tolerance', 'ess_entropy']")
    with pytest.raises(ValueError, match="no ess_tau_ rows"):
        e6.drop_by_tau_table(no_taus, "neutral", "drop_vs_control")


def correlation_row(r, lo, hi, n_measured=5):
    return pd.Series(dict(method="spearman", r=r, lo=lo, hi=hi, n_measured=n_measured, n_models=7))


def test_correlation_verdict_and_its_label():
    assert e6.recall_correlation_verdict(correlation_row(0.93, 0.41, 1.0)) == (
        "spearman r = 0.93 [0.41, 1.00], 5 of 7 models",
        "held",
    )
    assert e6.recall_correlation_verdict(correlation_row(-0.9, -1.0, -0.2))[1] == "opposite"
    assert e6.recall_correlation_verdict(correlation_row(0.0, -0.76, 1.0))[1] == "not shown"
    assert e6.recall_correlation_verdict(correlation_row(np.nan, np.nan, np.nan, 2)) == (
        "r not computed (2 model(s) with measured recall)",
        "untested",
    )


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["held", "held", "untested"], "holds: the correlation's CI lies above 0 for 2 of 2"),
        (["held", "not shown", "opposite"], "partly holds (1 of 3 parts): the correlation's CI "
         "lies above 0 for 1 of 3"),
        (["not shown", "opposite"], "does not hold: the correlation's CI lies above 0 for 0 of 2"),
        (["untested", "untested"], "is not tested here: the correlation needs at least 3 models "
         "and this run has 2 (a, b)"),
    ],
)  # fmt: skip
def test_recall_claim_counts_the_pairs_that_held(verdicts, expected):
    claim = e6.recall_claim(verdicts, ["a", "b"])
    assert claim.startswith(f"The paper's claim ({e6.RECALL_CLAIM})") and expected in claim


def test_positive_drops_text_lists_the_significant_positive_drops_per_model():
    drops = pd.DataFrame(
        dict(model=["b", "a", "a", "b"], delimiter=["eos", "eos", "blank", "blank"],
             control=["removed"] * 4, mean=[0.5, -0.5, 0.2, 0.3],
             significant=[True, True, True, False])
    )  # fmt: skip
    assert e6.positive_drops_text(drops) == "a: blank vs removed; b: eos vs removed"
    assert e6.positive_drops_text(drops.assign(significant=False)) == "a: none; b: none"


def test_delimiter_splits_and_trace_length_of_one_sequence():
    # each boundary comes once per layer, control and metric: duplicates
    boundaries = pd.DataFrame(
        dict(
            model=["m"] * 5 + ["n"],
            delimiter=["eos"] * 6,
            seed=[0, 0, 0, 0, 1, 0],
            next_start=[40, 12, 40, 12, 99, 7],
        )
    )
    assert e6.delimiter_splits(boundaries, "m", "eos", 0) == [12, 40]
    traces = pd.DataFrame(dict(model="m", task=["eos", "eos", "removed"], position=[1, 17, 30]))
    assert e6.trace_length(traces, "m", "eos") == 18


def test_design_text_states_the_boundaries_and_the_detectable_drop():
    text = e6.design_text(by_model_table())
    assert text.startswith("Design: 30-31 interior boundaries per model and delimiter")
    assert "(tolerance-ESS, mean over layers;" in text
    assert "vs neutral 0.50-1.50; vs removed 0.50-1.50 state dimensions" in text
    assert e6.design_text(by_model_table().iloc[:0]) == ""


def test_settings_text_states_the_config_behind_e6():
    settings = {
        "n_tokens": 512,
        "position_stride": 16,
        "offsets": [-2, 0, 2],
        "seeds": [0, 1],
        "tolerance": 1e-3,
        "relative": True,
        "recall_orders": 8,
        "before": 8,
        "after": 8,
        "n_boot": 1000,
        "confidence": 0.95,
        "dtype": {"smollm2": "float32"},
        "add_bos": {"smollm2": False},
    }
    text = e6.settings_text(settings)
    assert "L = 512 tokens" in text and "offsets [-2, 0, 2] from every delimiter" in text
    assert "tau = 0.001 (relative)" in text and "smollm2: float32" in text and "no" in text
    assert e6.settings_text({}) == ""
