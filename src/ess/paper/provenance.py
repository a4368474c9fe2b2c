"""Provenance: content hashes, atomic writes, manifests beside every result, and their audit.

A result `out` gets `out.manifest.json` beside it (see `write_manifest`). The manifest records
the sha256 of `out` and of each input; an input that has its own manifest is referenced by it, so
one walk goes from a figure back to the model weights and data sets (`audit`). Paths inside a
manifest are relative to the manifest's own directory, so a results tree can be moved whole.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ess.outputs import atomic_output, sha256_file, sha256_path

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_SCHEMA = "ess-manifest/1"
RECORDED_PACKAGES = (
    "ess",
    "torch",
    "transformers",
    "numpy",
    "pandas",
    "scipy",
    "huggingface-hub",
    "safetensors",
    "gguf",
    "snakemake",
)


def manifest_path(output: Path) -> Path:
    """Where the manifest of `output` lives: `<output>.manifest.json` beside it."""
    output = Path(output)
    return output.with_name(output.name + MANIFEST_SUFFIX)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).absolute(), Path(start).absolute())).as_posix()


def _iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _run_git(args: list[str], cwd: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout if completed.returncode == 0 else None


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": bool or "unknown"} of the git tree holding `directory`.

    By default the tree holding this package's source, i.e. the code that made the result.
    Untracked, not ignored files count as dirty.
    """
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    commit = _run_git(["rev-parse", "--verify", "HEAD"], directory)
    status = _run_git(["status", "--porcelain"], directory)
    return {
        "commit": commit.strip() if commit else "unknown",
        "dirty": bool(status.strip()) if status is not None else "unknown",
    }


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in `names`; those not installed are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if callable(getattr(value, "tolist", None)):  # numpy / torch scalars and arrays
        return value.tolist()
    raise TypeError(f"manifest values must be JSON types or paths, got {type(value).__name__}")


def _describe(path: Path, manifest_dir: Path, hashes: dict[str, str] | None = None) -> dict:
    """The manifest entry of `path`; its sha256 is taken from (and put into) `hashes`, keyed
    by the resolved path, when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot record {path} in a manifest: it does not exist")
    key = str(path.resolve())
    memo = {} if hashes is None else hashes
    if key not in memo:
        memo[key] = sha256_path(path)
    entry: dict[str, Any] = {
        "path": _relative(path, manifest_dir),
        "kind": "directory" if path.is_dir() else "file",
        "sha256": memo[key],
    }
    return entry


def write_manifest(
    output: Path,
    inputs: list[Path],
    config: dict,
    seeds: dict | None = None,
    started: float | None = None,
    extra: dict | None = None,
    input_hashes: dict[str, str] | None = None,
) -> Path:
    """Write `<output>.manifest.json` (atomically) and return its path.

    input_hashes: a memo {resolved path: sha256} shared by the manifests of one job, so an
    input several outputs name (a model directory, an operator file) is hashed once per job;
    inputs must not change while the job runs.

    Records the sha256 of `output` and of each input (directories by `sha256_tree`); an input
    with its own manifest beside it is referenced together with that manifest's sha256. Also the
    config values used, seeds, git commit and dirtiness, package versions, python version, host,
    start (`started`, a `time.time()` value) / end times and duration, and SLURM_JOB_ID if set.
    """
    output = Path(output)
    target = manifest_path(output)
    manifest_dir = target.parent
    finished = time.time()
    input_entries = []
    for input_path in inputs:
        entry = _describe(input_path, manifest_dir, input_hashes)
        input_manifest = manifest_path(Path(input_path))
        if input_manifest.is_file():
            entry["manifest"] = _relative(input_manifest, manifest_dir)
            entry["manifest_sha256"] = sha256_file(input_manifest)
        input_entries.append(entry)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "output": _describe(output, manifest_dir),
        "inputs": input_entries,
        "config": config,
        "seeds": seeds or {},
        "git": git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "host": socket.gethostname(),
        "started": _iso_utc(started) if started is not None else None,
        "finished": _iso_utc(finished),
        "duration_s": round(finished - started, 3) if started is not None else None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "extra": extra or {},
    }
    text = json.dumps(manifest, indent=2, default=_json_default) + "\n"
    with atomic_output(target) as temporary:
        temporary.write_text(text)
    return target


@dataclass(frozen=True)
class AuditCheck:
    """One file checked by `check_chain`: status is "OK", "MISMATCH" or "MISSING"."""

    path: Path
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def describe(self) -> str:
        return f"{self.status} {self.path}" + (f": {self.detail}" if self.detail else "")


def _check_recorded(path: Path, kind: str, expected: str, manifest: Path) -> AuditCheck:
    if not path.exists():
        return AuditCheck(path, "MISSING", f"recorded in {manifest}")
    if (kind == "directory") != path.is_dir():
        return AuditCheck(path, "MISMATCH", f"recorded as a {kind} in {manifest}")
    actual = sha256_path(path)
    if actual != expected:
        return AuditCheck(path, "MISMATCH", f"sha256 {actual}, recorded {expected} in {manifest}")
    return AuditCheck(path, "OK")


def check_chain(result: Path) -> list[AuditCheck]:
    """Check `result` (or its manifest) and, depth first, every input and input manifest behind it.

    Every file is re-hashed once; the list is in chain order, the result first.
    """
    result = Path(result)
    if result.name.endswith(MANIFEST_SUFFIX):
        result = result.with_name(result.name[: -len(MANIFEST_SUFFIX)])
    checks: list[AuditCheck] = []
    seen: set[Path] = set()

    def walk(manifest: Path) -> None:
        try:
            recorded = json.loads(manifest.read_text())
            output = recorded["output"]
            inputs = recorded["inputs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            checks.append(AuditCheck(manifest, "MISMATCH", f"unreadable manifest: {error}"))
            return
        base = manifest.parent
        output_path = Path(os.path.normpath(base / output["path"]))
        if output_path not in seen:
            seen.add(output_path)
            checks.append(_check_recorded(output_path, output["kind"], output["sha256"], manifest))
        for entry in inputs:
            input_path = Path(os.path.normpath(base / entry["path"]))
            if input_path not in seen:
                seen.add(input_path)
                checks.append(_check_recorded(input_path, entry["kind"], entry["sha256"], manifest))
            if "manifest" not in entry:
                continue
            input_manifest = Path(os.path.normpath(base / entry["manifest"]))
            if input_manifest in seen:
                continue
            seen.add(input_manifest)
            check = _check_recorded(input_manifest, "file", entry["manifest_sha256"], manifest)
            checks.append(check)
            if check.status != "MISSING":
                walk(input_manifest)

    top_manifest = manifest_path(result)
    if not top_manifest.is_file():
        return [AuditCheck(top_manifest, "MISSING", f"no manifest for {result}")]
    seen.add(top_manifest)
    walk(top_manifest)
    return checks


def audit(path: Path) -> list[str]:
    """Problems found along the manifest chain behind `path`, first problem first; [] if clean."""
    return [check.describe() for check in check_chain(path) if not check.ok]
