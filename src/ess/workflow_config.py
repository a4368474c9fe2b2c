"""Checks of the workflow's config that its schema cannot express, run before any job.

`workflow/schemas/config.schema.yaml` checks each key alone (type, range, unknown keys) and
fills in defaults; `check_config` then checks what depends on several keys or on the library:
names that must exist, sizes that must fit each other (a task's key-value pairs in its
vocabulary and length, E6's drop windows in `e6.n_tokens`, layer indices in `n_layers`), and
every dataclass a job will build. A value that passes here does not fail later inside a job for
the same reason. Each check raises a ValueError that names the config key, its value and what is
allowed. Where the library already states a precondition (`ess.tasks`, `ess.text`,
`ess.models.ModelConfig`, `ess.train.TrainConfig`) the check runs that code on the config rather
than restating the rule.

The Snakefile calls `check_config` on the schema-validated config (workflow/rules/common.smk).
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

MODEL_SOURCE_FORMS = (
    "hf:<repo_id>@<revision>  (pin a 40-hex commit or a tag)",
    "pypi:<package>==<version>/<file inside the wheel>",
    "pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...",
    "local:<path>",
    "train:jargon  (a small ess.models.LanguageModel trained here; settings in "
    "models.<name>.train)",
)


def check_model_sources(config: dict, schema: str | Path) -> None:
    """Raise a ValueError naming the config key of the first malformed model source; the
    pattern is the config schema's (`schema`: its path), the one definition."""
    import yaml

    definitions = yaml.safe_load(Path(schema).read_text())["$defs"]
    pattern = definitions["model"]["properties"]["source"]["pattern"]
    for name, model in (config.get("models") or {}).items():
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and not re.fullmatch(pattern, source):
            forms = "\n  ".join(MODEL_SOURCE_FORMS)
            raise ValueError(
                f"config key models.{name}.source = {source!r} is not a model source. "
                f"Allowed forms:\n  {forms}"
            )


REPOSITORY = Path(__file__).resolve().parents[2]


