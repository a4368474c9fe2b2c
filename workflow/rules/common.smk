# Config validation and helpers shared by the rule files (which models, layers, tasks and
# seeds exist, and the output path of each kind of result). Nothing here computes science.

import functools
import os
import re

import yaml

from ess.paper.plan import (
    JOB_NAMES,
    check_plan,
    job_resources,
    plan_jobs,
    threads_of,
    train_retries,
)
from ess.paper.config_checks import prepare_config
from ess.paper.results import FORMATS, result_paths

# ---------------------------------------------------------------------------------------------
# Config validation: before any job is scheduled.

# --config values (strings below the top level) read as the schema's types and merged key by
# key, then the schema (its defaults filled in) and what it cannot say: sizes that must fit
# each other, names that must exist. A refusal names the dotted key (ess.paper.config_checks).
prepare_config(
    config,
    workflow.config_settings.config,
    workflow.source_path("../schemas/config.schema.yaml"),
)

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


def trained_models():
    """Models the workflow trains itself (source train:jargon): rule train_language_model."""
    return [
        name for name, m in config["models"].items() if m["source"] == "train:jargon"
    ]


def model_name_pattern(names):
    """A {model} wildcard constraint matching exactly `names` (none: matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def model_layers(model):
    """Layer indices analysed for `model`: models.<model>.layers, or all n_layers."""
    m = model_config(model)
    return m["layers"] if m["layers"] is not None else list(range(m["n_layers"]))


def layer_parts(model):
    """The analysed layers of `model` in groups of models.<model>.layers_per_job, one
    measure_e6_ess job each (null = a single group): [[0, 1, ...], ...]."""
    layers = model_layers(model)
    size = model_config(model)["layers_per_job"] or len(layers)
    return [layers[start : start + size] for start in range(0, len(layers), size)]


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
    """ess.paper.e6.delimiters condition of a task: "delimited" or the control's name."""
    return "delimited" if task in config["e6"]["delimiters"] else task


def e6_seeds():
    return config["e6"]["seeds"]


def e6_add_bos(model):
    """Whether `model`'s E6 sequences start with bos: models.<model>.add_bos, else e6.add_bos."""
    own = model_config(model)["add_bos"]
    return config["e6"]["add_bos"] if own is None else own


def planned(rule, key):
    """A resource of `rule`'s jobs (mem_mb, runtime or gpu), from the cost model for each
    job's shape, growing with the attempt (ess.paper.plan.job_resources)."""

    def resource(wildcards, attempt):
        name = JOB_NAMES[rule].format(**wildcards)
        return job_resources(planned_jobs()[(rule, name)], config, attempt)[key]

    return resource


def planned_spec(spec, run):
    """A synthetic run's spec, with the micro-batch that the plan chose to fit the GPU
    (ess.paper.plan.micro_batch_size) when it is smaller than the batch: the train job then
    accumulates its gradient over micro-batches (ess.paper.training.train.batch_gradient). A run that fits,
    and every CPU run, keeps its spec as the config states it."""
    notes = planned_jobs()[("train_synthetic", run)].notes
    if notes["micro_batch_size"] >= notes["batch_size"]:
        return spec
    return {
        **spec,
        "train": {**spec["train"], "micro_batch_size": notes["micro_batch_size"]},
    }


@functools.cache
def planned_jobs():
    """Every job of the plan by (rule, name): built once per process, when first asked."""
    return {(job.rule, job.name): job for job in plan_jobs(config)}


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


def ess_path(model, task, seed, part):
    """ESS table of the layers layer_parts(model)[part]."""
    return f"results/ess/{model}/{task}/seed{seed}/part{part}.parquet"


def seed_paths(path_of, *args):
    """`path_of(*args, seed)` for every E6 seed (args keep their wildcards)."""
    return [path_of(*args, seed) for seed in e6_seeds()]


def ess_path_of_part(model, task, part, seed):
    return ess_path(model, task, seed, part)


def e6_ess_tables():
    """Every ESS table of E6: models x tasks x seeds x layer parts."""
    return [
        ess_path(model, task, seed, part)
        for model in e6_models()
        for task in e6_tasks()
        for seed in e6_seeds()
        for part in range(len(layer_parts(model)))
    ]


def model_sequences(model):
    """Every sequence file of one model: each delimiter, then each seed (make_sequence's order)."""
    return [
        sequence_path(model, delimiter, seed)
        for delimiter in config["e6"]["delimiters"]
        for seed in e6_seeds()
    ]


def e6_sequences():
    return [path for model in e6_models() for path in model_sequences(model)]


def recall_path(model):
    """Bigram recall of `model` over e6.recall.orders sequences scored together."""
    return f"results/recall/{model}.json"


def e6_recall_tables():
    if not config["e6"]["recall"]["enabled"]:
        return []
    return [recall_path(model) for model in e6_models()]


def published_targets(names):
    """Every file of every published figure and table, {(group, kind): names}, each with its
    manifest."""
    paths = [
        path
        for (_, kind), group_names in names.items()
        for name in group_names
        for path in result_paths(kind, name)
    ]
    return [target for path in paths for target in (path, manifest(path))]


def notebook_outputs(kind, group, category):
    """A notebook rule's outputs: the files of the figure or table {name}, keyed by format (the
    first shown in the HTML report with its group's caption), and their manifests."""
    first, *rest = paths = result_paths(kind, "{name}")
    formats = FORMATS[kind]
    caption = f"../report/{group}_{kind}.rst"
    return {
        formats[0]: report(first, caption=caption, category=category),
        **dict(zip(formats[1:], rest)),
        "manifests": [manifest(path) for path in paths],
    }


# ---------------------------------------------------------------------------------------------
# Notebooks: papermill parameters as one YAML document (papermill -y reads YAML 1.1, where
# JSON's 1e-05 would be a string; safe_dump writes 1.0e-05, a float)


def notebook_path(name):
    """notebooks/<name>.ipynb of this repository, relative to the working directory."""
    return os.path.relpath(os.path.join(workflow.basedir, "notebooks", f"{name}.ipynb"))


def notebook_parameters(inputs, outputs, **values):
    """params function: {name: path} of the named inputs and outputs, plus `values`, as YAML.

    The notebook receives each input and output path under its rule name, so its manifests
    can list the inputs (a list-valued input, e.g. `sequences`, stays a list).
    """

    def parameters(wildcards, input, output):
        document = dict(values)
        for name in inputs:
            document[name] = list(input[name]) if is_list(input[name]) else input[name]
        for name in outputs:
            document[name] = output[name]
        return yaml.safe_dump(document)

    return parameters


def is_list(value):
    return isinstance(value, list) and not isinstance(value, str)


def e6_settings():
    """The E6 options a figure caption states (the config behind the numbers)."""
    e6 = config["e6"]
    return {
        "models": e6_models(),
        "n_tokens": e6["n_tokens"],
        "position_stride": config["e6"]["position_stride"],
        "seeds": e6["seeds"],
        "tolerance": config["ess"]["tolerance"],
        "relative": config["ess"]["relative"],
        "before": e6["drop"]["before"],
        "after": e6["drop"]["after"],
        "offsets": e6["profile"]["offsets"],
        "recall_orders": e6["recall"]["orders"],
        "n_boot": config["stats"]["n_boot"],
        "confidence": config["stats"]["confidence"],
        "dtype": {model: model_config(model)["dtype"] for model in e6_models()},
        "add_bos": {model: e6_add_bos(model) for model in e6_models()},
    }
