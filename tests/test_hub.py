"""Hub sources as a cluster meets them, offline: the real huggingface_hub client against a
Hub-layout cache of stand-ins (tests/standins.py) and a local stand-in of the Hub's model API
(tests/hub_server.py): only the files the loader needs are fetched, the manifest carries the
commit, gated repos say what to do, and `ess pin` rewrites branches to commits."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import serve_hub
from standins import PAPER_REPOS, build_standin, standin_tokenizer, write_hub_cache

from ess.paper.e6.fetch import HF_ALLOW_PATTERNS, fetched_commit, load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
FETCH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ess.paper.e6.fetch import FetchError, fetch_model
    try:
        print(fetch_model(sys.argv[1], Path(sys.argv[2])))
    except FetchError as error:
        print(error)
        sys.exit(3)
    """
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """HF_HOME with a Hub cache of three stand-ins: mistral with the weight copies real repos
    hold (.bin, consolidated.safetensors, original/), llama sharded with an index, and a
    mamba whose branch `bin-only` holds a pickled .bin and no safetensors."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = standin_tokenizer()
    built = root / "built"
    mistral = build_standin("mistral", built / "mistral", duplicates=True, tokenizer=tokenizer)
    llama = build_standin("llama", built / "llama", shard_bytes=100_000, tokenizer=tokenizer)
    mamba = build_standin("mamba", built / "mamba", tokenizer=tokenizer)
    bin_only = built / "mamba-bin"
    bin_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bin_only / name).write_bytes((mamba.directory / name).read_bytes())
    state = load_causal_lm(mamba.directory)[0].state_dict()
    torch.save(state, bin_only / "pytorch_model.bin")
    cache = root / "hf" / "hub"
    commits = {
        family: write_hub_cache(cache, PAPER_REPOS[family], standin.directory)
        for family, standin in (("mistral", mistral), ("llama", llama), ("mamba", mamba))
    }
    write_hub_cache(cache, PAPER_REPOS["mamba"], bin_only, branch="bin-only")
    return {"hf_home": root / "hf", "commits": commits, "built": built}


def run_fetch(source: str, dest: Path, hf_home: Path, endpoint: str | None = None):
    """fetch_model in a fresh interpreter (huggingface_hub reads HF_* when imported): offline
    against the cache, or online against `endpoint`."""
    env = {**os.environ, "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_TOKEN", None)
    if endpoint is None:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = endpoint
    command = [sys.executable, "-c", FETCH, source, str(dest)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_only_the_files_the_loader_reads_are_fetched_and_the_commit_is_recorded(hub, tmp_path):
    commit = hub["commits"]["mistral"]
    source = f"hf:{PAPER_REPOS['mistral']}@{commit}"
    run = run_fetch(source, tmp_path / "fetched", hub["hf_home"])
    assert run.returncode == 0, run.stdout + run.stderr
    fetched = tmp_path / "fetched"
    assert files_under(fetched) == [
        ".ess-fetch.json", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert set(files_under(hub["built"] / "mistral")) - set(files_under(fetched)) == {
        "consolidated.safetensors",
        "original/params.json",
        "pytorch_model.bin",
    }
    assert fetched_commit(fetched) == commit
    model, _ = load_causal_lm(fetched, torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_branch_resolves_to_its_commit_and_shards_come_with_their_index(hub, tmp_path):
    run = run_fetch(f"hf:{PAPER_REPOS['llama']}@main", tmp_path / "fetched", hub["hf_home"])
    assert run.returncode == 0, run.stdout + run.stderr
    fetched = tmp_path / "fetched"
    assert fetched_commit(fetched) == hub["commits"]["llama"]
    index = json.loads((fetched / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert all((fetched / shard).is_file() for shard in shards)
    load_causal_lm(fetched)


def test_a_revision_without_safetensors_is_refused_with_what_to_do(hub, tmp_path):
    run = run_fetch(f"hf:{PAPER_REPOS['mamba']}@bin-only", tmp_path / "fetched", hub["hf_home"])
    assert run.returncode == 3, run.stdout + run.stderr
    assert "holds no .safetensors" in run.stdout and "local:<path>" in run.stdout
    assert not (tmp_path / "fetched").exists()


def test_a_gated_repo_says_how_to_get_access(hub, tmp_path):
    """The Hub's answer to a gated repo without a token (403, X-Error-Code GatedRepo) reaches
    the user as what to do: accept the licence, provide a token."""
    repo = PAPER_REPOS["llama"]
    with serve_hub(hub["hf_home"] / "hub", gated=(repo,)) as endpoint:
        run = run_fetch(f"hf:{repo}@main", tmp_path / "fetched", tmp_path / "empty", endpoint)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "GatedRepoError" in run.stdout
    for words in ("accept its licence", f"https://huggingface.co/{repo}", "HF_TOKEN"):
        assert words in run.stdout, run.stdout
    assert not (tmp_path / "fetched").exists()


def run_pin(configfile: Path, endpoint: str):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "ess.paper.cli", "pin", "--configfile", str(configfile)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_ess_pin_rewrites_branches_to_commits_and_keeps_comments(hub, tmp_path):
    commits = hub["commits"]
    configfile = tmp_path / "paper.yaml"
    configfile.write_text(
        "# the paper's models\n"
        "models:\n"
        "  mistral:\n"
        f"    source: hf:{PAPER_REPOS['mistral']}@main  # a branch\n"
        "    allow_unpinned: true\n"
        "  llama:\n"
        f'    source: "hf:{PAPER_REPOS["llama"]}@{commits["llama"]}"\n'
        "  mamba:\n"
        f"    source: hf:{PAPER_REPOS['mamba']}@main\n"
    )
    with serve_hub(hub["hf_home"] / "hub") as endpoint:
        run = run_pin(configfile, endpoint)
    assert run.returncode == 0, run.stdout + run.stderr
    assert configfile.read_text() == (
        "# the paper's models\n"
        "models:\n"
        "  mistral:\n"
        f"    source: hf:{PAPER_REPOS['mistral']}@{commits['mistral']}  # a branch\n"
        "    allow_unpinned: true\n"
        "  llama:\n"
        f'    source: "hf:{PAPER_REPOS["llama"]}@{commits["llama"]}"\n'
        "  mamba:\n"
        f"    source: hf:{PAPER_REPOS['mamba']}@{commits['mamba']}\n"
    )
    assert f"mistral: hf:{PAPER_REPOS['mistral']}@main -> " in run.stdout


def test_ess_pin_on_a_gated_repo_says_what_to_do_and_leaves_the_file(hub, tmp_path):
    configfile = tmp_path / "paper.yaml"
    text = f"models:\n  llama:\n    source: hf:{PAPER_REPOS['llama']}@main\n"
    configfile.write_text(text)
    with serve_hub(hub["hf_home"] / "hub", gated=(PAPER_REPOS["llama"],)) as endpoint:
        run = run_pin(configfile, endpoint)
    assert run.returncode == 1
    assert "accept its licence" in run.stderr and "HF_TOKEN" in run.stderr
    assert configfile.read_text() == text


def test_the_allow_list_names_the_loaders_files():
    """What load_causal_lm reads is allowed; the copies beside the weights are not."""
    import fnmatch

    def allowed(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in HF_ALLOW_PATTERNS)

    for name in ("model.safetensors", "model-00001-of-00004.safetensors", "tokenizer.model"):
        assert allowed(name), name
    for name in ("pytorch_model.bin", "consolidated.safetensors", "original/consolidated.00.pth"):
        assert not allowed(name), name
