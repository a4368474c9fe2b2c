"""ess.paper.e6.modulation (E6's statistics) and the offsets, positions and profiles of
ess.paper.e6.delimiters."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau
from test_delimiters import PASSAGES, WordTokenizer

from ess import outputs
from ess.paper.e6 import modulation
from ess.paper.e6.boundaries import (
    boundary_profile,
    delimiter_drop,
    offset_mask,
    offset_splits,
    reset_bound,
    trace_positions,
)
from ess.paper.e6.delimiters import build_delimited_sequence
from ess.paper.stats import bootstrap_mean_ci, excludes_zero, minimum_detectable_effect

OFFSETS = [-8, -4, -2, -1, 0, 1, 2, 4, 8]


# ---------------------------------------------------------------------------------------------
# Offsets and positions


def test_offsets_follow_the_window_convention():
    # boundary [p, n] = [9, 12]: a two-token delimiter at 10, 11; the next passage starts at 12
    splits = offset_splits(np.array([[9, 12]]), [-3, -1, 0, 1, 3])
    # o = -1: the state after the last passage token 9 (split 10); 0: after the delimiter
    # (split 12); 1: after the next passage's first token 12 (split 13)
    assert splits.tolist() == [[8, 10, 12, 13, 15]]


def test_offset_mask_keeps_each_offset_inside_its_two_passages():
    spans = np.array([[0, 10], [12, 20], [22, 40]])  # passages; delimiters at 10-11, 20-21
    bounds = np.array([[9, 12], [19, 22]])
    mask = offset_mask(bounds, spans, [-12, -10, -1, 0, 1, 8, 9], length=40)
    # boundary 0: o=-10 reads token 0 (passage 0 starts there), o=-12 would read token -2;
    # o=8 reads token 19 (passage 1's last), o=9 token 20 (the next delimiter)
    assert mask[0].tolist() == [False, True, True, True, True, True, False]
    # boundary 1: o=-10 reads token 10 (a delimiter), o=-8 would be the first inside
    assert mask[1].tolist() == [False, False, True, True, True, True, True]


def test_trace_positions_are_every_window_split_the_offsets_and_a_coarse_stride():
    tokenizer = WordTokenizer(PASSAGES)
    seq = build_delimited_sequence(tokenizer, PASSAGES, "eos", n_tokens=300, seed=0)
    positions = trace_positions(seq.boundaries, seq.passage_spans, seq.length, OFFSETS, 50, 8, 6)
    splits = offset_splits(seq.boundaries, OFFSETS)[
        offset_mask(seq.boundaries, seq.passage_spans, OFFSETS, seq.length)
    ]
    windows = [
        split
        for p, n in seq.boundaries.tolist()
        for split in [*range(p - 6, p + 2), n, *range(n + 1, n + 7)]
    ]  # before = 8 splits p-6 .. p+1, the delimiter's n, after = 6 splits n+1 .. n+6
    assert set(splits) | set(windows) | set(range(1, 300, 50)) == set(positions.tolist())
    assert np.all(np.diff(positions) > 0) and positions[0] >= 1 and positions[-1] <= 299
    assert len(positions) < 299  # only what the statistics use
    with pytest.raises(ValueError, match="stride must be >= 1"):
        trace_positions(seq.boundaries, seq.passage_spans, seq.length, OFFSETS, 0, 8, 8)


def test_boundary_profile_reads_the_trace_at_each_offset():
    spans = np.array([[0, 30], [31, 60], [61, 100]])
    bounds = np.array([[29, 31], [59, 61]])
    trace = pd.Series(np.arange(1, 100) * 10.0, index=np.arange(1, 100))  # value = 10 * split
    profile = boundary_profile(trace, bounds, spans, 100, OFFSETS)
    assert len(profile) == 2 * len(OFFSETS)
    expected = offset_splits(bounds, OFFSETS).reshape(-1) * 10.0
    np.testing.assert_array_equal(profile["value"].to_numpy(), expected)


def test_reset_bound_is_the_distance_to_the_reset():
    assert reset_bound(np.array([1, 5, 9, 10, 12]), 10).tolist() == [9, 5, 1, 0, 0]


# ---------------------------------------------------------------------------------------------
# Statistics


def test_kendall_tau_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=7), rng.normal(size=7)
        assert modulation.kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert modulation.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    with pytest.raises(ValueError, match="same length >= 2"):
        modulation.kendall_tau([1.0], [1.0])


def test_hierarchy_test_finds_the_stated_order_and_its_reverse():
    rng = np.random.default_rng(1)
    order = ["sa", "gla", "wla", "la"]
    samples = {m: 3.0 - k + 0.1 * rng.normal(size=40) for k, m in enumerate(order)}
    held = modulation.hierarchy_test(samples, order, n_boot=200, confidence=0.95, seed=0)
    assert held["tau"] == 1.0 and held["lo"] == 1.0 and held["significant"]
    assert held["p_permutation"] == pytest.approx(1 / 24)  # only the stated order has tau 1
    reversed_ = modulation.hierarchy_test(samples, order[::-1], 200, 0.95, 0)
    assert reversed_["tau"] == -1.0 and reversed_["p_permutation"] == 1.0
    noise = {m: rng.normal(size=40) for m in order}  # no order: a wide interval around 0
    unclear = modulation.hierarchy_test(noise, order, 500, 0.95, 0)
    assert unclear["lo"] < 0 < unclear["hi"] and not unclear["significant"]
    with pytest.raises(ValueError, match=r"\['la'\] have no drops"):
        modulation.hierarchy_test({m: samples[m] for m in order[:3]}, order, 10, 0.95, 0)


def test_hierarchy_permutation_p_counts_orders_at_least_as_concordant():
    means = {"a": [3.0], "b": [1.0], "c": [2.0]}  # tau vs a > b > c: (1 + 1 - 1) / 3
    result = modulation.hierarchy_test(means, ["a", "b", "c"], 10, 0.95, 0)
    taus = [
        modulation.kendall_tau([3, 1, 2], -np.array(p)) for p in itertools.permutations(range(3))
    ]
    assert result["tau"] == pytest.approx(1 / 3)
    assert result["p_permutation"] == pytest.approx(np.mean(np.array(taus) >= 1 / 3 - 1e-12))


def test_recall_correlation_uses_only_models_with_measured_recall():
    drops = pd.DataFrame(
        {
            "model": list("abcdef"),
            "mean": [0.1, 0.2, 0.3, 0.4, 5.0, -5.0],
            "recall_gain": [1.0, 2.0, 3.0, 4.0, 0.1, 0.2],
            "recall_gain_lo": [0.5, 1.5, 2.5, 3.5, -0.5, -0.4],  # e, f: intervals around 0
            "recall_gain_hi": [1.5, 2.5, 3.5, 4.5, 0.7, 0.8],
        }
    )
    result = modulation.recall_correlation(drops, "spearman", 200, 0, 0.95)
    assert (result["n_models"], result["n_measured"]) == (6, 4)
    assert result["r"] == pytest.approx(1.0) and result["models"] == "a, b, c, d"
    too_few = modulation.recall_correlation(drops.iloc[2:], "spearman", 200, 0, 0.95)
    assert too_few["n_measured"] == 2 and np.isnan(too_few["r"]) and "at least 3" in too_few["note"]


def test_excludes_zero_and_the_minimum_detectable_effect():
    assert excludes_zero(0.1, 0.5) and excludes_zero(-0.5, -0.1)
    assert not excludes_zero(-0.1, 0.5) and not excludes_zero(np.nan, 1.0)
    # 30 draws of SD 1: the 95% interval's half-width ~ 1.96 / sqrt(30), the MDE at 80% power
    # ~ 2.80 / sqrt(30) = 0.51
    x = np.random.default_rng(2).normal(size=30)
    x = (x - x.mean()) / x.std()
    _, lo, hi = bootstrap_mean_ci(x, 4000, 0.95, 0)
    assert minimum_detectable_effect(lo, hi) == pytest.approx(2.80 / np.sqrt(30), rel=0.1)
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_effect(0.0, 1.0, power=1.0)


def test_layer_groups_are_thirds():
    assert modulation.layer_groups(range(6)) == {
        0: "early",
        1: "early",
        2: "middle",
        3: "middle",
        4: "late",
        5: "late",
    }
    assert set(modulation.layer_groups(range(4)).values()) == {"early", "middle", "late"}


# ---------------------------------------------------------------------------------------------
# The whole chain on traces with a known drop


def synthetic_ess(sequences, step):
    """An ESS table, one row per split: 10 everywhere, minus `step` (a number, or {model: step})
    for the 8 splits after each delimiter in the delimited sequence only; two layers (layer 1
    twice layer 0's drop); entropy-ESS half of tolerance-ESS, tau 1e-2 equal to it."""
    rows = []
    for (model, delimiter, seed), seq in sequences.items():
        drop = step[model] if isinstance(step, dict) else step
        for task, built in [(delimiter, seq), *seq.controls.items()]:
            ess = np.full(built.length - 1, 10.0)
            if task == delimiter:
                for _p, n in built.boundaries:
                    ess[n : n + 8] -= drop  # splits n+1 .. n+8 (index = split - 1)
            for layer in (0, 1):
                value = 10.0 + (layer + 1) * (ess - 10.0)
                rows.append(
                    pd.DataFrame(
                        {
                            "model": model,
                            "task": task,
                            "seed": seed,
                            "layer": layer,
                            "head": 0,
                            "position": np.arange(1, built.length),
                            "ess_tolerance": value,
                            "ess_entropy": value / 2,
                            outputs.tau_column(1e-2): value,
                            "tss": 16,
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def synthetic_per_layer(sequences, step):
    """`synthetic_ess` reduced as rule aggregate_e6 reduces each ESS table."""
    values = ["ess_tolerance", "ess_entropy", outputs.tau_column(1e-2), "tss"]
    (length,) = {built.length for built in sequences.values()}
    return modulation.head_means(synthetic_ess(sequences, step), values, length)


def synthetic_traces(sequences, step):
    metrics = ["ess_tolerance", "ess_entropy"]
    return modulation.layer_traces(synthetic_per_layer(sequences, step), metrics)


def test_the_chain_recovers_a_known_drop_and_profile():
    tokenizer = WordTokenizer(PASSAGES)
    sequences = {
        ("m", "eos", seed): build_delimited_sequence(tokenizer, PASSAGES, "eos", 400, seed=seed)
        for seed in (0, 1)
    }
    modulation.check_controls(sequences, "eos")
    traces = synthetic_traces(sequences, step=3.0)
    metrics = ["ess_tolerance", "ess_entropy"]
    drops = modulation.boundary_drops(traces, sequences, ["removed"], metrics, 8, 8)
    interior = drops[~drops["near_end"]]
    assert set(drops["layer"]) == {0, 1, modulation.ALL_LAYERS}
    expected = {0: 3.0, 1: 6.0, modulation.ALL_LAYERS: 4.5}
    for layer, value in expected.items():
        tolerance = interior[(interior["layer"] == layer) & (interior["metric"] == metrics[0])]
        np.testing.assert_allclose(tolerance["drop_vs_control"], value)
    summary = modulation.summarise_drops_by(
        drops, ["model", "delimiter", "control", "metric", "layer"], 100, 0.95, 0
    )
    row = summary[
        (summary["layer"] == -1)
        & (summary["metric"] == "ess_entropy")
        & (summary["measure"] == "drop_vs_control")
        & (summary["boundaries"] == "interior")
    ].iloc[0]
    assert row["mean"] == pytest.approx(2.25) and row["significant"]
    assert row["n"] == interior["boundary"].groupby(interior["seed"]).nunique().sum()

    near_end = drops[drops["layer"] == modulation.ALL_LAYERS]
    profiles = modulation.boundary_profiles(
        modulation.group_traces(traces, metrics), sequences, ["removed"], OFFSETS, metrics, near_end
    )
    profile = modulation.summarise_profiles(profiles, 100, 0.95, 0)
    line = profile[
        (profile["group"] == "all")
        & (profile["metric"] == "ess_tolerance")
        & (profile["condition"] == "delimited")
    ].set_index("offset")["mean"]
    assert line.loc[[-8, -1, 0]].tolist() == [10.0, 10.0, 10.0]
    assert line.loc[[1, 4, 8]].tolist() == [5.5, 5.5, 5.5]  # 10 - 4.5
    control = profile[(profile["condition"] == "removed") & (profile["group"] == "all")]
    assert np.allclose(control.loc[control["metric"] == "ess_tolerance", "mean"], 10.0)
    assert set(profile["group"]) == {"all", "early", "middle"}  # 2 layers: no late third


def test_aggregate_gives_every_table_of_the_rule():
    """Three models whose delimiter drops ESS by 1, 2 and 3 (x1.5 over layers), with recall
    gains in the same order: the hierarchy c > b > a and the drop-recall correlation are exact."""
    tokenizer = WordTokenizer(PASSAGES)
    sequences = {
        (model, "eos", seed): build_delimited_sequence(tokenizer, PASSAGES, "eos", 300, seed)
        for model in "abc"
        for seed in (0, 1)
    }
    steps = {"a": 1.0, "b": 2.0, "c": 3.0}
    recall = [
        {"model": m, "recall_gain": g, "recall_gain_lo": g - 0.5, "recall_gain_hi": g + 0.5,
         "ppl_ratio": 0.5, "n_second": 100, "logprob_first": -3.0}
        for m, g in steps.items()
    ]  # fmt: skip
    tables = modulation.aggregate(
        synthetic_per_layer(sequences, steps),
        sequences,
        recall,
        controls=["removed", "neutral"],
        before=8,
        after=8,
        offsets=OFFSETS,
        hierarchy=["c", "b", "a"],
        correlation="spearman",
        n_boot=50,
        confidence=0.95,
        seed=0,
    )
    assert set(tables) == {
        "traces", "boundaries", "by_layer", "by_model", "correlation", "profile", "hierarchy"
    }  # fmt: skip
    tau = outputs.tau_column(1e-2)
    assert outputs.tau_of(tau) == 1e-2
    boundaries = tables["boundaries"]
    assert set(boundaries.loc[boundaries["metric"] == tau, "layer"]) == {modulation.ALL_LAYERS}
    assert set(boundaries.loc[boundaries["metric"] != tau, "layer"]) == {0, 1, -1}
    assert set(tables["by_layer"]["metric"]) == set(modulation.METRICS)

    by_model = tables["by_model"].set_index(["model", "control", "metric", "measure", "boundaries"])
    for model, step in steps.items():
        row = by_model.loc[(model, "removed", tau, "drop_vs_control", "interior")]
        assert row["mean"] == pytest.approx(1.5 * step) and row["significant"]
        assert row["recall_gain"] == step and row["n_second"] == 100
    assert "logprob_first" not in by_model.columns  # the recall columns only

    correlation = tables["correlation"]
    chosen = correlation[
        (correlation["metric"] == "ess_tolerance") & (correlation["measure"] == "drop_vs_control")
    ]
    assert len(chosen) == 2 and (chosen["r"] == 1.0).all() and (chosen["n_measured"] == 3).all()
    assert set(correlation["metric"]) == set(modulation.METRICS)  # no tau: METRICS only

    hierarchy = tables["hierarchy"]
    assert set(hierarchy["control"]) == {"removed"} and set(hierarchy["delimiter"]) == {
        "eos",
        "all",
    }
    assert (hierarchy["tau"] == 1.0).all()
    assert set(tables["profile"]["condition"]) == {"delimited", "removed", "neutral"}


def position_only_ess(sequences):
    """ESS of a synthetic operator with no delimiter effect: every head's ESS depends on its
    split i only. Head 0: min(i, L-i) / 2, under the bound everywhere; head 1: the same, but AT
    the bound min(i, L-i) from split L - 60 on (a head that saturates near the end)."""
    rows = []
    for (model, delimiter, seed), seq in sequences.items():
        splits = np.arange(1, seq.length)
        bound = np.minimum(splits, seq.length - splits).astype(float)
        heads = {0: bound / 2, 1: np.where(splits >= seq.length - 60, bound, bound / 2)}
        for task, head in itertools.product([delimiter, *seq.controls], heads):
            rows.append(
                pd.DataFrame(
                    {
                        "model": model,
                        "task": task,
                        "seed": seed,
                        "layer": 0,
                        "head": head,
                        "position": splits,
                        "ess_tolerance": heads[head],
                        "ess_entropy": heads[head],
                        "tss": 16,
                    }  # fmt: skip
                )
            )
    return pd.concat(rows, ignore_index=True)


def test_a_position_only_operator_has_no_drop():
    """The drop of an operator whose ESS depends on position only is 0 within its interval:
    the delimited text and its controls place every boundary at the same splits. The layout
    before issue 28 (the delimiter ADDED between passages, s tokens per boundary, so boundary k
    sat k * s splits later than in the control) gives the same operator a drop whose interval
    excludes 0."""
    tokenizer = WordTokenizer(PASSAGES)
    sequences = {
        ("m", "end_of_speech", seed): build_delimited_sequence(
            tokenizer, PASSAGES, "end_of_speech", 400, seed=seed
        )
        for seed in range(4)
    }
    metrics = ["ess_tolerance", "ess_entropy"]
    (length,) = {built.length for built in sequences.values()}
    per_layer = modulation.head_means(position_only_ess(sequences), [*metrics, "tss"], length)
    traces = modulation.layer_traces(per_layer, [*metrics, "tss"])
    drops = modulation.boundary_drops(traces, sequences, ["removed", "neutral"], metrics, 8, 8)
    interior = drops[~drops["near_end"] & (drops["layer"] == modulation.ALL_LAYERS)]
    summary = modulation.summarise(interior["drop_vs_control"], 200, 0.95, 0)
    assert summary["n"] >= 40 and summary["lo"] <= 0.0 <= summary["hi"]
    assert summary["mean"] == 0.0 and not summary["significant"]
    # the bound rule: a boundary is left out when head 1 is at the bound inside its windows
    last_split = drops["next_start"] + 8
    np.testing.assert_array_equal(drops["near_end"], last_split >= length - 60)

    # The same operator on the former layout: removed boundary k at [p, p + 1], the delimited
    # one shifted by k * s (s = 2 tokens of end_of_speech added before each boundary).
    trace = pd.Series(np.arange(1, length) / 2.0, index=np.arange(1, length))
    trace = np.minimum(trace, (length - trace.index) / 2.0)
    old = []
    for sequence in sequences.values():
        ends = sequence.boundaries[:, 1] - 1
        control = np.stack([ends, ends + 1], axis=1)
        shift = 2 * np.arange(len(ends))[:, None]
        delimited = control + shift + np.array([[0, 2]])
        inside = delimited[:, 1] + 8 < length - 1
        old.append(delimiter_drop(trace, delimited[inside], trace, control[inside]))
    former = modulation.summarise(pd.concat(old)["drop_vs_control"], 200, 0.95, 0)
    assert former["significant"] and abs(former["mean"]) > 0.2
