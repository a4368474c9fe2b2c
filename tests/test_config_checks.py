"""Bad configs and bad --config overrides are refused before any job, by name.

Two tables: bad configs, each a change to config/config.yaml, and bad overrides, each the
`--config KEY=VALUE` arguments a user would type (Snakemake hands nested values over as
strings). Each case comes with the words the error must contain: the dotted config key, its
value and what is allowed. Every case goes through the checks the Snakefile runs when it loads
(ess.paper.config_checks.prepare_config: the overrides typed by the schema and merged key by key,
the schema, then check_config, as in workflow/rules/common.smk); a few go through a real
`snakemake -n all` as well, which shows that the dry run is where they are refused. (A dry run
costs ~4 s on an idle machine; the checks themselves ~0.1 s.) Good overrides are read as the
schema's types, the same by `load_config` (`ess plan`) as by the Snakefile. The synthetic
grid's own checks (names of tasks, difficulties, mixers) are dry-run in tests/test_config.py.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config
from test_config import merged  # what --configfile does on top of the default

from ess.paper.config_checks import ConfigError, load_config, parse_overrides, prepare_config
from ess.paper.plan import plan_jobs
from ess.paper.synthetic.experiments import synthetic_grid

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
    # synthetic task sizes vs vocabulary and length (ess.paper.training.tasks' own checks)
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
    (
        "mqar_no_kv_pairs",
        kv_difficulty("kv0", num_kv_pairs=0),
        [f"{MQAR}.kv0.num_kv_pairs = 0", "an integer >= 1"],
    ),
    (
        "mqar_bad_filler",
        kv_difficulty("f", filler="noise"),
        [f"{MQAR}.f.filler = 'noise'", "one of any, values, zero"],
    ),
    (
        "mqar_no_test_examples",
        kv_difficulty("n0", num_kv_pairs=4, n_test=0),
        [f"{MQAR}.n0.n_test = 0", "an integer >= 1"],
    ),
    (
        "mqar_unknown_field",
        kv_difficulty("kv4", num_kv_pair=4),
        [f"{MQAR}.kv4.num_kv_pair = 4 is unknown", "num_kv_pairs"],
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
        ["synthetic.tasks.compression.common.vocab_size = 2", "an integer >= 3"],
    ),
    (
        "difficulty_train_names_no_difficulty",
        setter("synthetic.tasks.mqar.train", {"kv99": {"steps": 750}}),
        ["synthetic.tasks.mqar.train.kv99", "names no difficulty", "kv4, kv8"],
    ),
    (
        "difficulty_train_unknown_field",
        setter("synthetic.tasks.mqar.train", {"kv4": {"step": 750}}),
        ["synthetic.tasks.mqar.train.kv4.step = 750 is unknown", "steps"],
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
        both(setter("models.jargon_s6.n_heads", 2), setter("models.jargon_s6.channel_stride", 1)),
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


def refusal(config: dict, overrides: dict | None = None) -> str:
    """The error of the Snakefile's checks (prepare_config: overrides typed and merged, the
    schema, check_config) on `config`."""
    try:
        prepare_config(config, overrides, SCHEMA)
    except ValueError as error:
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
    prepare_config(config, None, SCHEMA)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_pass(name):
    """Each shipped config, as --configfile on top of the default (the default itself too)."""
    config = merged(DEFAULT, yaml.safe_load((ROOT / "config" / name).read_text()))
    prepare_config(config, None, SCHEMA)


# ---------------------------------------------------------------------------------------------
# --config overrides: `--config KEY=VALUE ...` as typed on the command line


def synthetic(**section) -> str:
    """A `synthetic=...` --config argument (JSON, as a user would type it)."""
    return f"synthetic={json.dumps(section)}"


TASK = "synthetic.tasks.mqar"
# (id, --config arguments, words the error must contain)
BAD_OVERRIDES = [
    # synthetic.train: types and bounds of every TrainConfig field
    ("train_lr_negative", [synthetic(train={"lr": -1})], ["synthetic.train.lr = -1", "> 0"]),
    ("train_lr_zero", [synthetic(train={"lr": 0})], ["synthetic.train.lr = 0", "a number > 0"]),
    ("train_lr_text", [synthetic(train={"lr": "fast"})], ["synthetic.train.lr = 'fast'", "number"]),
    ("train_steps_zero", [synthetic(train={"steps": 0})], ["synthetic.train.steps = 0", ">= 1"]),
    (
        "train_steps_text",
        [synthetic(train={"steps": "many"})],
        ["synthetic.train.steps = 'many'", "an integer >= 1"],
    ),
    (
        "train_steps_fraction",
        [synthetic(train={"steps": 1.5})],
        ["synthetic.train.steps = '1.5'", "cannot be read as integer"],
    ),
    (
        "train_batch_negative",
        [synthetic(train={"batch_size": -4})],
        ["synthetic.train.batch_size = -4"],
    ),
    (
        "train_warmup_negative",
        [synthetic(train={"warmup_steps": -1})],
        ["synthetic.train.warmup_steps = -1"],
    ),
    (
        "train_warmup_above_steps",
        [synthetic(train={"warmup_steps": 1000})],
        [
            "config key synthetic.train",
            "'warmup_steps': 1000",
            "warmup_steps must be in [0, steps=",
        ],
    ),
    (
        "train_weight_decay_negative",
        [synthetic(train={"weight_decay": -0.1})],
        ["synthetic.train.weight_decay = -0.1", ">= 0"],
    ),
    (
        "train_min_lr_ratio_above_one",
        [synthetic(train={"min_lr_ratio": 1.5})],
        ["synthetic.train.min_lr_ratio = 1.5", "<= 1"],
    ),
    (
        "train_device_unknown",
        [synthetic(train={"device": "tpu"})],
        ["synthetic.train.device = 'tpu'", "one of cpu, cuda"],
    ),
    (
        "train_micro_batch_zero",
        [synthetic(train={"micro_batch_size": 0})],
        ["synthetic.train.micro_batch_size = 0", "an integer >= 1 or null"],
    ),
    (
        "train_eval_every_negative",
        [synthetic(train={"eval_every": -100})],
        ["synthetic.train.eval_every = -100"],
    ),
    (
        "train_unknown_key",
        [synthetic(train={"stepz": 100})],
        ["synthetic.train.stepz = '100' is unknown", "steps"],
    ),
    (
        "train_seed_comes_from_the_grid",
        [synthetic(train={"seed": 3})],
        ["synthetic.train.seed = '3' is unknown"],
    ),
    ("train_as_a_list", [synthetic(train=[1, 2])], ["synthetic.train = ['1', '2']", "a mapping"]),
    (
        "train_quoted_object",
        [synthetic(train="{steps: -5}")],
        ["synthetic.train.steps = -5", ">= 1"],
    ),
    # synthetic.model: ModelConfig fields
    (
        "model_d_model_zero",
        [synthetic(model={"d_model": 0})],
        ["synthetic.model.d_model = 0", "an integer >= 1"],
    ),
    (
        "model_d_model_text",
        [synthetic(model={"d_model": "wide"})],
        ["synthetic.model.d_model = 'wide'"],
    ),
    (
        "model_heads_do_not_divide_width",
        [synthetic(model={"n_heads": 3})],
        [
            "config key synthetic.model",
            "'n_heads': 3",
            "d_model=128 must be divisible by n_heads=3",
        ],
    ),
    (
        "model_unknown_key",
        [synthetic(model={"dmodel": 64})],
        ["synthetic.model.dmodel = '64' is unknown", "d_model"],
    ),
    (
        "model_state_size_comes_from_the_grid",
        [synthetic(model={"state_size": 8})],
        ["synthetic.model.state_size = '8' is unknown"],
    ),
    (
        "model_head_norm_not_a_boolean",
        [synthetic(model={"head_norm": "maybe"})],
        ["synthetic.model.head_norm = 'maybe'", "true or false"],
    ),
    (
        "model_gate_tau_zero",
        [synthetic(model={"gate_tau": 0})],
        ["synthetic.model.gate_tau = 0", "> 0"],
    ),
    (
        "model_list_for_a_scalar",
        [synthetic(model={"mlp_ratio": [4]})],
        ["synthetic.model.mlp_ratio = ['4']", "an integer >= 0"],
    ),
    # synthetic.tasks: TaskConfig fields, names, per-difficulty train fields
    (
        "task_no_kv_pairs",
        [synthetic(tasks={"mqar": {"difficulties": {"kv4": {"num_kv_pairs": 0}}}})],
        [f"{TASK}.difficulties.kv4.num_kv_pairs = 0", ">= 1"],
    ),
    (
        "task_kv_pairs_beyond_vocab",
        [synthetic(tasks={"mqar": {"difficulties": {"kv4": {"num_kv_pairs": 99}}}})],
        [f"{TASK}.difficulties.kv4", "99"],
    ),
    (
        "task_unknown_field",
        [synthetic(tasks={"mqar": {"common": {"seqlen": 32}}})],
        [f"{TASK}.common.seqlen = '32' is unknown", "seq_len"],
    ),
    (
        "task_unknown_task",
        [synthetic(tasks={"recall": {"difficulties": {"a": {}}}})],
        ["synthetic.tasks.recall", "one of mqar, selective_copying, compression"],
    ),
    (
        "task_bad_filler",
        [synthetic(tasks={"mqar": {"common": {"filler": "noise"}}})],
        [f"{TASK}.common.filler = 'noise'", "one of any, values, zero"],
    ),
    (
        "task_n_train_negative",
        [synthetic(tasks={"mqar": {"common": {"n_train": -1}}})],
        [f"{TASK}.common.n_train = -1"],
    ),
    (
        "task_difficulty_train_lr_negative",
        [synthetic(tasks={"mqar": {"train": {"kv4": {"lr": "-0.1"}}}})],
        [f"{TASK}.train.kv4.lr = -0.1", "> 0"],
    ),
    # synthetic grid and measurement
    ("seeds_text", [synthetic(seeds=[0, "x"])], ["synthetic.seeds[1] = 'x'", "an integer >= 0"]),
    (
        "seeds_quoted_list_negative",
        [synthetic(seeds="[0, -1]")],
        ["synthetic.seeds[1] = -1", ">= 0"],
    ),
    ("seeds_repeated", [synthetic(seeds=[0, 0])], ["synthetic.seeds = [0, 0]", "no repeats"]),
    ("seeds_scalar", [synthetic(seeds="3")], ["synthetic.seeds = '3'", "cannot be read as array"]),
    ("seeds_broken_list", [synthetic(seeds="[0, 1")], ["synthetic.seeds = '[0, 1'", "a list"]),
    (
        "e1_mixers_scalar",
        [synthetic(e1={"mixers": "SA"})],
        ["synthetic.e1.mixers = 'SA'", "a list"],
    ),
    (
        "e1_unknown_mixer",
        [synthetic(e1={"mixers": ["SA", "RWKV"]})],
        ["synthetic.e1.mixers", "unknown mixer 'RWKV'"],
    ),
    (
        "e1_state_size_zero",
        [synthetic(e1={"state_sizes": [8, 0]})],
        ["synthetic.e1.state_sizes[1] = 0", ">= 1"],
    ),
    (
        "e4_no_lambdas",
        [synthetic(e4={"lambdas": []})],
        ["synthetic.e4.lambdas = []", "at least 1 item"],
    ),
    (
        "e4_unknown_key",
        [synthetic(e4={"lambda": [1]})],
        ["synthetic.e4.lambda = ['1'] is unknown", "lambdas"],
    ),
    (
        "e5_temperature_zero",
        [synthetic(e5={"temperature": 0})],
        ["synthetic.e5.temperature = 0", "> 0"],
    ),
    (
        "e2_threshold_text",
        [synthetic(e2={"learned_accuracy": "high"})],
        ["synthetic.e2.learned_accuracy = 'high'"],
    ),
    (
        "ess_n_sequences_zero",
        [synthetic(ess={"n_sequences": 0})],
        ["synthetic.ess.n_sequences = 0"],
    ),
    ("ess_device_unknown", [synthetic(ess={"device": "gpu"})], ["synthetic.ess.device = 'gpu'"]),
    # top-level keys, E6, models and the rest
    (
        "top_level_unknown",
        ['sythetic={"train":{"steps":1}}'],
        ["config key sythetic", "is unknown", "synthetic"],
    ),
    (
        "top_level_not_a_boolean",
        ["keep_operators=maybe"],
        ["keep_operators = 'maybe'", "true or false"],
    ),
    ("top_level_scalar_for_a_section", ["models=foo"], ["config key models = 'foo'", "a mapping"]),
    ("e6_n_tokens_text", ['e6={"n_tokens":"long"}'], ["e6.n_tokens = 'long'", "an integer >= 8"]),
    ("e6_seed_negative", ['e6={"seeds":[-1]}'], ["e6.seeds[0] = -1", ">= 0"]),
    (
        "e6_recall_not_a_boolean",
        ['e6={"recall":{"enabled":"sometimes"}}'],
        ["e6.recall.enabled = 'sometimes'"],
    ),
    (
        "e6_unknown_key_three_deep",
        ['e6={"drop":{"width":3}}'],
        ["e6.drop.width = '3' is unknown", "before, after"],
    ),
    (
        "e6_n_tokens_below_windows",
        ['e6={"n_tokens":10}'],
        ["e6.n_tokens = 10", "e6.drop.before = 8"],
    ),
    (
        "model_n_layers_text",
        ['models={"smollm2":{"n_layers":"thirty"}}'],
        ["models.smollm2.n_layers = 'thirty'"],
    ),
    (
        "model_layer_beyond_n_layers",
        ['models={"smollm2":{"layers":[0, 30]}}'],
        ["models.smollm2.layers", "0 .. 29"],
    ),
    (
        "trained_lm_lr_negative",
        ['models={"jargon_sa":{"train":{"lr":-1}}}'],
        ["models.jargon_sa.train.lr = -1"],
    ),
    ("stats_confidence_above_one", ['stats={"confidence":1.5}'], ["stats.confidence = 1.5", "< 1"]),
    (
        "cluster_memory_negative",
        ['cluster={"gpu_mem_gb":-80}'],
        ["cluster.gpu_mem_gb = -80", "> 0"],
    ),
    (
        "resources_unknown_rule",
        ['resources={"trian_synthetic":{"threads":2}}'],
        ["resources.trian_synthetic", "train_synthetic"],
    ),
    (
        "resources_threads_zero",
        ['resources={"default":{"threads":0}}'],
        ["resources.default.threads = 0"],
    ),
    (
        "tolerance_not_measured",
        ['ess={"tolerance":0.5}'],
        ["ess.tolerance = 0.5", "e6.tolerances"],
    ),
    (
        "tolerance_not_measured_by_the_synthetic_runs",
        ['ess={"tolerance":0.5}', 'e6={"tolerances":[0.5]}'],
        ["ess.tolerance = 0.5", "synthetic.ess.tolerances"],
    ),
    (
        "e6_position_stride_zero",
        ['e6={"position_stride":0}'],
        ["e6.position_stride"],
    ),
]


def test_the_override_table_has_enough_cases():
    assert len(BAD_OVERRIDES) >= 34
    assert len({case for case, _, _ in BAD_OVERRIDES}) == len(BAD_OVERRIDES)


@pytest.mark.parametrize(("entries", "words"), [c[1:] for c in BAD_OVERRIDES],
                         ids=[c[0] for c in BAD_OVERRIDES])  # fmt: skip
def test_bad_override_is_refused_by_name(entries, words):
    message = refusal(copy.deepcopy(DEFAULT), parse_overrides(entries))
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert "Traceback" not in message


# (--config arguments, dotted key, the value it must have after prepare_config)
GOOD_OVERRIDES = [
    ([synthetic(train={"steps": 100})], "synthetic.train.steps", 100),
    ([synthetic(train={"steps": 100})], "synthetic.train.batch_size", 32),  # merged, not replaced
    ([synthetic(train={"lr": "3e-3"})], "synthetic.train.lr", 3.0e-3),  # YAML 1.1: a string
    ([synthetic(train={"micro_batch_size": None})], "synthetic.train.micro_batch_size", None),
    ([synthetic(train={"micro_batch_size": 8})], "synthetic.train.micro_batch_size", 8),
    ([synthetic(train={"resume_every_minutes": 7.5})], "synthetic.train.resume_every_minutes", 7.5),
    ([synthetic(train="{steps: 100}")], "synthetic.train", {"steps": 100}),  # quoted: replaces
    ([synthetic(model={"head_norm": "no"})], "synthetic.model.head_norm", False),
    ([synthetic(model={"gla_s6_alpha": 0.5})], "synthetic.model.gla_s6_alpha", 0.5),
    ([synthetic(e1={"state_sizes": [16, 64]})], "synthetic.e1.state_sizes", [16, 64]),
    ([synthetic(e1={"state_sizes": "[16, 64]"})], "synthetic.e1.state_sizes", [16, 64]),
    ([synthetic(e1={"state_sizes": [16, 64]})], "synthetic.e1.mixers", ["SA", "LA", "WLA", "GLA"]),
    ([synthetic(seeds=[0])], "synthetic.seeds", [0]),  # a list replaces the whole list
    (
        [synthetic(tasks={"mqar": {"train": {"kv4": {"steps": "600"}}}})],
        "synthetic.tasks.mqar.train.kv4.steps",
        600,
    ),
    (
        [synthetic(tasks={"mqar": {"train": {"kv4": {"steps": "600"}}}})],
        "synthetic.tasks.mqar.difficulties.kv8.num_kv_pairs",
        8,
    ),
    (['e6={"models":"null"}'], "e6.models", None),
    (['e6={"models":["smollm2"], "hierarchy":[]}'], "e6.models", ["smollm2"]),
    (['e6={"recall":{"task":"eos"}}'], "e6.recall.task", "eos"),
    (['e6={"n_tokens":"256","position_stride":"8"}'], "e6.n_tokens", 256),
    (['e6={"n_tokens":"256","position_stride":"8"}'], "e6.position_stride", 8),
    (["keep_operators=false"], "keep_operators", False),
    (["keep_operators=False"], "keep_operators", False),
    (['models={"smollm2":{"layers":"[0, 29]"}}'], "models.smollm2.layers", [0, 29]),
    (['models={"smollm2":{"layers":"[0, 29]"}}'], "models.smollm2.n_layers", 30),
    (['models={"smollm2":{"layers":null}}'], "models.smollm2.layers", None),
    (['fetch={"hf_home":"/data/hf"}'], "fetch.hf_home", "/data/hf"),
    (['fetch={"hf_home":"null"}'], "fetch.hf_home", None),
    (['cluster={"gpu_mem_gb":"40"}'], "cluster.gpu_mem_gb", 40),
]


def value_at(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize(("entries", "key", "value"), GOOD_OVERRIDES)
def test_good_override_is_read_as_the_schema_type(entries, key, value):
    """load_config (`ess plan`) and the Snakefile's route (Snakemake has already merged the raw
    strings into its config) give the same typed config."""
    overrides = parse_overrides(entries)
    loaded = load_config(overrides=overrides)
    assert value_at(loaded, key) == value
    assert type(value_at(loaded, key)) is type(value)
    snakemake_merged = copy.deepcopy(DEFAULT)
    update_config(snakemake_merged, copy.deepcopy(overrides))
    assert prepare_config(snakemake_merged, overrides, SCHEMA) == loaded


def test_the_issue_override_reaches_every_run():
    config = load_config(overrides=parse_overrides([synthetic(train={"steps": 100})]))
    jobs = [job for job in plan_jobs(config) if job.rule == "train_synthetic"]
    assert jobs
    runs = synthetic_grid(config["synthetic"]).values()
    assert {run.spec["train"]["steps"] for run in runs} == {100}
    # Merged key by key: the sibling fields of synthetic.train keep the default's values.
    assert config["synthetic"]["train"]["lr"] == DEFAULT["synthetic"]["train"]["lr"]


def test_a_bad_override_is_a_config_error_naming_the_source():
    with pytest.raises(ConfigError, match=r"synthetic\.train\.steps = 'x' \(from --config\)"):
        load_config(overrides=parse_overrides([synthetic(train={"steps": "x"})]))


def test_fields_left_to_the_dataclass_defaults_are_planned():
    """A config that leaves TrainConfig / ModelConfig / TaskConfig fields out (their defaults
    apply) plans without a KeyError."""
    config = copy.deepcopy(DEFAULT)
    config["synthetic"]["train"] = {"steps": 40}
    config["synthetic"]["model"] = {}
    del config["synthetic"]["tasks"]["mqar"]["common"]["n_train"]
    prepare_config(config, None, SCHEMA)
    assert any(job.rule == "train_synthetic" for job in plan_jobs(config))


# Every field, a value of each wrong kind: refused with a ValueError naming the field, never a
# TypeError or KeyError from deeper down.
FIELDS = [
    "synthetic.train.steps",
    "synthetic.train.lr",
    "synthetic.train.micro_batch_size",
    "synthetic.model.d_model",
    "synthetic.model.n_layers",
    "synthetic.model.head_norm",
    "synthetic.tasks.mqar.common.seq_len",
    "synthetic.tasks.mqar.difficulties.kv4.num_kv_pairs",
    "synthetic.e1.state_sizes",
    "synthetic.e4.lambdas",
    "synthetic.ess.n_sequences",
    "e6.n_tokens",
    "e6.drop.before",
    "models.smollm2.n_heads",
    "cluster.max_jobs",
]
WRONG = ["abc", -1, 0, [1], {"a": 1}, True, None]


@pytest.mark.parametrize("key", FIELDS)
def test_no_internal_error_for_a_value_of_the_wrong_kind(key):
    for value in WRONG:
        config = copy.deepcopy(DEFAULT)
        setter(key, value)(config)
        try:
            prepare_config(config, None, SCHEMA)
        except ValueError as error:
            assert key.rsplit(".", 1)[-1] in str(error), str(error)


@pytest.mark.parametrize(
    ("entries", "code", "words"),
    [
        ([synthetic(train={"steps": 100})], 0, ["This was a dry-run"]),
        ([synthetic(train={"lr": -1})], 1, ["synthetic.train.lr = -1", "a number > 0"]),
        ([synthetic(model={"d_model": 0})], 1, ["synthetic.model.d_model = 0", ">= 1"]),
    ],
    ids=["steps_100", "lr_negative", "d_model_zero"],
)
def test_override_in_a_real_dry_run(entries, code, words):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "all", "--config", *entries],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert (run.returncode != 0) == bool(code), output[-3000:]
    for word in words:
        assert word in output, f"{word!r} not in: {output[-3000:]}"
    assert "not supported between instances" not in output
    assert "not all arguments converted" not in output


def test_ess_plan_reads_the_same_overrides(capsys):
    from ess.paper.cli import main

    assert main(["plan", "--config", synthetic(train={"lr": -1})]) == 2
    assert "synthetic.train.lr = -1" in capsys.readouterr().err
    assert main(["plan", "--config", synthetic(train={"steps": 100})]) == 0
