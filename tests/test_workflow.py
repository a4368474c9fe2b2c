"""The Snakemake workflow: the DAG of the default config, lint and format checks, and (marked
`workflow`) a small end-to-end run from the model download to the figures and their audit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from report_browser import chromium, rendered_report, words

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # papermill, the python3 kernel
}
FIGURES = ["e6_delimiter_traces", "e6_boundary_profile", "e6_drop_by_layer", "e6_drop_vs_recall"]
TABLES = ["e6_delimiter_drop", "e6_hierarchy", "e6_drop_by_tau"]


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -n --forceall` in a fresh working directory holding a copy of config/."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "-n",
        "--forceall",
        "--quiet",
        "rules",
        *args,
    )


def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from the `Job stats` table of a dry run."""
    table = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {
        match[1]: int(match[2])
        for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if match[1] != "total"
    }


def test_default_dag_has_the_expected_jobs(tmp_path):
    run = dry_run(tmp_path, "all")
    assert run.returncode == 0, run.stderr + run.stdout
    # 7 models (SmolLM2 and Gemma-3 fetched; SA, LA, GLA, WLA and S6 LMs trained here) x
    # (3 delimiters + 2 controls); one job covers every seed of a model and task, and all of a
    # model's layers (one measure_e6_ess job each)
    assert job_counts(run.stdout) == {
        "fetch_model": 2,
        "convert_model": 2,
        "train_language_model": 5,
        "make_sequence": 7,
        "capture_operators": 35,
        "measure_e6_ess": 35,
        "bigram_recall": 7,
        "aggregate_e6": 1,
        "e6_figure": 4,
        "e6_table": 3,
        # E1-E5, E7, E8: MQAR kv4 and kv8 and compression tokens16 x (train, test) splits;
        # 31 distinct cells x 3 seeds
        "make_task_split": 6,
        "train_synthetic": 93,
        "measure_synthetic_ess": 31,
        "aggregate_synthetic": 1,
        "synthetic_figure": 8,
        "synthetic_table": 8,
        # results/summary.md, from every figure and table above
        "summary": 1,
        "all": 1,
    }


def test_paper_dag_has_one_measure_e6_ess_job_per_model_task_and_layer(tmp_path):
    """paper.yaml sets layers_per_job: 1 (a 7B layer takes minutes and a GPU); one job covers
    every seed."""
    run = dry_run(tmp_path, "all", "--configfile", str(tmp_path / "config" / "paper.yaml"))
    assert run.returncode == 0, run.stderr + run.stdout
    counts = job_counts(run.stdout)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    layers = sum(paper["models"][m]["n_layers"] for m in paper["e6"]["models"])
    tasks = 3 + 2
    assert counts["fetch_model"] == len(paper["e6"]["models"])
    assert counts["capture_operators"] == len(paper["e6"]["models"]) * tasks
    assert counts["measure_e6_ess"] == layers * tasks


def test_snakemake_lint_is_clean():
    run = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in run.stdout + run.stderr, (
        run.stdout + run.stderr
    )


def test_snakefmt_check_is_clean():
    run = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout


def test_every_rule_has_log_conda_and_resources():
    rules = (ROOT / "workflow" / "rules").glob("*.smk")
    text = "\n".join(path.read_text() for path in rules)
    for block in re.split(r"^rule ", text, flags=re.MULTILINE)[1:]:
        name = block.split(":", 1)[0]
        for directive in ("log:", "conda:", "resources:", "message:"):
            assert f"    {directive}" in block, f"rule {name} has no {directive}"
        assert "mem_mb=" in block and "runtime=" in block, f"rule {name}: mem_mb, runtime"


