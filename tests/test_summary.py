"""results/summary.md (ess.paper.summary): built from small tables and manifests made here, it must
show exactly their verdict records, the E6 table's numbers and the jobs' times."""

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ess.paper import summary
from ess.paper.provenance import manifest_path, write_manifest
from ess.paper.publish import save_table
from ess.paper.synthetic.verdicts import Verdict

E1 = Verdict("accuracy tracks ESS/kv", "inconclusive (CIs overlap)", "r = 0.53 [0.25, 0.73]")
E4 = Verdict("lambda ||A - I||_F counters collapse", "does not hold", "GLA 0.225 -> 0.225")
E10 = Verdict("a tenth claim", "holds", "x = 1")


def publish(directory: Path, name: str, verdict: Verdict | None, started: float) -> list[str]:
    """A table as the notebooks save it (CSV, Markdown, LaTeX, each with a manifest)."""
    paths = [directory / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    table = pd.DataFrame({"a": [1.0, 2.0]})
    save_table(table, "md", "tex", paths, [], "caption", {}, started, name, verdict=verdict)
    return [str(path) for path in paths]


def test_verdict_table_has_each_experiments_record_once_in_experiment_order(tmp_path):
    now = time.time()
    published = publish(tmp_path, "e10_other", E10, now)
    published += publish(tmp_path, "e4_regulariser_runs", E4, now)
    published += publish(tmp_path, "synthetic_runs", None, now)
    published += publish(tmp_path, "e1_correlations", E1, now)
    records = summary.read_manifests(published)
    table = summary.verdict_table(records)
    assert table["experiment"].tolist() == ["E1", "E4", "E10"]
    for row, verdict in zip(table.itertuples(), (E1, E4, E10), strict=True):
        assert (row.claim, row.verdict, row.evidence) == (
            verdict.claim,
            verdict.verdict,
            verdict.evidence,
        )
    assert table["result"].tolist()[0] == str(tmp_path / "e1_correlations.csv")
    cost = summary.cost_by_rule(summary.job_table([]))
    text = summary.summary_markdown(table, None, cost, base=str(tmp_path))
    assert "| [e1_correlations.csv](e1_correlations.csv) |" in text
    assert "| E4 | lambda \\|\\|A - I\\|\\|_F counters collapse | does not hold |" in text
    assert "| E1 | accuracy tracks ESS/kv | inconclusive (CIs overlap) | r = 0.53" in text


def test_experiment_of_a_result_is_its_name_prefix():
    assert summary.experiment_of("results/tables/e1_correlations.csv") == "E1"
    assert summary.experiment_of("results/figures/e6_drop_vs_recall.png") == "E6"
    assert summary.experiment_of("results/tables/synthetic_runs.csv") is None
    assert summary.experiment_of("results/tables/e1x.csv") is None


def test_interval_columns_are_joined_and_every_other_column_kept():
    table = pd.DataFrame(
        {
            "model": ["m1", "m2"],
            "drop_mean": [0.051, -0.31],
            "drop_lo": [-0.08, -0.45],
            "drop_hi": [0.19, -0.17],
            "new_column": [3, 4],  # a column the table gains later shows up
            "recall_gain": [2.91, 0.98],
            "recall_gain_lo": [2.64, 0.65],
            "recall_gain_hi": [3.16, 1.30],
            "only_lo": [1.0, 2.0],
        }
    )
    shown = summary.with_intervals(table)
    assert shown.columns.tolist() == ["model", "drop", "new_column", "recall_gain", "only_lo"]
    assert shown["drop"].tolist() == ["0.05 [-0.08, 0.19]", "-0.31 [-0.45, -0.17]"]
    assert shown["recall_gain"].tolist() == ["2.91 [2.64, 3.16]", "0.98 [0.65, 1.30]"]
    assert shown["new_column"].tolist() == [3, 4]


def manifest(rule, started, finished, wildcards=None):
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")  # noqa: E731
    return {
        "started": iso(started) if started is not None else None,
        "finished": iso(finished),
        "extra": {"rule": rule, "wildcards": wildcards or {}},
    }


def test_jobs_are_counted_once_and_timed_from_start_to_last_output():
    t0 = 1_800_000_000
    manifests = [
        # one train job writing three outputs, the last 30 s after its start
        manifest("train", t0, t0 + 10, {"run": "a"}),
        manifest("train", t0, t0 + 30, {"run": "a"}),
        manifest("train", t0, t0 + 20, {"run": "a"}),
        manifest("train", t0 + 5, t0 + 65, {"run": "b"}),
        manifest("aggregate", t0 + 100, t0 + 130),
        # no start recorded: counted, untimed, its end still ends the run
        manifest(None, None, t0 + 200) | {"extra": {"notebook": "nb"}},
    ]
    jobs = summary.job_table(manifests)
    assert sorted(jobs["rule"]) == ["aggregate", "notebook", "train", "train"]
    cost = summary.cost_by_rule(jobs).set_index("rule")
    assert cost.loc["train"].tolist() == [2, 90.0, 60.0]
    assert cost.loc["aggregate"].tolist() == [1, 30.0, 30.0]
    assert cost.loc["notebook", "jobs"] == 1 and np.isnan(cost.loc["notebook", "job seconds"])
    assert cost.loc["all"].tolist() == [4, 120.0, 200.0]


def test_the_chain_reaches_every_manifest_behind_the_results(tmp_path):
    started = time.time()
    data, table, figure = (tmp_path / name for name in ("data.bin", "table.csv", "figure.png"))
    for path, inputs, rule in (
        (data, [], "fetch"),
        (table, [data], "agg"),
        (figure, [table], "fig"),
    ):
        path.write_text(rule)
        write_manifest(path, inputs, {}, started=started, extra={"rule": rule})
    records = summary.read_manifests([str(figure), str(manifest_path(table))])
    assert list(records) == [str(figure), str(table)]
    chain = summary.chain_manifests(records)
    assert sorted(m["extra"]["rule"] for m in chain.values()) == ["agg", "fetch", "fig"]


@pytest.fixture
def run(tmp_path):
    """A run's published tables (two with a verdict) and its key E6 table, in results/."""
    tables = tmp_path / "results" / "tables"
    now = time.time()
    published = publish(tables, "e1_correlations", E1, now - 60)
    published += publish(tables, "e4_regulariser_runs", E4, now - 30)
    e6 = pd.DataFrame(
        {
            "model": ["smollm2", "jargon_la"],
            "delimiter": ["eos", "eos"],
            "drop_vs_control_mean": [0.123, -0.004],
            "drop_vs_control_lo": [0.01, -0.011],
            "drop_vs_control_hi": [0.3, 0.004],
            "n_boundaries": [18, 38],
        }
    )
    e6_csv = tables / "e6_delimiter_drop.csv"
    e6.to_csv(e6_csv, index=False)
    return published, e6_csv, str(tmp_path / "results")


def test_the_summary_equals_its_tables(run):
    published, e6_csv, base = run
    text = summary.build_summary(published, e6_csv, base)
    assert "| E1 | accuracy tracks ESS/kv | inconclusive (CIs overlap) |" in text
    assert "| smollm2 | eos | 0.12 [0.01, 0.30] | 18 |" in text
    assert "| jargon_la | eos | -0.00 [-0.01, 0.00] | 38 |" in text
    assert "| notebook | 2 |" in text  # the two tables' jobs (one per notebook run)
    assert "| all | 2 |" in text and "In all: 2 jobs," in text
    assert "[e4_regulariser_runs.csv](tables/e4_regulariser_runs.csv)" in text


def test_the_summary_follows_a_changed_table(run):
    """Regenerated, the summary shows the tables' new numbers, not the old ones."""
    published, e6_csv, base = run
    before = summary.build_summary(published, e6_csv, base)
    e6 = pd.read_csv(e6_csv)
    e6.loc[0, "drop_vs_control_mean"] = 0.777
    e6.to_csv(e6_csv, index=False)
    record = manifest_path(Path(published[0]))
    changed = json.loads(record.read_text())
    changed["extra"]["verdict"]["verdict"] = "holds"
    record.write_text(json.dumps(changed))
    after = summary.build_summary(published, e6_csv, base)
    assert "0.12 [0.01, 0.30]" in before and "0.12 [0.01, 0.30]" not in after
    assert "| smollm2 | eos | 0.78 [0.01, 0.30] | 18 |" in after
    assert "| E1 | accuracy tracks ESS/kv | holds |" in after


def test_e6_and_e8_decide_a_verdict_record():
    """The records E6's drop-vs-recall figure and E8's table keep for the summary."""
    from ess.paper.e6.report import RECALL_CLAIM, recall_verdict
    from ess.paper.synthetic.e8 import E8_CLAIM, tolerance_verdict

    pairs = {
        ("eos", "removed"): ("r = 0.82 [0.17, 1.00]", "held"),
        ("eos", "neutral"): ("r", "not shown"),
    }
    verdict = recall_verdict(pairs, ["a", "b", "c"])
    assert (verdict.claim, verdict.verdict) == (RECALL_CLAIM, "partly holds (1 of 2 parts)")
    assert "eos vs removed: r = 0.82 [0.17, 1.00] (held)" in verdict.evidence
    untested = recall_verdict({("eos", "removed"): ("r not computed", "untested")}, ["a"])
    assert untested.verdict.startswith("untested")
    by_tau = pd.DataFrame(
        {"measure": ["ESS", "ESS", "entropy"], "tolerance": [0.1, 0.001, np.nan],
         "verdict": ["holds", "inconclusive (CIs overlap)", "holds"]}
    )  # fmt: skip
    verdict = tolerance_verdict(by_tau)
    assert (verdict.claim, verdict.verdict) == (E8_CLAIM, "does not hold")
    assert "tau 0.001: inconclusive (CIs overlap); entropy-ESS: holds" in verdict.evidence
    assert tolerance_verdict(by_tau.assign(verdict="holds")).verdict == "holds"
