"""The whole E6 chain of config/paper.yaml, offline, on Hub-style sources: tiny random
stand-ins of its six families (tests/standins.py: real layer structure, bf16, L 2048) in a
Hub-layout cache, fetched with HF_HUB_OFFLINE=1 from `hf:org/name@<commit>` sources, through
fetch -> convert -> sequences -> capture -> ESS -> recall -> aggregate -> every E6 figure and
table. Thinned in counts only: 2 layers, one seed, one delimiter and one control, a coarse
position stride."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors import safe_open
from standins import PAPER_REPOS, build_standin, standin_tokenizer, write_hub_cache

from ess.paper.e6.fetch import FETCH_MARKER

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAPER = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
FIGURES = ["e6_delimiter_traces", "e6_boundary_profile", "e6_drop_by_layer", "e6_drop_vs_recall"]
TABLES = ["e6_delimiter_drop", "e6_hierarchy", "e6_drop_by_tau"]
# paper.yaml's model name -> stand-in family
FAMILY = {
    "falcon_mamba_7b": "falcon_mamba",
    "mamba_2_8b": "mamba",
    "pythia_2_8b": "gpt_neox",
    "phi_2": "phi",
    "mistral_7b": "mistral",
    "llama3_8b": "llama",
}
LOADER_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def standin_config(hf_home: Path, commits: dict[str, str], standins: dict) -> dict:
    """config/paper.yaml with its models replaced by the stand-ins (pinned to their commits,
    allow_unpinned removed) and thinned in counts: 2 layers in one job, one attention head of 4
    measured, one seed, one delimiter and one control, 4 recall orders, position stride 256, 200
    bootstraps; operator files kept."""
    config = copy.deepcopy(PAPER)
    for name, model in config["models"].items():
        standin = standins[name]
        model.pop("allow_unpinned")
        model.update(
            source=f"hf:{PAPER_REPOS[FAMILY[name]]}@{commits[name]}",
            n_layers=standin.n_layers,
            n_heads=standin.n_heads,
            device="cpu",
        )
        # attention: one head of 4 (the dense path at L 2048 costs seconds per head)
        model.setdefault("channel_stride", standin.n_heads)
        model["layers_per_job"] = None  # both layers in one job: a job costs seconds to start
    config["e6"].update(
        delimiters=["eos"],
        controls=["removed"],
        seeds=[0],
        recall={"task": "removed", "orders": 4},
        profile={"offsets": [-8, -4, -1, 0, 1, 4, 8]},
        drop={"before": 8, "after": 8},
    )
    config["e6"]["position_stride"] = 256
    config["stats"]["n_boot"] = 200
    config["fetch"] = {"on_submit_node": True, "hf_home": str(hf_home)}
    config["resources"] = {"default": {"threads": 1}}
    config["keep_operators"] = True  # paper.yaml drops them; the test reads what was stored
    return config


def snakemake(workdir: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN"):  # only fetch.hf_home points at the cache
        env.pop(name, None)
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    return subprocess.run(
        command + list(args), capture_output=True, text=True, timeout=timeout, env=env
    )


def targets() -> list[str]:
    paths = [f"results/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
    paths += [f"results/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md", "tex")]
    return paths + [f"{path}.manifest.json" for path in paths]


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    """Stand-ins in a Hub cache (mistral with .bin and consolidated copies, llama sharded),
    and the workflow's E6 targets built from them offline. Returns (workdir, config, commits)."""
    root = tmp_path_factory.mktemp("e6_hub")
    tokenizer = standin_tokenizer()
    hf_home = root / "hf"
    standins, commits = {}, {}
    for name, family in FAMILY.items():
        standins[name] = build_standin(
            family,
            root / "built" / family,
            duplicates=family == "mistral",
            shard_bytes=100_000 if family == "llama" else None,
            tokenizer=tokenizer,
        )
        commits[name] = write_hub_cache(
            hf_home / "hub", PAPER_REPOS[family], standins[name].directory
        )
    workdir = root / "work"
    (workdir / "config").mkdir(parents=True)
    config = standin_config(hf_home, commits, standins)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(workdir, "-c2", *targets(), timeout=2400)
    assert run.returncode == 0, run.stderr[-6000:] + run.stdout[-3000:]
    return workdir, config, commits


def test_every_e6_figure_and_table_is_made(hub_run):
    workdir, _, _ = hub_run
    for path in targets():
        assert (workdir / path).is_file() and (workdir / path).stat().st_size > 0, path


def test_only_the_loaders_files_are_fetched_and_the_manifest_carries_the_commit(hub_run):
    workdir, _, commits = hub_run
    for name, family in FAMILY.items():
        fetched = workdir / "results" / "models" / name / "fetched"
        files = {p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()}
        weights = files - LOADER_FILES - {FETCH_MARKER, ".snakemake_timestamp"}
        if family == "llama":  # sharded: the index and the shards it names
            index = json.loads((fetched / "model.safetensors.index.json").read_text())
            shards = set(index["weight_map"].values())
            assert len(shards) > 1 and weights == {"model.safetensors.index.json", *shards}
        else:
            assert weights == {"model.safetensors"}, (name, weights)
        manifest = json.loads((fetched.parent / "fetched.manifest.json").read_text())
        assert manifest["extra"]["hub_commit"] == commits[name]
        assert manifest["config"]["source"].endswith(f"@{commits[name]}")


def test_mamba_operator_files_hold_only_the_measured_channels(hub_run):
    """falcon_mamba: 128 channels per layer, channel_stride 32: 4 kept at capture, at L 2048
    in bf16; every ESS row is one of them."""
    workdir, config, _ = hub_run
    operators = sorted(
        (workdir / "results" / "operators" / "falcon_mamba_7b").rglob("*.safetensors")
    )
    assert operators
    with safe_open(str(operators[0]), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    assert shapes["0.dt"] == (config["e6"]["n_tokens"], 4)
    assert shapes["0.a"] == (4, 16)
    tables = (workdir / "results" / "ess" / "falcon_mamba_7b").rglob("*.parquet")
    ess = pd.concat(pd.read_parquet(path) for path in tables)
    assert sorted(ess["head"].unique()) == [0, 32, 64, 96]


def test_a_branch_source_is_refused_by_the_dry_run(hub_run, tmp_path):
    _, config, _ = hub_run
    config = copy.deepcopy(config)
    config["models"]["llama3_8b"]["source"] = f"hf:{PAPER_REPOS['llama']}@main"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "-n", *targets(), timeout=300)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "models.llama3_8b.source" in output and "allow_unpinned" in output
    assert "Job stats" not in output