SMALL_CONFIG = {
    "models": {
        "smollm2": {
            **yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["models"]["smollm2"],
            # the last layer: at L 256 every boundary has a head of layer 0 at the bound
            # min(i, L-i) in its windows (no interior boundary would be left, docs/method.md E6)
            "layers": [29],
        }
    },
    "e6": {
        "delimiters": ["eos"],
        "controls": ["removed"],
        "n_tokens": 256,
        "drop": {"before": 8, "after": 8},
        "profile": {"offsets": [-8, -4, -1, 0, 1, 4, 8]},
        "passages": {"max_chars": 400},
    },
    "stats": {"n_boot": 100},
}
# Every synthetic experiment on a grid that trains in seconds (13 runs of 30 steps).
SMALL_SYNTHETIC = {
    "tasks": {
        "mqar": {
            "common": {"vocab_size": 16, "seq_len": 16, "n_train": 256, "n_test": 64},
            "difficulties": {"kv2": {"num_kv_pairs": 2}},
        }
    },
    "model": {"d_model": 16, "n_layers": 2},
    "train": {"steps": 30, "batch_size": 16, "warmup_steps": 3},
    "ess": {"n_sequences": 4},
    "e1": {"tasks": {"mqar": ["kv2"]}, "mixers": ["SA", "LA", "GLA"], "state_sizes": [4, 8]},
    "e3": {
        "task": "mqar",
        "difficulty": "kv2",
        "mixers": ["S6", "GLA-S6"],
        "state_sizes": [4],
        "alphas": [1.0],
    },
    "e4": {
        "task": "mqar",
        "difficulty": "kv2",
        "mixers": ["GLA"],
        "state_size": 4,
        "lambdas": [1.0],
        "layer_sets": [[0]],
    },
    "e5": {
        "task": "mqar",
        "mixer": "GLA",
        "teacher_state_size": 8,
        "teacher_difficulties": ["kv2"],
        "student_state_sizes": [4],
    },
    "e7": {"task": "mqar", "difficulty": "kv2", "state_size": 4, "patterns": ["GLA,SA", "SA,GLA"]},
}
SYNTHETIC_FIGURES = [
    "e1_accuracy_vs_ess",
    "e2_state_utilisation",
    "e3_ess_vs_tss",
    "e4_regulariser",
    "e5_distillation",
    "e7_hybrid_layers",
    "e8_tolerance_sensitivity",
    "synthetic_training_curves",
]
SYNTHETIC_TABLES = [
    "e1_correlations",
    "e2_failure_modes",
    "e3_featurisation",
    "e4_regulariser_runs",
    "e5_distillation_runs",
    "e7_hybrids",
    "e8_tolerance_correlations",
    "synthetic_runs",
]


