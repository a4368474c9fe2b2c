"""A real run interrupted twice, then resumed with the plain command and no extra flag.

The target is the smallest of the workflow that spends long enough in one job to be
interrupted there: the synthetic runs table of two MQAR runs (2 task splits, 2 `train_synthetic`
jobs of ~20 s each, 1 `measure_synthetic_ess` for both seeds, the aggregate and one notebook),
at one core so jobs run one at a time. Three interruptions, each in a run of the plain
`snakemake --cores 1 <target>`:

1. Ctrl-C (SIGINT to snakemake's process group, as a terminal sends it) while the second
   `train_synthetic` job runs (the first has finished);
2. SIGKILL of the `train_synthetic` job's own process (`ess status` must show it running,
   with its log);
3. SIGKILL of snakemake just after its job finished, before it could record that (it is held
   with SIGSTOP while the job ends; a lost login node, `kill -9`, or the issue's Ctrl-C at the
   wrong moment): complete outputs stay marked incomplete, which without rerun-incomplete (set
   by profiles/default, the workflow profile) makes the next run stop with
   IncompleteFilesException; and the directory stays locked: Snakemake cannot tell that the
   killed run is gone, so this one case needs `snakemake --unlock` (which `ess status` says).

After each, every result at its final path must be whole (its manifest's sha256 matches: atomic
writes). Then the plain command finishes; the run finished before the first interruption is not
redone; `ess audit` of the table is clean. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import BIN, ENV, ROOT, SMALL_CONFIG, audit

from ess.paper.provenance import check_chain

TARGET = "results/tables/synthetic_runs.csv"
RUNS = ["mqar/kv2/GLA/tss4/base/seed0", "mqar/kv2/GLA/tss4/base/seed1"]
SYNTHETIC = {
    "tasks": {
        "mqar": {
            "common": {"vocab_size": 16, "seq_len": 16, "n_train": 256, "n_test": 64},
            "difficulties": {"kv2": {"num_kv_pairs": 2}},
        }
    },
    "model": {"d_model": 16, "n_layers": 2},
    # ~20 s per run on a quiet core: the job must outlast the 2 s the test waits before its
    # interruption (at 300 steps, 2.5 s, the run sometimes ended first)
    "train": {"steps": 2400, "batch_size": 16, "warmup_steps": 3},
    "ess": {"n_sequences": 4},
    "seeds": [0, 1],
    "e1": {"tasks": {"mqar": ["kv2"]}, "mixers": ["GLA"], "state_sizes": [4]},
}
WAIT_S = 300  # for one job to start, or for snakemake to stop


def start_run(workdir: Path) -> subprocess.Popen:
    """The plain command, in its own process group (as a shell runs a foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
        + ["--cores", "1", TARGET],
        stdout=(workdir / "snakemake.log").open("a"), stderr=subprocess.STDOUT, env=ENV,
        start_new_session=True, preexec_fn=default_sigint,
    )  # fmt: skip


def default_sigint() -> None:
    """Ctrl-C's default action in snakemake: a test run from a background shell (`cmd &`)
    inherits SIGINT ignored (POSIX), and snakemake would then never see the interruption."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(condition, what: str, run: subprocess.Popen | None = None):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run is not None and run.poll() is not None:
            pytest.fail(f"snakemake exited ({run.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def train_log(workdir: Path, run: str) -> Path:
    return workdir / "results" / "logs" / "train_synthetic" / f"{run}.log"


def finished(workdir: Path, run: str) -> bool:
    return (workdir / "results" / "train" / run / "metrics.json.manifest.json").is_file()


def running_train(workdir: Path) -> str | None:
    """The run whose train job has started (its log names its outputs) and not finished."""
    for run in RUNS:
        log = train_log(workdir, run)
        if not finished(workdir, run) and log.is_file() and "outputs [" in log.read_text():
            return run
    return None


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def train_process(snakemake_pid: int) -> int | None:
    """The python process running rule train_synthetic's script (tmp*.train_synthetic.py)."""
    for pid in descendants(snakemake_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b".train_synthetic.py") for arg in cmdline):
            return pid
    return None