def load_config(configfiles: list[str | Path] = (), root: str | Path = REPOSITORY) -> dict:
    """The config a run of the workflow in `root` sees with these `--configfile`s: the
    Snakefile's config/config.yaml, each file merged over it as Snakemake merges them (nested
    keys updated), validated against the schema with its defaults filled in, then checked
    (`check_config`). For tools that plan or inspect a run without starting Snakemake."""
    import yaml
    from snakemake.utils import update_config, validate

    root = Path(root)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text()) or {}
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    schema = root / "workflow" / "schemas" / "config.schema.yaml"
    check_model_sources(config, schema)
    validate(config, str(schema))
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Raise a ValueError naming the first config key whose value a job would fail on."""
    check_models(config)
    check_e6(config)
    check_synthetic(config)


# ---------------------------------------------------------------------------------------------
# Models and E6


def check_pinned(name: str, model: dict, allow_unpinned: bool) -> None:
    """An hf: source must name a 40-hex commit unless unpinned revisions are allowed
    (models.<name>.allow_unpinned, else the top-level allow_unpinned)."""
    from ess.fetch import is_pinned, parse_model_source

    if not model["source"].startswith("hf:"):
        return
    allowed = model["allow_unpinned"] if model["allow_unpinned"] is not None else allow_unpinned
    revision = parse_model_source(model["source"]).revision
    if not allowed and not is_pinned(revision):
        raise ValueError(
            f"config key models.{name}.source = {model['source']!r} names the revision "
            f"{revision!r}, a branch or tag that can move: a rerun could measure other weights. "
            f"Allowed: a 40-hex commit (`ess pin --configfile <this config>` resolves every "
            f"branch to its commit, with Hub access), or set models.{name}.allow_unpinned: true "
            f"(or the top-level allow_unpinned: true) to accept it"
        )


def check_models(config: dict) -> None:
    """Pinned Hub revisions, layer indices, channel strides and the settings of the models
    trained here."""
    for name, model in config["models"].items():
        check_pinned(name, model, config["allow_unpinned"])
        too_deep = [layer for layer in model["layers"] or [] if layer >= model["n_layers"]]
        if too_deep:
            raise ValueError(
                f"config key models.{name}.layers lists {too_deep}, but models.{name}.n_layers "
                f"is {model['n_layers']}: allowed layer indices are 0 .. {model['n_layers'] - 1}"
            )
        if model["channel_stride"] > model["n_heads"]:
            raise ValueError(
                f"config key models.{name}.channel_stride = {model['channel_stride']} exceeds "
                f"models.{name}.n_heads = {model['n_heads']}: allowed 1 .. {model['n_heads']} "
                "(every k-th head or channel is analysed)"
            )
        train = model.get("train")
        if train is not None and model["source"] != "train:jargon":
            raise ValueError(
                f"config key models.{name}.train is set, but models.{name}.source is "
                f"{model['source']!r}: `train` only applies to source train:jargon"
            )
        if train is not None:
            check_language_model(name, model, config["e6"]["passages"])


def check_language_model(name: str, model: dict, passages: dict) -> None:
    """models.<name>.train: the ModelConfig and TrainConfig that rule train_language_model
    builds (workflow/scripts/train_language_model.py), and the heads E6 will find."""
    from ess.text import language_model_configs

    train = model["train"]
    try:
        language_model_configs(train, model["n_layers"], train["vocab_size"])
    except ValueError as error:
        raise ValueError(
            f"config key models.{name}.train = {train} (with models.{name}.n_layers = "
            f"{model['n_layers']}): {error}"
        ) from None
    s6 = train["layers"].strip().upper() == "S6"
    heads = train["d_model"] if s6 else train["n_heads"]
    if model["n_heads"] != heads:
        what = "train.d_model (S6: one operator per channel)" if s6 else "train.n_heads"
        raise ValueError(
            f"config key models.{name}.n_heads is {model['n_heads']}, but the trained model "
            f"has {heads} operators per layer ({what}): it must be {heads}"
        )


def check_e6(config: dict) -> None:
    """Names of models and tasks, the passages, and the drop windows against n_tokens."""
    e6 = config["e6"]
    for name in e6["models"] or []:
        if name not in config["models"]:
            raise ValueError(
                f"config key e6.models names {name!r}, which is not a key of models "
                f"(allowed: {', '.join(config['models'])})"
            )
    tasks = e6["delimiters"] + e6["controls"]
    if e6["recall"]["task"] not in tasks:
        raise ValueError(
            f"config key e6.recall.task is {e6['recall']['task']!r}; it must be one of "
            f"e6.delimiters or e6.controls ({', '.join(tasks)})"
        )
    traced = e6["models"] or list(config["models"])
    for name in e6["hierarchy"]:
        if name not in traced:
            raise ValueError(
                f"config key e6.hierarchy names {name!r}, which e6.models does not trace "
                f"(allowed: {', '.join(traced)})"
            )
    check_passages(e6["passages"])
    check_drop_windows(e6)
    n_tokens, min_distance = e6["n_tokens"], e6["recall"]["min_distance"]
    if e6["recall"]["enabled"] and min_distance >= n_tokens:
        raise ValueError(
            f"config key e6.recall.min_distance = {min_distance} leaves no repeated bigram in "
            f"e6.n_tokens = {n_tokens} tokens: allowed 1 .. {n_tokens - 1}"
        )


def check_passages(passages: dict) -> None:
    """e6.passages: ess.text.load_passages on both splits (its checks: min <= max, some left)."""
    from ess.text import load_passages

    for split in ("train", "eval"):
        try:
            load_passages(passages["min_chars"], passages["max_chars"], split=split)
        except ValueError as error:
            raise ValueError(
                f"config key e6.passages = {passages} ({split} entries of the corpus): {error}"
            ) from None


def check_drop_windows(e6: dict) -> None:
    """The windows of ess.boundaries.delimiter_drop must fit the sequence: one boundary's before
    window, its gap (at least one token) and its after window lie in splits 1 .. L-1, so
    n_tokens >= before + after + 2."""
    drop, n_tokens = e6["drop"], e6["n_tokens"]
    before, after = drop["before"], drop["after"]
    need = before + after + 2
    if n_tokens < need:
        raise ValueError(
            f"config key e6.n_tokens = {n_tokens} cannot hold one boundary with "
            f"e6.drop.before = {before} and e6.drop.after = {after}: allowed n_tokens >= "
            f"before + after + 2 = {need}, or smaller windows"
        )


# ---------------------------------------------------------------------------------------------
# Synthetic tasks


def check_synthetic(config: dict) -> None:
    """Every task difficulty, the shared model and train fields against the tasks, E4's
    layer sets and the number of test sequences measured."""
    from ess.models import ModelConfig

    synthetic = config["synthetic"]
    tasks = {
        (task, difficulty): task_config(synthetic, task, difficulty)
        for task, entry in synthetic["tasks"].items()
        for difficulty in entry["difficulties"]
    }
    model = synthetic["model"]
    vocab_size = model.get("vocab_size")
    n_sequences = synthetic["ess"]["n_sequences"]
    for (task, difficulty), task_cfg in tasks.items():
        where = f"synthetic.tasks.{task}.difficulties.{difficulty}"
        if vocab_size is not None and vocab_size < task_cfg.vocab_size:
            raise ValueError(
                f"config key synthetic.model.vocab_size = {vocab_size} is smaller than the "
                f"vocab_size = {task_cfg.vocab_size} of {where}: the model could not embed the "
                f"task's tokens; allowed >= {task_cfg.vocab_size} (or leave it out: each run "
                "then takes its task's vocab_size)"
            )
        if n_sequences > task_cfg.n_test:
            raise ValueError(
                f"config key synthetic.ess.n_sequences = {n_sequences} exceeds n_test = "
                f"{task_cfg.n_test} of {where}: allowed 1 .. {task_cfg.n_test}"
            )
    for task, entry in synthetic["tasks"].items():
        check_difficulty_train(entry, f"synthetic.tasks.{task}.train")
    n_layers = model.get("n_layers", ModelConfig.n_layers)
    for layers in synthetic.get("e4", {}).get("layer_sets", []):
        too_deep = [layer for layer in layers if layer >= n_layers]
        if too_deep:
            raise ValueError(
                f"config key synthetic.e4.layer_sets lists layers {too_deep} (in {layers}), but "
                f"the models have synthetic.model.n_layers = {n_layers}: allowed layer indices "
                f"0 .. {n_layers - 1}"
            )


def check_difficulty_train(entry: dict, where: str) -> None:
    """A task's per-difficulty train fields name its difficulties and TrainConfig fields."""
    from ess.train import TrainConfig

    allowed = sorted(f.name for f in fields(TrainConfig))
    for difficulty, values in entry.get("train", {}).items():
        if difficulty not in entry["difficulties"]:
            raise ValueError(
                f"config key {where}.{difficulty} names no difficulty of the task; allowed: "
                f"{', '.join(entry['difficulties'])}"
            )
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(
                f"config key {where}.{difficulty} sets unknown TrainConfig field(s) {unknown}; "
                f"allowed: {', '.join(allowed)}"
            )