def audit(workdir, result="results/figures/e6_delimiter_traces.pdf"):
    """`ess audit` of one result's whole chain, run as a user would, in the workflow dir."""
    return subprocess.run(
        [str(BIN / "ess"), "audit", result],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The workflow's small real target, run once for the tests below: download SmolLM2 (the
    default source), two layers, one delimiter and one control; and every synthetic experiment
    on a grid that trains in seconds. Returns its working directory."""
    workdir = tmp_path_factory.mktemp("small_run")
    (workdir / "config").mkdir()
    config = {**SMALL_CONFIG, "synthetic": SMALL_SYNTHETIC}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-c2", "all", timeout=1800)
    assert run.returncode == 0, run.stderr[-5000:] + run.stdout[-5000:]
    return workdir


def report_caption(name: str, kind: str) -> str:
    """The start of a result's caption as workflow/report/<e6|synthetic>_<kind>.rst writes it:
    up to its first config value, with the result's own name filled in and reST's backticks
    dropped. The E6 files hold one block per result, opened by
    `{% if/elif snakemake.wildcards.name == "<name>" %}`."""
    experiment = "e6" if name.startswith("e6_") else "synthetic"
    text = (ROOT / "workflow" / "report" / f"{experiment}_{kind}.rst").read_text()
    block = re.search(rf'snakemake\.wildcards\.name == "{name}" %}}\n(.*?)\{{%', text, re.DOTALL)
    text = (block[1] if block else text).replace("{{ snakemake.wildcards.name }}", name)
    return " ".join(text.split("{{", 1)[0].replace("`", "").split())


@pytest.mark.workflow
@pytest.mark.slow
def test_report_lists_every_figure_and_table_with_its_caption(small_run, tmp_path):
    """`make report` on the small run, opened in headless Chromium: each figure and table of
    `all` is listed in its category, and opening it shows its caption."""
    if chromium() is None:
        pytest.skip("needs Debian's `chromium` package (.ci/run installs it)")
    made = subprocess.run(
        ["make", "-C", str(ROOT), "report", f"WORKDIR={small_run}"],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    report = small_run / "results" / "report.html"
    seen = rendered_report(report, tmp_path)
    expected = [(f"results/figures/{name}.png", name, "figure") for name in FIGURES]
    expected += [(f"results/figures/{n}.png", n, "figure") for n in SYNTHETIC_FIGURES]
    expected += [(f"results/tables/{name}.csv", name, "table") for name in TABLES]
    expected += [(f"results/tables/{n}.csv", n, "table") for n in SYNTHETIC_TABLES]
    print(f"report.html: {report.stat().st_size / 1e6:.1f} MB, {len(seen['opened'])} results")
    for path, name, kind in expected:
        category = "E6 state modulation" if name.startswith("e6_") else "Synthetic tasks"
        listed = " ".join(text for key, text in seen["listed"].items() if key.startswith(category))
        assert path in listed, f"{path} is not listed in the report's category {category}"
        caption = report_caption(name, kind)
        assert len(caption) > 40, caption
        assert caption in words(seen["opened"].get(path, "")), f"{path}: caption not shown"
    summary = " ".join((ROOT / "workflow" / "report" / "summary.rst").read_text().split())
    summary = summary.split("(", 1)[0].replace("`", "").strip()
    listed = " ".join(text for key, text in seen["listed"].items() if key.startswith("Summary"))
    assert "results/summary.md" in listed, "results/summary.md is not listed under Summary"
    assert summary in words(seen["opened"].get("results/summary.md", ""))
    opened = [path for path, _, _ in expected] + ["results/summary.md"]
    assert sorted(seen["opened"]) == sorted(opened)


@pytest.mark.workflow
@pytest.mark.slow
def test_end_to_end_small_run_and_audit(small_run):
    """The small run's products, their audit down to the weights and the data, a rerun with
    nothing to do, and tampering caught by the audit."""
    tmp_path = small_run
    results = tmp_path / "results"
    for name in FIGURES + SYNTHETIC_FIGURES:
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 0
            assert (results / "figures" / f"{name}.{ext}.manifest.json").is_file()
    for name in TABLES + SYNTHETIC_TABLES:
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert (results / "notebooks" / "e6_delimiter_traces.ipynb").is_file()
    summary = (results / "summary.md").read_text()
    for experiment in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"):
        assert f"| {experiment} |" in summary, experiment
    assert "| summary |" not in summary and "| all |" in summary
    assert len(list((results / "ess" / "smollm2").rglob("part*.parquet"))) == 2
    assert len(list((results / "train").rglob("model.safetensors"))) == 13

    checked = audit(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "results/models/smollm2/fetched" in checked.stdout  # the chain reaches the weights
    checked = audit(tmp_path, "results/tables/e5_distillation_runs.csv")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "results/tasks/mqar/kv2/train.safetensors" in checked.stdout  # back to the data

    again = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "all")
    assert "Nothing to be done" in again.stdout + again.stderr

    # Tampering with an intermediate of the chain makes the audit fail and name it.
    tampered = next((results / "ess" / "smollm2").rglob("part*.parquet"))
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    checked = audit(tmp_path)
    assert checked.returncode != 0
    assert tampered.name in checked.stdout + checked.stderr
    checkpoint = next((results / "train").rglob("model.safetensors"))
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    checked = audit(tmp_path, "results/tables/synthetic_runs.csv")
    assert checked.returncode != 0
    assert "model.safetensors" in checked.stdout + checked.stderr
