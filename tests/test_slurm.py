"""Run workflows through profiles/slurm on a real SLURM cluster.

The cluster is the one-node cluster of tests/slurm/start-cluster.sh (run it as root first);
without it the `slurm` tests skip. Most tests run the tiny tests/slurm/workflow/Snakefile, whose
rules each call python: they check the profile and the executor plugin, not the science. One
runs the real workflow's small target (SMALL_CONFIG of tests/test_workflow.py) end to end.

    sudo tests/slurm/start-cluster.sh
    .venv/bin/python -m pytest -m slurm tests/test_slurm.py -v -s
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from test_workflow import FIGURES, SMALL_CONFIG, TABLES  # the small real target: one definition

from ess.paper.config_checks import load_config
from ess.paper.plan import job_resources, plan_jobs

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
SNAKEFILE = ROOT / "tests" / "slurm" / "workflow" / "Snakefile"
RUN_TIMEOUT_S = 600  # one snakemake run; the slowest here (three attempts) takes ~130 s
STATUS_WAIT_S = 5  # --slurm-init-seconds-before-status-checks (plugin default: 40)
FAILED_STATES = {"FAILED", "OUT_OF_MEMORY", "CANCELLED"}  # how SLURM reports a killed job

REAL_SNAKEFILE = ROOT / "Snakefile"
REAL_RUN_TIMEOUT_S = 900  # the small real target: 183 s alone, 407 s on a busy machine (2 CPUs)

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
MEMHOG_MB = 2000  # tests/slurm/workflow/Snakefile: memhog asks for MEMHOG_MB x attempt


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _cluster_problem() -> str | None:
    """Why the local cluster cannot run jobs, or None when it can."""
    hint = "start it with `sudo tests/slurm/start-cluster.sh`"
    for tool in ("sinfo", "sbatch", "sacct"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: SLURM is not installed; {hint}"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return f"`sinfo` timed out: no slurmctld answers; {hint}"
    if out.returncode != 0:
        return f"SLURM cluster is not up ({out.stderr.strip()}); {hint}"
    states = out.stdout.split()
    if not {"idle", "mix", "alloc"} & set(states):
        return f"no SLURM node can take jobs (node states {states}); {hint}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the `workflow` extra")
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def run_snakemake(
    workdir: Path,
    *args: str,
    snakefile: Path | None = SNAKEFILE,
    timeout: int = RUN_TIMEOUT_S,
    env_extra: dict[str, str] | None = None,
) -> tuple[int, str, float]:
    """Run snakemake with the SLURM profile in `workdir`; return (exit code, log, seconds).

    snakefile None: the user's command in a checkout, `snakemake --profile slurm ...` run in
    `workdir` (the profile and the Snakefile found there by name). The log goes to
    workdir/snakemake.log as well, for a look after a failure.
    """
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}  # jobs inherit it
    env.update(env_extra or {})
    if snakefile is None:
        where = ["--profile", "slurm"]
    else:
        where = ["--profile", str(PROFILE), "--snakefile", str(snakefile), "-d", str(workdir)]
    cmd = [
        sys.executable, "-m", "snakemake", *where,
        "--slurm-init-seconds-before-status-checks", str(STATUS_WAIT_S),
        *args,
    ]  # fmt: skip
    log_path = workdir / "snakemake.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            _cancel_run(log_path.read_text())
            pytest.fail(f"snakemake hung for more than {timeout} s; log: {log_path}")
    return rc, log_path.read_text(), time.monotonic() - t0


def _cancel_run(log: str) -> None:
    """scancel the jobs of a snakemake run that was killed (job name = SLURM run ID)."""
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    if run_id:
        subprocess.run(["scancel", "--name", run_id.group(1)], check=False)


def submitted_jobs(log: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) for each submission, in order, from a snakemake log."""
    jobs = []
    for jobid, slurm_log in SUBMITTED.findall(log):
        rule = re.search(r"/rule_(\w+)/", slurm_log)
        jobs.append((rule.group(1) if rule else "?", jobid))
    return jobs