def task_config(synthetic: dict, task: str, difficulty: str):
    """The TaskConfig of synthetic.tasks.<task> at <difficulty>, after running the task's own
    generator (ess.tasks.make_split) on one example of each split: the job that caches the
    splits then cannot fail on the sizes (key-value pairs vs vocabulary and length, ...)."""
    from ess.experiments import task_fields
    from ess.tasks import TaskConfig, make_split

    entry = synthetic["tasks"][task]
    where = f"synthetic.tasks.{task}.difficulties.{difficulty}"
    values = task_fields(synthetic, task, difficulty, where)
    allowed = sorted(f.name for f in fields(TaskConfig) if f.name != "name")
    unknown = sorted(set(values) - set(allowed) - {"name"})
    if unknown:
        raise ValueError(
            f"config key {where} (with synthetic.tasks.{task}.common) sets unknown TaskConfig "
            f"field(s) {unknown}; allowed: {', '.join(allowed)}"
        )
    try:
        config = TaskConfig(**values)
        one = replace(config, n_train=min(config.n_train, 1), n_test=min(config.n_test, 1))
        for split in ("train", "test"):
            make_split(one, split)
    except ValueError as error:
        raise ValueError(
            f"config key {where} = {entry['difficulties'][difficulty]} (with "
            f"synthetic.tasks.{task}.common = {entry.get('common', {})}): {error}"
        ) from None
    return config
