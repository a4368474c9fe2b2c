"""`ess status`: what a workflow directory holds and what is still to do, while a run goes on.

Three views of a working directory (the one holding `results/` and `.snakemake/`):

- the figures and tables present in results/figures and results/tables, with their formats;
- per rule, the jobs done (Snakemake's records of finished jobs whose outputs are present) and
  the jobs still to run (a `snakemake --dry-run` of the target, which takes no lock: safe while
  a run goes on, locally or on SLURM);
- the jobs in progress: outputs Snakemake has marked incomplete (a running job, or one that was
  interrupted and will be rerun), each with the last line of its log. Jobs log their outputs in
  their first lines (workflow/scripts/workflow_job.py), which is how a log is found.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

OUTPUTS_LINE = re.compile(r"outputs (\[.*\])$")  # written by workflow_job.start


@dataclass
class InProgress:
    """A job whose outputs are marked incomplete: its outputs, its log (None if not found),
    the log's last line and the seconds since the log last changed."""

    outputs: list[str]
    log: str | None
    last_line: str
    idle_s: float | None


def products(workdir: Path) -> dict[str, dict[str, list[str]]]:
    """{"figures": {name: [extensions]}, "tables": {...}} of the files present."""
    found: dict[str, dict[str, list[str]]] = {}
    for kind in ("figures", "tables"):
        names = defaultdict(list)
        for path in sorted((workdir / "results" / kind).glob("*")):
            if path.is_file() and not path.name.endswith(".manifest.json"):
                names[path.stem].append(path.suffix.lstrip("."))
        found[kind] = dict(sorted(names.items()))
    return found


def done_jobs(workdir: Path) -> Counter:
    """{rule: jobs} of the finished jobs whose outputs are present, from Snakemake's records
    (.snakemake/metadata/, one JSON file per output named by its path in urlsafe base64)."""
    jobs = set()  # a job is its rule and its log files (every rule here logs per job)
    for output, record in snakemake_records(workdir / ".snakemake" / "metadata"):
        if record and "rule" in record and (workdir / output).exists():
            jobs.add((record["rule"], tuple(record.get("log") or [output])))
    return Counter(rule for rule, _ in jobs)


def snakemake_records(root: Path):
    """(path, JSON record or None) per file of a Snakemake persistence folder, whose file names
    are the urlsafe base64 of a path, split over folders prefixed '@' when long."""
    for marker in sorted(root.rglob("*")) if root.is_dir() else []:
        if marker.is_dir() or marker.name == "migration_underway":
            continue
        encoded = "".join(part.lstrip("@") for part in marker.relative_to(root).parts)
        try:
            path = base64.urlsafe_b64decode(encoded).decode()
        except ValueError:
            continue
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = None  # an empty incomplete marker, or a record being written
        yield path, record


def pending_jobs(workdir: Path, snakefile: Path, target: str = "all") -> dict[str, int] | str:
    """{rule: jobs} still to run for `target`, from a dry run; or the dry run's error text."""
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", target, "-s", str(snakefile), "-d", str(workdir)]
        + ["--dry-run", "--quiet", "rules"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = run.stdout + run.stderr
    if run.returncode != 0:
        return output.strip().splitlines()[-1] if output.strip() else f"exit {run.returncode}"
    if "Job stats:" not in output:
        return {}  # nothing to be done
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {
        match[1]: int(match[2])
        for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if match[1] != "total"
    }


def incomplete_outputs(workdir: Path) -> list[str]:
    """Outputs Snakemake has marked incomplete (.snakemake/incomplete/)."""
    return [path for path, _ in snakemake_records(workdir / ".snakemake" / "incomplete")]


def logged_outputs(workdir: Path) -> dict[str, Path]:
    """{output: log} from the `outputs [...]` line each job writes at the top of its log."""
    found = {}
    for log in (workdir / "results" / "logs").rglob("*.log"):
        with log.open(errors="replace") as stream:
            head = [stream.readline().rstrip("\n") for _ in range(5)]
        for line in head:
            match = OUTPUTS_LINE.search(line)
            if match:
                found.update(dict.fromkeys(json.loads(match[1]), log))
    return found


def last_line(path: Path) -> str:
    """The last non-empty line of a text file (reads only its end)."""
    with path.open("rb") as stream:
        stream.seek(0, 2)
        stream.seek(max(stream.tell() - 4096, 0))
        lines = [line for line in stream.read().decode(errors="replace").splitlines() if line]
    return lines[-1].strip() if lines else ""


def in_progress(workdir: Path) -> list[InProgress]:
    """Jobs with outputs marked incomplete, grouped by log, with each log's last line."""
    logs = logged_outputs(workdir)
    jobs: dict[Path | None, list[str]] = defaultdict(list)
    for output in incomplete_outputs(workdir):
        jobs[logs.get(output)].append(output)
    found = []
    for log, outputs in jobs.items():
        if log is None or not log.is_file():
            found.append(InProgress(outputs, None, "", None))
            continue
        idle = time.time() - log.stat().st_mtime
        found.append(InProgress(outputs, str(log.relative_to(workdir)), last_line(log), idle))
    return found


def status_text(workdir: Path, snakefile: Path | None, target: str = "all") -> str:
    """The report `ess status` prints."""
    lines = [f"# {workdir.resolve()}"]
    for kind, names in products(workdir).items():
        lines.append(f"{kind}: {len(names)} present")
        lines += [f"  {name:40} {' '.join(exts)}" for name, exts in names.items()]
    done = done_jobs(workdir)
    pending = pending_jobs(workdir, snakefile, target) if snakefile else "no Snakefile found"
    lines.append(f"jobs of `{target}`: done, still to run")
    if isinstance(pending, str):
        lines.append(f"  still to run: unknown ({pending})")
        pending = {}
    elif not pending:
        lines.append("  still to run: nothing, `snakemake` would have nothing to do")
    for rule in sorted(set(done) | set(pending)):
        lines.append(f"  {rule:28} {done.get(rule, 0):6} done {pending.get(rule, 0):6} to run")
    if any((workdir / ".snakemake" / "locks").glob("*")):
        lines.append(
            "locked: a snakemake run is going on here, or one was killed without cleaning up "
            "(kill -9, a lost node); if none runs, `snakemake --unlock` lifts the lock"
        )
    jobs = in_progress(workdir)
    lines.append(f"in progress or interrupted (outputs marked incomplete): {len(jobs)}")
    for job in jobs:
        more = f" (and {len(job.outputs) - 1} more)" if len(job.outputs) > 1 else ""
        lines.append(f"  {job.outputs[0]}{more}")
        if job.log is None:
            lines.append("    log not found")
        else:
            lines.append(f"    {job.log} (changed {job.idle_s:.0f} s ago): {job.last_line}")
    return "\n".join(lines)
