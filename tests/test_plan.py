"""The cost model and the plan (ess.paper.cost, ess.paper.plan, `ess plan`): the plan lists the jobs
Snakemake runs, its laws reproduce their calibration, a job over the cluster limits is refused
by name before any job runs, and nothing in the SLURM profile overrides the estimates."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from test_workflow import ROOT, dry_run, job_counts

from ess.paper import cost, plan
from ess.paper.config_checks import load_config
from ess.paper.results import published_names

PAPER = ROOT / "config" / "paper.yaml"


def plan_counts(config: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in plan.plan_jobs(config):
        counts[job.rule] = counts.get(job.rule, 0) + 1
    return counts


def test_plan_lists_the_jobs_of_the_default_dry_run(tmp_path):
    run = dry_run(tmp_path, "all")
    assert run.returncode == 0, run.stderr + run.stdout
    snakemake_counts = job_counts(run.stdout)
    snakemake_counts.pop("all")  # the target itself: a local rule, no work
    assert plan_counts(load_config()) == snakemake_counts


@pytest.mark.slow
def test_plan_lists_the_jobs_of_the_paper_dry_run(tmp_path):
    run = dry_run(tmp_path, "all", "--configfile", str(PAPER))
    # paper.yaml may still hold jobs over its limits: the dry run then refuses it, naming them
    if run.returncode != 0:
        assert "exceed the limits of its `cluster` section" in run.stderr + run.stdout
        pytest.skip("paper.yaml has jobs over its cluster limits (ess plan lists them)")
    snakemake_counts = job_counts(run.stdout)
    snakemake_counts.pop("all")
    assert plan_counts(load_config([PAPER])) == snakemake_counts


def oversized_config(tmp_path):
    """The default with one E1 state size far too large for a 32 GB node."""
    overlay = tmp_path / "oversized.yaml"
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    e1 = default["synthetic"]["e1"]
    e1["state_sizes"] = [8, 262144]
    overlay.write_text(yaml.safe_dump({"synthetic": {"e1": e1}, "cluster": {"node_mem_gb": 32}}))
    return overlay


def test_oversized_cell_is_refused_by_name_in_the_dry_run(tmp_path):
    overlay = oversized_config(tmp_path)
    run = dry_run(tmp_path, "all", "--configfile", str(overlay))
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "train_synthetic mqar/kv8/LA/tss262144/base/seed0: host memory" in output
    assert "> cluster.node_mem_gb 32" in output
    assert "To proceed" in output
    assert "tss8/" not in output.split("exceed the limits", 1)[1]  # only the oversized cells


def test_ess_plan_prints_the_table_and_fails_on_a_job_over_the_limits(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "ess.paper.cli", "plan", "--profile", ROOT / "profiles" / "slurm"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    for rule in ("train_synthetic", "measure_e6_ess", "aggregate_e6"):
        assert rule in ok.stdout
    assert "GPU-hours" in ok.stdout and "peak disk" in ok.stdout
    assert "no job exceeds the limits" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ess.paper.cli", "plan", "--configfile", oversized_config(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "train_synthetic mqar/kv8/GLA/tss262144/base/seed2: host memory" in bad.stdout


def test_resources_grow_with_the_attempt_and_stay_within_the_limits():
    config = load_config()
    job = next(j for j in plan.plan_jobs(config) if j.rule == "train_synthetic")
    first, second = (plan.job_resources(job, config, attempt) for attempt in (1, 2))
    assert second["mem_mb"] == pytest.approx(2 * first["mem_mb"], abs=1)
    assert second["runtime"] >= first["runtime"] >= 10
    assert first["gpu"] == 0  # the default trains on the CPU
    huge = plan.Job("train_synthetic", "x", cost.Cost(10**7, 0, 10**8, 0, 0))
    capped = plan.job_resources(huge, config, 3)
    assert capped["mem_mb"] == config["cluster"]["node_mem_gb"] * 1024
    assert capped["runtime"] == config["cluster"]["max_runtime_h"] * 60


def test_training_retries_are_the_profiles_unless_a_run_spans_attempts():
    """None leaves the profile's retries (a rule's `retries: 0` would mean none at all)."""
    default = load_config()
    assert plan.train_retries(plan.plan_jobs(default), default) is None
    paper = load_config([PAPER])
    jobs = plan.plan_jobs(paper)
    runs = [j for j in jobs if j.rule == "train_synthetic" and j.notes["resumable"]]
    most = max(plan.attempts_needed(j, paper) for j in runs)
    assert most > 1, "paper.yaml's longest runs span time limits"
    assert plan.train_retries(jobs, paper) == most - 1 + 2


def test_gpu_runs_accumulate_micro_batches_that_fit_the_gpu():
    config = load_config([PAPER])
    runs = [j for j in plan.plan_jobs(config) if j.rule == "train_synthetic"]
    limit = config["cluster"]["gpu_mem_gb"] * 1024
    split = [j for j in runs if j.notes["micro_batch_size"] < j.notes["batch_size"]]
    assert split, "paper.yaml's largest cells need micro-batches"
    for job in split:
        assert job.notes["batch_size"] % job.notes["micro_batch_size"] == 0
        assert job.cost.gpu_mb <= limit or job.notes["micro_batch_size"] == 1


def test_the_laws_reproduce_their_calibration_within_a_factor_of_two():
    """In-sample: each law's terms can carry the measurements it was fitted to."""
    for row in cost.calibration_rows():
        L, N = row["seq_len"], row["state_size"]
        if row["kind"] == "train":
            activations, seconds = cost.train_laws(row["mixer"])
            state = cost.model_state_mb(row["mixer"], 8192, 256, 2, int(N))
            measured = (row["peak_mb"] - state, row["seconds"])
            estimated = (activations(L, N, row["batch"]), seconds(L, N, row["batch"]))
        elif row["kind"] == "dense":
            peak, seconds = cost.dense_laws()
            splits = len(range(1, int(L), int(row["position_stride"])))
            measured = (row["peak_mb"], row["seconds"])
            estimated = (peak(L, 0, row["operators"]), seconds(L, 0, row["operators"] * splits))
        elif row["kind"] == "realisation":
            peak, seconds = cost.realisation_laws()
            measured = (row["peak_mb"], row["seconds"])
            estimated = (peak(L, N, row["operators"]), seconds(L, N, row["operators"]))
        else:
            continue
        # below 20 MB or 50 ms the measurement is mostly noise
        for m, e, floor in zip(measured, estimated, (20.0, 0.05), strict=True):
            if m > floor:
                assert 0.5 <= e / m <= 2.0, (row, m, e)


def test_the_slurm_profile_sets_no_resource_the_cost_model_sets():
    profile = plan.read_profile(ROOT / "profiles" / "slurm")
    assert plan.profile_conflicts(profile) == []
    for key in ("mem_mb", "runtime", "gpu"):
        assert key not in (profile.get("default-resources") or {}), key
    overriding = {"set-resources": {"train_synthetic": {"mem_mb": 1000, "cpus_per_task": 2}}}
    assert plan.profile_conflicts(overriding) == [
        "profile set-resources train_synthetic.mem_mb overrides the cost model"
    ]


def test_every_rule_of_the_workflow_has_a_job_name_format():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    planned = set(__import__("re").findall(r'planned\("(\w+)", "mem_mb"\)', text))
    # the notebook rules, one definition in notebooks.smk: <group>_<kind>
    assert 'planned(f"{group}_{kind}", "mem_mb")' in text
    planned |= {f"{group}_{kind}" for group, kind in published_names({})}
    assert planned == set(plan.JOB_NAMES)
