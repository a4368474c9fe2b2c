"""Bad configs that would fail only inside a job are refused before any job, by name.

One table of bad configs, each a change to config/config.yaml and the words the error must
contain: the config key, its value and what is allowed. Every case goes through the checks the
Snakefile runs when it loads (schema, then ess.workflow_config.check_config, as in
workflow/rules/common.smk); a few go through a real `snakemake -n all` as well, which shows that
the dry run is where they are refused. (A dry run costs ~4 s; the checks themselves ~0.1 s.)
The synthetic grid's own checks (names of tasks, difficulties, mixers) are dry-run in
tests/test_config.py.
"""

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
from test_config import merged  # what --configfile does on top of the default

from ess.workflow_config import check_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def setter(path: str, value):
    """A change that sets the dotted config key `path` (missing dicts are created)."""

    def change(config: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            config = config.setdefault(key, {})
        config[last] = value

    return change


def both(first, second):
    """Two changes, one after the other."""
    return lambda config: (first(config), second(config))


def kv_difficulty(name: str, **fields):
    return setter(f"synthetic.tasks.mqar.difficulties.{name}", fields)


def task(name: str, common: dict, **difficulties):
    """A synthetic task with its difficulties (no experiment uses it: it is still checked)."""
    return setter(f"synthetic.tasks.{name}", {"common": common, "difficulties": difficulties})


MQAR = "synthetic.tasks.mqar.difficulties"
# (id, change, words the error must contain)
BAD_CONFIGS = [
    # synthetic task sizes vs vocabulary and length (ess.tasks' own checks)
    (
        "mqar_kv_vs_vocab",
        kv_difficulty("kv99", num_kv_pairs=99),
        [f"{MQAR}.kv99", "99", "vocab_size=64 too small", "need vocab_size >= 200"],
    ),
    (
        "mqar_kv_vs_seq_len",
        kv_difficulty("kv20", num_kv_pairs=20, vocab_size=128),
        [f"{MQAR}.kv20", "seq_len=32 too short", "seq_len >= 80"],
    ),
    ("mqar_odd_seq_len", kv_difficulty("odd", seq_len=63), [f"{MQAR}.odd", "even seq_len"]),
    ("mqar_odd_vocab", kv_difficulty("odd", vocab_size=65), [f"{MQAR}.odd", "even vocab_size"]),
    ("mqar_no_kv_pairs", kv_difficulty("kv0", num_kv_pairs=0), [f"{MQAR}.kv0", ">= 1, got 0"]),
    ("mqar_bad_filler", kv_difficulty("f", filler="noise"), [f"{MQAR}.f", "'noise'", "'values'"]),
    (
        "mqar_no_test_examples",
        kv_difficulty("n0", num_kv_pairs=4, n_test=0),
        [f"{MQAR}.n0", "'n_test': 0", ">= 1, got 0"],
    ),
    (
        "mqar_unknown_field",
        kv_difficulty("kv4", num_kv_pair=4),
        [f"{MQAR}.kv4", "num_kv_pair", "num_kv_pairs"],
    ),
    (
        "selective_copying_too_many",
        task("selective_copying", {"seq_len": 16}, k9={"num_tokens_to_copy": 9}),
        [
            "synthetic.tasks.selective_copying.difficulties.k9",
            "num_tokens_to_copy=9",
            "seq_len >= 18",
        ],
    ),
    (
        "compression_odd_length",
        task("compression", {"seq_len": 33}, easy={}),
        ["synthetic.tasks.compression.difficulties.easy", "33", "even seq_len"],
    ),
    (
        "compression_tiny_vocab",
        task("compression", {"vocab_size": 2}, easy={}),
        ["synthetic.tasks.compression.difficulties.easy", "vocab_size must be >= 3, got 2"],
    ),
    (
        "difficulty_train_names_no_difficulty",
        setter("synthetic.tasks.mqar.train", {"kv99": {"steps": 750}}),
        ["synthetic.tasks.mqar.train.kv99", "names no difficulty", "kv4, kv8"],
    ),
    (
        "difficulty_train_unknown_field",
        setter("synthetic.tasks.mqar.train", {"kv4": {"step": 750}}),
        ["synthetic.tasks.mqar.train.kv4", "['step']", "steps"],
    ),
    # synthetic model and measurement vs the tasks
    (
        "model_vocab_below_task",
        setter("synthetic.model.vocab_size", 32),
        ["synthetic.model.vocab_size = 32", "vocab_size = 64", ">= 64"],
    ),
    (
        "n_sequences_above_n_test",
        setter("synthetic.ess.n_sequences", 5000),
        ["synthetic.ess.n_sequences = 5000", "n_test = 1000", "1 .. 1000"],
    ),
    (
        "e4_layer_beyond_n_layers",
        setter("synthetic.e4.layer_sets", [[0], [2]]),
        ["synthetic.e4.layer_sets", "[2]", "n_layers = 2", "0 .. 1"],
    ),
    (
        "e2_threshold_above_one",
        setter("synthetic.e2.learned_accuracy", 1.5),
        ["learned_accuracy", "1.5", "maximum"],
    ),
    # E6: windows and margins vs n_tokens, and the split stride
    (
        "e6_n_tokens_below_windows",
        setter("e6.n_tokens", 8),
        ["e6.n_tokens = 8", "e6.drop.before = 8", ">= before + after", "= 18"],
    ),
    (
        "e6_before_longer_than_sequence",
        setter("e6.drop.before", 600),
        ["e6.n_tokens = 512", "e6.drop.before = 600", "= 610"],
    ),
    (
        "e6_after_longer_than_sequence",
        setter("e6.drop.after", 600),
        ["e6.drop.after = 600", "= 610"],
    ),
    (
        "e6_recall_distance",
        setter("e6.recall.min_distance", 512),
        ["e6.recall.min_distance = 512", "1 .. 511"],
    ),
    (
        "e6_passages_min_above_max",
        setter("e6.passages.min_chars", 700),
        ["e6.passages", "'min_chars': 700", "max_chars (200) must be >= min_chars (700)"],
    ),
    (
        "e6_passages_none_left",
        setter("e6.passages", {"min_chars": 5000, "max_chars": 5000}),
        ["e6.passages", "no passage has between 5000 and 5000 characters"],
    ),
    (
        "e6_unknown_recall_task",
        setter("e6.recall.task", "comma"),
        ["e6.recall.task", "'comma'", "eos, blank_line"],
    ),
    (
        "e6_unknown_model",
        setter("e6.models", ["smollm2", "smollm3"]),
        ["e6.models", "'smollm3'", "allowed: smollm2, gemma3"],
    ),
    # models: layer indices, strides, and the models trained here
    (
        "layer_index_beyond_n_layers",
        setter("models.smollm2.layers", [0, 30]),
        ["models.smollm2.layers", "[30]", "0 .. 29"],
    ),
    (
        "channel_stride_above_heads",
        setter("models.smollm2.channel_stride", 10),
        ["models.smollm2.channel_stride = 10", "n_heads = 9", "1 .. 9"],
    ),
    (
        "trained_lm_unknown_mixer",
        setter("models.jargon_sa.train.layers", "XSA"),
        ["models.jargon_sa.train", "unknown mixer 'XSA'"],
    ),
    (
        "trained_lm_pattern_vs_n_layers",
        both(
            setter("models.jargon_gla.n_layers", 3),
            setter("models.jargon_gla.train.layers", "GLA,SA"),
        ),
        ["models.jargon_gla.train", "n_layers = 3", "does not divide n_layers=3"],
    ),
    (
        "trained_lm_heads_divide_width",
        setter("models.jargon_sa.train.d_model", 101),
        ["models.jargon_sa.train", "d_model=101 must be divisible by n_heads=2"],
    ),
    (
        "trained_lm_warmup_above_steps",
        setter("models.jargon_la.train.warmup_steps", 500),
        ["models.jargon_la.train", "warmup_steps must be in [0, steps=100], got 500"],
    ),
    (
        "trained_lm_heads_mismatch",
        setter("models.jargon_s6.n_heads", 2),
        ["models.jargon_s6.n_heads is 2", "it must be 128"],
    ),
    (
        "train_settings_on_a_fetched_model",
        setter("models.smollm2.train", {"layers": "SA"}),
        ["models.smollm2.train is set", "only applies to source train:jargon"],
    ),
    (
        "hf_source_on_a_branch",
        setter("models.smollm2.source", "hf:HuggingFaceTB/SmolLM2-135M@main"),
        ["models.smollm2.source", "revision 'main'", "40-hex commit", "ess pin", "allow_unpinned"],
    ),
    (
        "hf_source_on_a_branch_not_allowed_for_this_model",
        both(
            setter("allow_unpinned", True),
            both(
                setter("models.smollm2.source", "hf:HuggingFaceTB/SmolLM2-135M@v1.0"),
                setter("models.smollm2.allow_unpinned", False),
            ),
        ),
        ["models.smollm2.source", "revision 'v1.0'", "models.smollm2.allow_unpinned"],
    ),
]
# Refused by a real `snakemake -n all` too: the three the issue found passing the dry run, and
# a Hub source on a branch (issue 24).
DRY_RUN = [
    "mqar_kv_vs_vocab",
    "e6_n_tokens_below_windows",
    "e6_before_longer_than_sequence",
    "hf_source_on_a_branch",
]


def bad_config(change) -> dict:
    config = copy.deepcopy(DEFAULT)
    change(config)
    return config


def refusal(config: dict) -> str:
    """The error of the Snakefile's checks (schema, then check_config) on `config`."""
    try:
        validate(config, str(SCHEMA))
        check_config(config)
    except (ValueError, WorkflowError) as error:
        return str(error)
    pytest.fail("the config was accepted")


def test_the_table_has_enough_cases():
    assert len(BAD_CONFIGS) >= 20
    assert len({case for case, _, _ in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])  # fmt: skip
def test_bad_config_is_refused_by_name(change, words):
    message = refusal(bad_config(change))
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


@pytest.mark.parametrize("case", DRY_RUN)
def test_bad_config_is_refused_by_the_dry_run(case, tmp_path):
    change, words = next((c[1], c[2]) for c in BAD_CONFIGS if c[0] == case)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(bad_config(change)))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]
        + ["-n", "all"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "Job stats" not in output  # refused before the DAG, so before any job
    for word in words:
        assert word in output, f"{word!r} not in: {output[-3000:]}"


@pytest.mark.parametrize(
    "allow", [setter("allow_unpinned", True), setter("models.smollm2.allow_unpinned", True)]
)
def test_a_branch_passes_where_the_config_allows_it(allow):
    config = bad_config(setter("models.smollm2.source", "hf:HuggingFaceTB/SmolLM2-135M@main"))
    allow(config)
    validate(config, str(SCHEMA))
    check_config(config)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_pass(name):
    """Each shipped config, as --configfile on top of the default (the default itself too)."""
    config = merged(DEFAULT, yaml.safe_load((ROOT / "config" / name).read_text()))
    validate(config, str(SCHEMA))
    check_config(config)