def job_stats(log: str) -> dict[str, int]:
    """{rule: jobs} from the first `Job stats` table of a snakemake log."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {
        match[1]: int(match[2])
        for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if match[1] != "total"
    }


def fresh_checkout(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked, and untracked ones git does
    not ignore, so that uncommitted work is tested too; links stay links), in `dest`: no .venv,
    no results/, nothing from the home directory."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, dest / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def producing_jobs(workdir: Path) -> dict[str, tuple[str, str]]:
    """{output file: (rule, log files)} of the real workflow in `workdir`, per snakemake's
    --detailed-summary. Every rule of the workflow logs to a per-job file, so (rule, log)
    names the job that wrote the output."""
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REAL_SNAKEFILE), "-d", str(workdir)]
        + ["--detailed-summary"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = run[run.index("output_file\t") :].splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line]
    return {row["output_file"]: (row["rule"], row["log-file(s)"]) for row in rows}


def sacct(jobids: list[str]) -> dict[str, dict[str, str]]:
    """State, requested memory, exit code, ... of each job, per SLURM accounting."""
    fields = ["JobID", "JobName", "State", "ReqMem", "ExitCode", "Elapsed", "AllocTRES"]
    deadline = time.monotonic() + 30  # slurmdbd may lag behind slurmctld by a few seconds
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", ",".join(jobids), "-o", ",".join(fields)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
        rows = {row["JobID"]: row for row in rows}
        if set(jobids) <= rows.keys() or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def report(name: str, seconds: float, jobs: list[tuple[str, str]], acct: dict) -> None:
    print(f"\n{name}: snakemake took {seconds:.1f} s")
    for rule, jobid in jobs:
        row = acct.get(jobid, {})
        print(
            f"  rule {rule:19} SLURM job {jobid:>5}  {row.get('State', '?'):14}"
            f" ReqMem={row.get('ReqMem', '?'):7} Elapsed={row.get('Elapsed', '?')}"
        )


@pytest.mark.slurm
@pytest.mark.slow
def test_each_rule_runs_as_its_own_slurm_job(slurm_cluster, tmp_path):
    rc, log, seconds = run_snakemake(tmp_path, "all")
    jobs = submitted_jobs(log)
    acct = sacct([j for _, j in jobs]) if jobs else {}
    report("produce -> consume", seconds, jobs, acct)

    assert rc == 0, log[-3000:]
    assert (tmp_path / "results" / "consumed.txt").read_text().strip() == "43"
    # `all` is a localrule with no command: snakemake handles it itself, no SLURM job
    assert sorted(rule for rule, _ in jobs) == ["consume", "produce"], log[-3000:]
    assert len({j for _, j in jobs}) == 2, "each rule must get its own SLURM job id"
    assert all(acct[j]["State"] == "COMPLETED" for _, j in jobs), acct
    cpus = {rule: re.search(r"cpu=(\d+)", acct[j]["AllocTRES"]).group(1) for rule, j in jobs}
    assert cpus == {"produce": "1", "consume": "2"}, "cpus_per_task must follow `threads:`"


@pytest.mark.slurm
@pytest.mark.slow
def test_failing_rule_is_reported_not_waited_on(slurm_cluster, tmp_path):
    """The profile keeps going past a failed job (a paper run should not stop at its first
    failure): the other chain (produce -> consume) completes, and the run exits non-zero
    naming the failed rule."""
    rc, log, seconds = run_snakemake(tmp_path, "fail", "all")
    jobs = submitted_jobs(log)
    acct = sacct([j for _, j in jobs]) if jobs else {}
    report("fail + all", seconds, jobs, acct)

    assert rc != 0, log[-3000:]
    assert "Error in rule fail" in log
    assert (tmp_path / "results" / "consumed.txt").read_text().strip() == "43"
    attempts = 1 + int(_profile().get("retries", 0))
    failed = [j for rule, j in jobs if rule == "fail"]
    assert len(failed) == attempts, log[-3000:]
    assert all(acct[j]["State"] == "FAILED" for j in failed), acct
    # Each attempt costs ~45 s here (the plugin polls after 5 s, then 15 s, 25 s later, ...):
    # the bound is generous, the point is that a failure ends the run instead of hanging it.
    assert seconds < attempts * 90, f"took {seconds:.0f} s"


@pytest.mark.slurm
@pytest.mark.slow
def test_job_killed_for_memory_is_retried_with_more(slurm_cluster, tmp_path):
    mem1, mem2 = MEMHOG_MB, 2 * MEMHOG_MB  # the rule's mem_mb on the first two attempts
    hog_mb = (mem1 + mem2) // 2  # too much for attempt 1, enough for attempt 2

    rc, log, seconds = run_snakemake(tmp_path, "memhog", "--config", f"memhog_mb={hog_mb}")
    jobs = submitted_jobs(log)
    acct = sacct([j for _, j in jobs]) if jobs else {}
    report(f"memhog ({hog_mb} MB)", seconds, jobs, acct)

    assert rc == 0, log[-3000:]
    assert [rule for rule, _ in jobs] == ["memhog", "memhog"], log[-3000:]
    (first, second) = (acct[j] for _, j in jobs)
    assert first["State"] in FAILED_STATES, first
    assert (first["ReqMem"], second["ReqMem"]) == (f"{mem1}M", f"{mem2}M"), acct
    assert second["State"] == "COMPLETED", second
    # SLURM's own word that it killed the first attempt for memory (failed jobs keep their log)
    slurm_log = next((tmp_path / ".snakemake" / "slurm_logs").rglob(f"{jobs[0][1]}.log"))
    assert "exceeded memory limit" in slurm_log.read_text()
    assert f"mem_mb={mem2}" in (tmp_path / "results" / "memhog.txt").read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_gpu_request_reaches_slurm(slurm_cluster, tmp_path):
    """`gpu: 1` becomes `sbatch --gpus=1`; the test cluster has one fake GPU to give."""
    # On the command line, --set-resources replaces the profile's block: only gpu_probe is set.
    rc, log, seconds = run_snakemake(tmp_path, "gpu_probe", "--set-resources", "gpu_probe:gpu=1")
    jobs = submitted_jobs(log)
    acct = sacct([j for _, j in jobs]) if jobs else {}
    report("gpu_probe", seconds, jobs, acct)

    assert rc == 0, log[-3000:]
    assert [rule for rule, _ in jobs] == ["gpu_probe"], log[-3000:]
    assert "gres/gpu=1" in acct[jobs[0][1]]["AllocTRES"], acct
    assert (tmp_path / "results" / "gpu.txt").read_text().strip() == "0"  # CUDA_VISIBLE_DEVICES


@pytest.mark.slurm
@pytest.mark.slow
def test_real_workflow_small_target_runs_each_job_on_slurm(slurm_cluster, tmp_path):
    """The user's command, `snakemake --profile slurm all`, in a fresh checkout whose
    config/config.yaml holds the small target (tests/test_workflow.py SMALL_CONFIG: SmolLM2
    from PyPI, layer 29, one delimiter, one control, L=256): every non-local job is its
    own COMPLETED SLURM job, and each manifest names the job that wrote it. Two options fit
    the run to this node: a 5 s first status check and one thread per job. Memory requests
    come from the cost model: each job asks SLURM for what `ess plan` says it will."""
    t0 = time.monotonic()
    checkout = fresh_checkout(tmp_path / "ess")
    (checkout / "config" / "config.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    tmp_path = checkout  # the working directory: results/ and .snakemake/ go here
    rc, log, seconds = run_snakemake(
        tmp_path,
        "all",
        snakefile=None,
        timeout=REAL_RUN_TIMEOUT_S,
        env_extra={"OMP_NUM_THREADS": "1"},  # one CPU per job (cpus_per_task = threads = 1)
    )
    assert "Using profiles slurm and workflow specific profile profiles/default" in log, log[:2000]
    jobs = submitted_jobs(log)
    ids = [jobid for _, jobid in jobs]
    acct = sacct(ids) if ids else {}
    report("real workflow, small target", seconds, jobs, acct)
    assert rc == 0, log[-5000:]

    results = tmp_path / "results"
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 0
    for name in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0

    # One SLURM job per non-local job of the DAG, none retried. Local: `all`, and fetch_model
    # (fetch.on_submit_node, default true: the submitting node has the network).
    stats = job_stats(log)
    assert stats == {
        "fetch_model": 1,
        "convert_model": 1,
        "make_sequence": 1,
        "capture_operators": 2,  # the delimiter and the control
        "measure_e6_ess": 2,  # one job per task
        "bigram_recall": 1,
        "aggregate_e6": 1,
        "e6_figure": len(FIGURES),
        "e6_table": len(TABLES),
        "summary": 1,  # results/summary.md
        "all": 1,
    }, stats
    local = {"all", "fetch_model"}
    non_local = sum(n for rule, n in stats.items() if rule not in local)
    assert len(ids) == len(set(ids)) == non_local, jobs
    assert sorted(rule for rule, _ in jobs) == sorted(
        rule for rule, n in stats.items() if rule not in local for _ in range(n)
    ), jobs
    assert all(acct[j]["State"] == "COMPLETED" for j in ids), acct
    run_id = re.search(r"SLURM run ID: (\S+)", log)[1]  # the plugin's job name
    assert {acct[j]["JobName"] for j in ids} == {run_id}, acct
    # Each job asked SLURM for the memory the plan gives a job of its rule, on one CPU and no
    # GPU (the small config runs on the CPU).
    config = load_config(root=checkout)
    requests = defaultdict(set)
    for job in plan_jobs(config):
        requests[job.rule].add(f"{job_resources(job, config)['mem_mb']}M")
    for rule, j in jobs:
        assert acct[j]["ReqMem"] in requests[rule], (rule, acct[j], requests[rule])
        assert "cpu=1," in acct[j]["AllocTRES"] + ",", acct[j]
        assert "gres/gpu" not in acct[j]["AllocTRES"], acct[j]

    # Each manifest records the SLURM job that wrote it (ess.paper.provenance: SLURM_JOB_ID): the
    # manifests of one job carry one id, those of different jobs different ids.
    manifests = {
        str(path.relative_to(tmp_path)): json.loads(path.read_text())["slurm_job_id"]
        for path in sorted(results.rglob("*.manifest.json"))
    }
    producers = producing_jobs(tmp_path)
    ids_of_job = defaultdict(set)  # (rule, log) -> SLURM job ids in its manifests
    for path, jobid in manifests.items():
        ids_of_job[producers[path]].add(jobid)
    print(f"  {len(manifests)} manifests from {len(ids_of_job)} jobs:")
    for (rule, job_log), job_ids in sorted(
        ids_of_job.items(), key=lambda item: sorted(str(j).zfill(12) for j in item[1])
    ):
        print(f"    {rule:19} {job_log:50} slurm_job_id {', '.join(map(str, job_ids))}")
    assert all(len(job_ids) == 1 for job_ids in ids_of_job.values()), ids_of_job
    fetched = [job for job in ids_of_job if job[0] == "fetch_model"]
    assert [ids_of_job.pop(job) for job in fetched] == [{None}], "fetched on the submitting node"
    manifest_ids = {job: next(iter(job_ids)) for job, job_ids in ids_of_job.items()}
    assert len(manifest_ids) == non_local, "every job writes at least one manifest"
    assert len(set(manifest_ids.values())) == len(manifest_ids), manifest_ids
    assert set(manifest_ids.values()) == set(ids), (manifest_ids, ids)
    rule_of_id = {jobid: rule for rule, jobid in jobs}
    assert all(rule_of_id[jobid] == rule for (rule, _), jobid in manifest_ids.items())

    t_audit = time.monotonic()
    audit = subprocess.run(
        [
            str(Path(sys.executable).parent / "ess"),
            "audit",
            "results/figures/e6_delimiter_traces.pdf",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(
        f"  ess audit: {time.monotonic() - t_audit:.1f} s (exit {audit.returncode}); "
        f"test total: {time.monotonic() - t0:.1f} s"
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "results/models/smollm2/fetched" in audit.stdout  # the chain reaches the weights


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_profile_names_resolve_in_a_fresh_checkout(profile, tmp_path):
    """`snakemake --profile slurm -n all` (and local) in a fresh checkout, nothing in $HOME:
    Snakemake looks for a profile name in the working directory (./slurm -> profiles/slurm)."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the `workflow` extra")
    checkout = fresh_checkout(tmp_path / "ess")
    home = tmp_path / "home"  # an empty home: no ~/.config/snakemake/<profile>
    home.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", profile, "-n", "--quiet", "rules", "all"],
        cwd=checkout, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert f"Using profiles {profile} and workflow specific profile profiles/default" in output
    assert "Job stats:" in output


def test_gpu_rule_names_in_slurm_profile_exist_in_workflow():
    """set-resources keys that match no rule are silently ignored by snakemake."""
    sources = [ROOT / "Snakefile", ROOT / "workflow" / "Snakefile"]
    sources += sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    text = "\n".join(p.read_text() for p in sources if p.is_file())
    rules = set(re.findall(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", text, re.MULTILINE))
    rules |= set(re.findall(r"^\s*use rule \S+ (?:from \S+ )?as (\w+)", text, re.MULTILINE))
    if not rules:
        pytest.skip("the workflow has no rules yet (Snakefile, workflow/rules/*.smk)")
    unknown = set(_profile().get("set-resources", {})) - rules
    assert not unknown, f"profiles/slurm set-resources names no rule of the workflow: {unknown}"