def gone(pid: int) -> bool:
    """The process has exited (a zombie whose parent is stopped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop(run: subprocess.Popen) -> int:
    try:
        return run.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail("snakemake did not stop after the interruption")


def assert_what_looks_complete_is_right(workdir: Path) -> list[Path]:
    """Every result file at its final path has a manifest whose sha256 it matches."""
    results = workdir / "results"
    present = []
    for path in sorted(results.rglob("*")):
        parts = path.relative_to(results).parts
        if path.is_dir() or parts[0] in ("logs", "benchmarks", "notebooks"):
            continue
        if path.name.endswith(".manifest.json"):
            continue
        assert path.with_name(path.name + ".manifest.json").is_file(), f"{path}: no manifest"
        problems = [c for c in check_chain(path) if not c.ok]
        assert not problems, problems[0].describe()
        present.append(path)
    return present


def ess_status(workdir: Path) -> str:
    run = subprocess.run(
        [str(BIN / "ess"), "status", str(workdir), "--snakefile", str(ROOT / "Snakefile"),
         "--target", TARGET],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_interrupted_run_resumes_with_the_plain_command(tmp_path):
    (tmp_path / "config").mkdir()
    config = {**SMALL_CONFIG, "synthetic": SYNTHETIC}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    # 1. Ctrl-C while the second train job runs (the first one has finished).
    first = start_run(tmp_path)
    wait_until(lambda: any(finished(tmp_path, run) for run in RUNS), "a finished run", first)
    interrupted = wait_until(lambda: running_train(tmp_path), "the second train job", first)
    time.sleep(2)  # inside the training loop
    os.killpg(first.pid, signal.SIGINT)
    assert stop(first) != 0
    done = next(run for run in RUNS if finished(tmp_path, run))
    kept = tmp_path / "results" / "train" / done / "model.safetensors"
    kept_mtime = kept.stat().st_mtime_ns
    assert not finished(tmp_path, interrupted)
    assert_what_looks_complete_is_right(tmp_path)

    # 2. The plain command again; `ess status` shows the train job; SIGKILL of its process.
    second = start_run(tmp_path)
    pid = wait_until(lambda: train_process(second.pid), "the train job's process", second)
    wait_until(lambda: running_train(tmp_path), "the train job's log", second)
    os.kill(pid, signal.SIGSTOP)  # held mid-job while `ess status` looks (a dry run: seconds)
    status = ess_status(tmp_path)
    assert f"results/train/{interrupted}/" in status, status
    assert f"results/logs/train_synthetic/{interrupted}.log" in status, status
    assert re.search(r"train_synthetic\s+1 done\s+1 to run", status), status
    os.kill(pid, signal.SIGKILL)
    assert stop(second) != 0
    assert not finished(tmp_path, interrupted)
    assert_what_looks_complete_is_right(tmp_path)

    # 3. The job finishes while snakemake cannot record it (SIGSTOP), then SIGKILL of snakemake
    # (a lost login node, kill -9): complete outputs stay marked incomplete, and locked.
    third = start_run(tmp_path)
    pid = wait_until(lambda: train_process(third.pid), "the train job's process", third)
    os.kill(third.pid, signal.SIGSTOP)  # snakemake only: its job runs on to the end
    wait_until(lambda: finished(tmp_path, interrupted) and gone(pid), "the job to finish")
    os.killpg(third.pid, signal.SIGKILL)
    assert stop(third) != 0
    assert finished(tmp_path, interrupted)
    assert_what_looks_complete_is_right(tmp_path)
    status = ess_status(tmp_path)
    assert "outputs marked incomplete): 1" in status, status
    assert f"results/logs/train_synthetic/{interrupted}.log (changed" in status, status
    assert "locked" in status, status  # the killed run's lock: it says how to lift it
    unlock = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]
        + ["--unlock", TARGET],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert unlock.returncode == 0, unlock.stderr

    # 4. The plain command finishes what is left, and only that.
    fourth = start_run(tmp_path)
    assert stop(fourth) == 0, (tmp_path / "snakemake.log").read_text()[-5000:]
    assert kept.stat().st_mtime_ns == kept_mtime, f"{done} was trained again"
    present = assert_what_looks_complete_is_right(tmp_path)
    assert tmp_path / TARGET in present
    checked = audit(tmp_path, TARGET)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(f"results/train/{run}/model.safetensors" in checked.stdout for run in RUNS)
    status = ess_status(tmp_path)
    assert "nothing" in status and "outputs marked incomplete): 0" in status, status
