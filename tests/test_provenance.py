"""Manifests, atomic outputs and the audit of a small dataset -> intermediate -> table chain."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ess.outputs import atomic_output, sha256_file, sha256_tree
from ess.paper.provenance import audit, check_chain, git_state, manifest_path, write_manifest

REPO = Path(__file__).resolve().parents[1]


def make_chain(root: Path) -> dict[str, Path]:
    """dataset.txt -> intermediate.json (+ manifest) -> table.csv (+ manifest)."""
    dataset = root / "data" / "dataset.txt"
    dataset.parent.mkdir()
    dataset.write_text("the quick brown fox\n")
    intermediate = root / "results" / "intermediate.json"
    intermediate.parent.mkdir()
    started = time.time()
    intermediate.write_text(json.dumps({"words": 4}))
    write_manifest(intermediate, [dataset], {"tau": 1e-3}, seeds={"data": 0}, started=started)
    table = root / "results" / "tables" / "table.csv"
    table.parent.mkdir()
    table.write_text("model,ess\nsmol,4\n")
    write_manifest(table, [intermediate], {"columns": ["model", "ess"]})
    return {"dataset": dataset, "intermediate": intermediate, "table": table}


def test_clean_chain_audits_clean_in_chain_order(tmp_path):
    chain = make_chain(tmp_path)
    assert audit(chain["table"]) == []
    checked = [check.path for check in check_chain(chain["table"])]
    assert checked == [
        chain["table"],
        chain["intermediate"],
        manifest_path(chain["intermediate"]),
        chain["dataset"],
    ]


def test_audit_accepts_the_manifest_itself(tmp_path):
    chain = make_chain(tmp_path)
    assert audit(manifest_path(chain["table"])) == []


def test_tampered_intermediate_is_reported_first(tmp_path):
    chain = make_chain(tmp_path)
    chain["intermediate"].write_text(json.dumps({"words": 5}))
    problems = audit(chain["table"])
    assert len(problems) == 1  # each file is checked once, where the chain first reaches it
    assert problems[0].startswith("MISMATCH")
    assert str(chain["intermediate"]) in problems[0]
    assert sha256_file(chain["intermediate"]) in problems[0]


def test_tampered_dataset_is_found_through_the_chain(tmp_path):
    chain = make_chain(tmp_path)
    chain["dataset"].write_text("the quick brown cat\n")
    problems = audit(chain["table"])
    assert len(problems) == 1
    assert str(chain["dataset"]) in problems[0]


def test_tampered_manifest_and_missing_input_are_reported(tmp_path):
    chain = make_chain(tmp_path)
    intermediate_manifest = manifest_path(chain["intermediate"])
    recorded = json.loads(intermediate_manifest.read_text())
    recorded["config"]["tau"] = 0.5
    intermediate_manifest.write_text(json.dumps(recorded))
    chain["dataset"].unlink()
    problems = audit(chain["table"])
    assert problems[0].startswith(f"MISMATCH {intermediate_manifest}")
    assert problems[1].startswith(f"MISSING {chain['dataset']}")


def test_result_without_manifest_is_a_problem(tmp_path):
    lone = tmp_path / "lone.csv"
    lone.write_text("x\n")
    assert audit(lone) == [f"MISSING {manifest_path(lone)}: no manifest for {lone}"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ess.paper.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_cli_audit_exits_nonzero_naming_the_tampered_file(tmp_path):
    chain = make_chain(tmp_path)
    clean = run_cli("audit", str(chain["table"]))
    assert clean.returncode == 0, clean.stderr
    assert f"OK       {chain['dataset']}" in clean.stdout

    chain["intermediate"].write_text("tampered")
    tampered = run_cli("audit", str(chain["table"]), str(chain["intermediate"]))
    assert tampered.returncode == 1
    assert f"MISMATCH {chain['intermediate']}" in tampered.stdout
    assert f"first problem: MISMATCH {chain['intermediate']}" in tampered.stderr


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "ess").exists(), reason="no ess console script")
def test_console_script_audit(tmp_path):
    chain = make_chain(tmp_path)
    chain["dataset"].write_text("changed")
    completed = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ess"), "audit", str(chain["table"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert str(chain["dataset"]) in completed.stderr


def test_manifest_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    chain = make_chain(tmp_path)
    manifest = json.loads(manifest_path(chain["intermediate"]).read_text())
    assert manifest["output"] == {
        "path": "intermediate.json",
        "kind": "file",
        "sha256": sha256_file(chain["intermediate"]),
    }
    assert manifest["inputs"] == [
        {"path": "../data/dataset.txt", "kind": "file", "sha256": sha256_file(chain["dataset"])}
    ]
    assert manifest["config"] == {"tau": 1e-3}
    assert manifest["seeds"] == {"data": 0}
    assert manifest["slurm_job_id"] == "4242"
    assert manifest["duration_s"] >= 0
    assert manifest["started"] <= manifest["finished"]
    assert {"ess", "torch", "transformers", "numpy", "pandas"} <= set(manifest["packages"])
    assert manifest["python"] == ".".join(map(str, sys.version_info[:3]))
    head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO, capture_output=True)
    expected_commit = head.stdout.decode().strip() if head.returncode == 0 else "unknown"
    assert manifest["git"]["commit"] == expected_commit
    assert manifest["git"]["dirty"] in (True, False)

    table_manifest = json.loads(manifest_path(chain["table"]).read_text())
    (entry,) = table_manifest["inputs"]
    assert entry["manifest"] == "../intermediate.json.manifest.json"
    assert entry["manifest_sha256"] == sha256_file(manifest_path(chain["intermediate"]))


def test_git_state_outside_git_is_unknown(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": "unknown"}


def test_directory_hash_covers_names_and_contents(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    original = sha256_tree(tree)
    (tree / "sub" / "b.txt").write_text("B")
    changed_content = sha256_tree(tree)
    (tree / "sub" / "b.txt").rename(tree / "sub" / "c.txt")
    renamed = sha256_tree(tree)
    assert len({original, changed_content, renamed}) == 3

    write_manifest(tree, [], {})
    (tree / ".snakemake_timestamp").touch()  # Snakemake adds it to directory() outputs later
    assert audit(tree) == []
    (tree / "a.txt").write_text("tampered")
    assert audit(tree)[0].startswith(f"MISMATCH {tree}")


def test_atomic_output_leaves_nothing_when_the_block_raises(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_output(target) as temporary:
            temporary.write_text("half a table")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temporary:
            temporary.write_text("new")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_replaces_files_and_directories(tmp_path):
    target = tmp_path / "out.csv"
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path / temporary.parent.name  # same filesystem
        temporary.write_text("new")
    assert target.read_text() == "new"

    directory = tmp_path / "model"
    (directory).mkdir()
    (directory / "stale.bin").write_text("stale")
    with atomic_output(directory) as temporary:
        temporary.mkdir()
        (temporary / "fresh.bin").write_text("fresh")
    assert [path.name for path in directory.iterdir()] == ["fresh.bin"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "out.csv"]


def test_atomic_output_requires_the_block_to_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="without creating"):
        with atomic_output(tmp_path / "never.csv"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_an_input_named_by_several_manifests_is_hashed_once_per_job(tmp_path, monkeypatch):
    """One job writes a manifest per seed, each naming the same model directory: with a shared
    memo (workflow_job.INPUT_HASHES) the directory is hashed once, and every manifest records
    the hash a fresh hash gives."""
    import ess.paper.provenance as provenance

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 1000)
    hashed = []
    real = provenance.sha256_path
    monkeypatch.setattr(provenance, "sha256_path", lambda path: hashed.append(path) or real(path))
    memo: dict[str, str] = {}
    for seed in range(3):
        output = tmp_path / f"ops{seed}.safetensors"
        output.write_bytes(bytes([seed]))
        provenance.write_manifest(output, inputs=[model], config={}, input_hashes=memo)
    assert [Path(path).name for path in hashed].count("model") == 1
    recorded = {
        json.loads(manifest_path(tmp_path / f"ops{seed}.safetensors").read_text())["inputs"][0][
            "sha256"
        ]
        for seed in range(3)
    }
    assert recorded == {sha256_tree(model)}
