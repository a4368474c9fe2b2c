"""The rehearsal of config/paper.yaml under SLURM: every rule of its DAG at paper shapes,
thinned only in counts (tests/rehearsal.py), through `snakemake --profile slurm all` on the
local cluster (tests/slurm/start-cluster.sh). Each job's sacct MaxRSS and Elapsed stand beside
the plan's estimate and request (ess.paper.plan): every job must stay within its request and within
twice its estimate. The table goes to $ESS_REHEARSAL_TABLE when set (benchmarks/rehearsal.md
holds the committed one)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from rehearsal import (
    parse_elapsed_s,
    parse_memory_mb,
    rehearsal_config,
    slurm_wildcards,
    submissions,
)
from standins import PAPER_REPOS, build_standin, standin_tokenizer, write_hub_cache
from test_e6_hub import FAMILY, standin_config
from test_slurm import fresh_checkout, run_snakemake, slurm_cluster  # noqa: F401

from ess.paper.config_checks import load_config
from ess.paper.plan import job_resources, plan_jobs

REHEARSAL_TIMEOUT_S = 3600
# About 190 SLURM jobs on a 2-CPU node: 30-50 minutes here. It runs when asked for
# (`make rehearsal`, or ESS_REHEARSAL=1 with the SLURM cluster up), not in every `make test`.
REHEARSAL_ASKED = os.environ.get("ESS_REHEARSAL") == "1"


def sacct_usage(jobids: list[str]) -> dict[str, dict]:
    """Per job: State, ReqMem, Elapsed of the allocation and the largest MaxRSS of its steps."""
    fields = ["JobID", "State", "ReqMem", "Elapsed", "MaxRSS"]
    deadline = time.monotonic() + 60  # slurmdbd may lag behind slurmctld
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-j", ",".join(jobids), "-o", ",".join(fields)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        usage: dict[str, dict] = {}
        for line in out.splitlines():
            row = dict(zip(fields, line.split("|"), strict=True))
            job = row["JobID"].split(".")[0]
            entry = usage.setdefault(job, {"max_rss_mb": 0.0})
            if "." not in row["JobID"]:
                entry.update(state=row["State"], req_mem=row["ReqMem"], elapsed=row["Elapsed"])
            entry["max_rss_mb"] = max(entry["max_rss_mb"], parse_memory_mb(row["MaxRSS"]))
        done = all("state" in usage.get(j, {}) for j in jobids)
        if done or time.monotonic() > deadline:
            return usage
        time.sleep(2)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.workflow
@pytest.mark.skipif(not REHEARSAL_ASKED, reason="the rehearsal runs with ESS_REHEARSAL=1")
def test_paper_config_rehearsed_under_slurm(slurm_cluster, tmp_path):  # noqa: F811
    tokenizer = standin_tokenizer()
    hf_home = tmp_path / "hf"
    standins, commits = {}, {}
    for name, family in FAMILY.items():
        standins[name] = build_standin(family, tmp_path / "built" / family, tokenizer=tokenizer)
        commits[name] = write_hub_cache(
            hf_home / "hub", PAPER_REPOS[family], tmp_path / "built" / family
        )
    node_mb = int(subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True,
                                 check=True).stdout.split()[0])  # fmt: skip
    config = rehearsal_config(standin_config(hf_home, commits, standins), standins, node_mb / 1024)
    checkout = fresh_checkout(tmp_path / "ess")
    (checkout / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    rc, log, seconds = run_snakemake(
        checkout, "all", snakefile=None, timeout=REHEARSAL_TIMEOUT_S, env_extra=env,
    )  # fmt: skip
    assert rc == 0, log[-5000:]
    jobs = submissions(log)
    usage = sacct_usage([jobid for _, jobid, _ in jobs])

    planned = {}
    loaded = load_config(root=checkout)
    for job in plan_jobs(loaded):
        planned[(job.rule, slurm_wildcards(job.rule, job.name))] = job
    rows, problems = [], []
    for rule, jobid, wildcards in jobs:
        job = planned[(rule, wildcards)]
        request = job_resources(job, loaded)
        used = usage[jobid]
        rss, elapsed = used["max_rss_mb"], parse_elapsed_s(used["elapsed"])
        rows.append((rule, job.name, rss, job.cost.host_mb, request["mem_mb"], elapsed,
                     job.cost.seconds(job.threads), request["runtime"] * 60))  # fmt: skip
        if used["state"] != "COMPLETED":
            problems.append(f"{rule} {job.name}: {used['state']}")
        if rss > request["mem_mb"] or rss > 2 * job.cost.host_mb:
            problems.append(f"{rule} {job.name}: MaxRSS {rss:.0f} MB, estimate "
                            f"{job.cost.host_mb:.0f}, request {request['mem_mb']}")  # fmt: skip
        if elapsed > request["runtime"] * 60:
            problems.append(f"{rule} {job.name}: {elapsed:.0f} s > {request['runtime']} min")
    table = rehearsal_table(rows, seconds)
    print(table)
    target = os.environ.get("ESS_REHEARSAL_TABLE")
    Path(target or tmp_path / "rehearsal.md").write_text(table)
    assert not problems, "\n".join(problems)


def rehearsal_table(rows: list[tuple], seconds: float) -> str:
    lines = [
        f"Rehearsal of config/paper.yaml under SLURM: {len(rows)} jobs in {seconds / 60:.1f} min.",
        "",
        "| rule | job | MaxRSS MB | estimate MB | request MB | elapsed s | estimate s "
        "| request s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, name, rss, est, req, elapsed, est_s, req_s in rows:
        lines.append(
            f"| {rule} | {name} | {rss:.0f} | {est:.0f} | {req} | {elapsed:.0f} | {est_s:.0f} "
            f"| {req_s} |"
        )
    return "\n".join(lines) + "\n"
