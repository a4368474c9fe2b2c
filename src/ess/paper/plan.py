"""The plan of a config: every job the workflow's `all` target runs, with its estimated cost
(ess.paper.cost) and the resources it asks the cluster for (docs/cost-model.md).

`plan_jobs(config)` lists the jobs from the same config the Snakefile reads, the schema's
defaults filled in: one `Job` per rule and wildcards, in the workflow's grouping (a measure job
covers every seed of a model, task and layer part; a synthetic ESS job every seed of a cell).
`tests/test_plan.py` checks that the counts per rule equal Snakemake's own dry run.
`job_resources` turns a job's cost into the resources a rule requests (memory and runtime grow
with the attempt); `over_limits` names every job the config's `cluster` limits cannot take.

This module imports no torch at import time: the Snakefile plans before any job runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ess.paper import cost
from ess.paper.cost import Cost

GB = 1024  # MB
# What the cluster section means when the config leaves a key out (the schema fills these in).
CLUSTER_DEFAULTS = {
    "gpu_mem_gb": 80,
    "node_mem_gb": 256,
    "max_runtime_h": 24,
    "max_jobs": 10_000,
    "memory_margin": 1.5,
    "runtime_margin": 2.0,
}
# A notebook, a split or a fetch: small jobs whose cost does not depend on a model's shape.
NOTEBOOK = Cost(host_mb=1500, gpu_mb=0, cpu_seconds=60, gpu_seconds=0, disk_mb=1)
# results/summary.md: reads every manifest of the run (thousands at paper scale)
SUMMARY = Cost(host_mb=1000, gpu_mb=0, cpu_seconds=60, gpu_seconds=0, disk_mb=0.1)
# Bytes per parameter of a dtype name.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Download and disk rate assumed for fetch_model (a Hub download on a cluster's login node).
FETCH_MB_PER_SECOND = 100.0
# Tokens per character of English prose in a BPE tokenizer: E6's passage lengths in tokens.
TOKENS_PER_CHAR = 0.25


# A job's name from its rule's wildcards (workflow/rules/common.smk `planned` formats these).
JOB_NAMES = {
    "fetch_model": "{model}",
    "convert_model": "{model}",
    "train_language_model": "{model}",
    "make_sequence": "{model}",
    "capture_operators": "{model}/{task}",
    "measure_e6_ess": "{model}/{task}/part{part}",
    "bigram_recall": "{model}",
    "aggregate_e6": "",
    "e6_figure": "{name}",
    "e6_table": "{name}",
    "make_task_split": "{task}/{difficulty}/{split}",
    "train_synthetic": "{run}",
    "measure_synthetic_ess": "{cell}",
    "aggregate_synthetic": "",
    "synthetic_figure": "{name}",
    "synthetic_table": "{name}",
    "summary": "",
}


@dataclass(frozen=True)
class Job:
    """One job of the plan: its rule, a name that identifies it (the rule's wildcards, as
    Snakemake would show them), its estimated cost, and the details the table reports."""

    rule: str
    name: str
    cost: Cost
    threads: int = 1
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# What exists (the same answers as workflow/rules/common.smk, which calls these)


def e6_models(config: dict) -> list[str]:
    return list(config["e6"]["models"] or config["models"])


def e6_tasks(config: dict) -> list[str]:
    return list(config["e6"]["delimiters"]) + list(config["e6"]["controls"])


def model_layers(model: dict) -> list[int]:
    """Layer indices analysed: models.<m>.layers, or all n_layers."""
    return (
        list(model["layers"]) if model.get("layers") is not None else list(range(model["n_layers"]))
    )


def layer_parts(model: dict) -> list[list[int]]:
    """The analysed layers in groups of models.<m>.layers_per_job (null: one group)."""
    layers = model_layers(model)
    size = model.get("layers_per_job") or len(layers)
    return [layers[start : start + size] for start in range(0, len(layers), size)]


def threads_of(config: dict, rule: str) -> int:
    """resources.<rule>.threads, else resources.default.threads, else 1."""
    table = config.get("resources") or {}
    for scope in (rule, "default"):
        if "threads" in (table.get(scope) or {}):
            return int(table[scope]["threads"])
    return 1


def cluster_limits(config: dict) -> dict:
    return {**CLUSTER_DEFAULTS, **(config.get("cluster") or {})}


# ---------------------------------------------------------------------------------------------
# E6: the shapes of a model's operators


@dataclass(frozen=True)
class E6Shape:
    """What E6 measures in one model. kind: "attention" (one L x L operator per head) or "ssm"
    (one recurrence of state d_state per channel); heads: heads or channels per layer that are
    measured (after channel_stride); params: parameters; bytes_per_param: of its dtype."""

    kind: str
    layers: int
    heads: int
    head_dim: int
    kv_heads: int
    d_state: int
    params: float
    bytes_per_param: int


def e6_shape(name: str, model: dict) -> E6Shape:
    """The shape of `model` (a models.<name> entry): its own keys for a Hub or file model; its
    train settings for a model trained here."""
    stride = model.get("channel_stride") or 1
    if model["source"] == "train:jargon":
        train = model["train"]
        mixer = train["layers"]
        d_model, state = train.get("d_model", 128), train.get("state_size", 16)
        params = cost.model_parameters(mixer, 4096, d_model, model["n_layers"], state)
        ssm = mixer.upper() == "S6"
        return E6Shape(
            kind="ssm" if ssm else "attention" if mixer.upper() in ("SA", "SWA") else "ssm",
            layers=len(model_layers(model)),
            heads=math.ceil((d_model if ssm else model["n_heads"]) / stride),
            head_dim=d_model // model["n_heads"],
            kv_heads=model["n_heads"],
            d_state=state,
            params=params,
            bytes_per_param=4,
        )
    if model.get("params_b") is None:
        raise ValueError(
            f"config key models.{name}.params_b is not set: the plan needs the size of every "
            f"fetched model (billions of parameters, e.g. 7.3 for a 7B model)"
        )
    ssm = model.get("d_state") is not None
    return E6Shape(
        kind="ssm" if ssm else "attention",
        layers=len(model_layers(model)),
        heads=math.ceil(model["n_heads"] / stride),
        head_dim=model.get("head_dim") or 128,
        kv_heads=model.get("n_kv_heads") or model["n_heads"],
        d_state=model.get("d_state") or 0,
        params=model["params_b"] * 1e9,
        bytes_per_param=DTYPE_BYTES[model.get("dtype", "float32")],
    )


def e6_splits(config: dict) -> int:
    """Split positions one E6 sequence is evaluated at (ess.paper.e6.boundaries.trace_positions):
    the coarse trace every e6.position_stride-th split plus e6.profile.offsets around each
    boundary, whose number is the sequence length over the mean passage length in tokens."""
    e6 = config["e6"]
    length = e6["n_tokens"]
    passage = (e6["passages"]["min_chars"] + e6["passages"]["max_chars"]) / 2 * TOKENS_PER_CHAR
    boundaries = length / max(passage, 1.0)
    stride = config["e6"]["position_stride"]
    return int(min(length - 1, math.ceil((length - 1) / stride) + boundaries * len(
        e6["profile"]["offsets"]
    )))  # fmt: skip


def operator_mb(name: str, model: dict, shape: E6Shape, length: int) -> float:
    """One captured operator file (ess.paper.e6.sequence_ess.operator_bytes): every layer of the
    model, every attention head, the SSM channels that channel_stride keeps."""
    from ess.paper.e6.sequence_ess import operator_bytes

    if shape.kind == "attention":
        heads, state, kv = model["n_heads"], shape.head_dim, shape.kv_heads
        return operator_bytes("attention", model["n_layers"], length, heads, state, kv) / cost.MB
    channels = model["n_heads"] if model["source"] != "train:jargon" else shape.heads
    stride = model.get("channel_stride") or 1 if model["source"] != "train:jargon" else 1
    return (
        operator_bytes("mamba", model["n_layers"], length, channels, shape.d_state, None, stride)
        / cost.MB
    )


def forward_cost(shape: E6Shape, length: int, sequences: int, device: str) -> Cost:
    """Running the model over `sequences` sequences of `length` tokens: 2 flops per parameter
    and token at the core's float32 rate, weights held in their dtype, eager attention's
    (H, L, L) weights of one layer at a time."""
    flops = 2 * shape.params * length * sequences
    cpu = flops / (cost.cpu_core_gflops() * 1e9)
    weights = shape.params * shape.bytes_per_param / cost.MB
    attention = 4 * shape.heads * length * length / cost.MB if shape.kind == "attention" else 0
    on_gpu = device == "cuda"
    return Cost(
        host_mb=cost.TRANSFORMERS_PROCESS_MB
        + weights * (1 if on_gpu else 2)
        + (0 if on_gpu else attention),
        gpu_mb=cost.CUDA_CONTEXT_MB + weights + attention if on_gpu else 0.0,
        cpu_seconds=cpu,
        gpu_seconds=cost.gpu_seconds(cpu, False, cost.GPU_EFFICIENCY_TRAIN) if on_gpu else 0.0,
        disk_mb=0.0,
        device=device,
    )


def operator_ess_cost(shape: E6Shape, length: int, splits: int, device: str) -> Cost:
    """ESS of one layer's measured heads or channels on one sequence."""
    if shape.kind == "attention":
        return cost.dense_cost(length, shape.heads, splits, device)
    return cost.realisation_cost(length, shape.d_state, shape.heads, device)


def e6_jobs(config: dict) -> list[Job]:
    """fetch/convert (or train) -> sequences -> capture -> measure -> recall -> aggregate ->
    notebooks, per model of e6.models."""
    e6 = config["e6"]
    length, seeds, tasks = e6["n_tokens"], len(e6["seeds"]), e6_tasks(config)
    splits = e6_splits(config)
    jobs: list[Job] = []
    for name in e6_models(config):
        model = config["models"][name]
        shape = e6_shape(name, model)
        device = model.get("device", "cpu")
        weights_mb = shape.params * shape.bytes_per_param / cost.MB
        if model["source"] == "train:jargon":
            jobs.append(_job(config, "train_language_model", name, Cost(
                host_mb=cost.PROCESS_MB + 2 * GB, gpu_mb=0, cpu_seconds=60 + 0.6 * model[
                    "train"].get("steps", 100), gpu_seconds=0, disk_mb=weights_mb)))  # fmt: skip
        else:
            fetched_mb = shape.params * shape.bytes_per_param / cost.MB
            jobs.append(_job(config, "fetch_model", name, Cost(
                host_mb=cost.PROCESS_MB + 512, gpu_mb=0,
                cpu_seconds=fetched_mb / FETCH_MB_PER_SECOND, gpu_seconds=0,
                disk_mb=fetched_mb)))  # fmt: skip
            jobs.append(_job(config, "convert_model", name, Cost(
                host_mb=cost.PROCESS_MB + 2 * shape.params * 4 / cost.MB, gpu_mb=0,
                cpu_seconds=shape.params / 2e7, gpu_seconds=0, disk_mb=weights_mb)))  # fmt: skip
        jobs.append(_job(config, "make_sequence", name, Cost(
            host_mb=cost.PROCESS_MB + 300, gpu_mb=0, cpu_seconds=10, gpu_seconds=0,
            disk_mb=0.1 * seeds * len(e6["delimiters"]))))  # fmt: skip
        file_mb = operator_mb(name, model, shape, length)
        for task in tasks:
            capture = forward_cost(shape, length, seeds, device)
            jobs.append(_job(config, "capture_operators", f"{name}/{task}", Cost(
                host_mb=capture.host_mb + file_mb, gpu_mb=capture.gpu_mb,
                cpu_seconds=capture.cpu_seconds, gpu_seconds=capture.gpu_seconds,
                disk_mb=file_mb * seeds, device=device)))  # fmt: skip
            for part, layers in enumerate(layer_parts(model)):
                per_layer = operator_ess_cost(shape, length, splits, device)
                part_mb = file_mb * len(layers) / model["n_layers"]
                rows = seeds * len(layers) * shape.heads * splits
                jobs.append(_job(config, "measure_e6_ess", f"{name}/{task}/part{part}", Cost(
                    host_mb=per_layer.host_mb + part_mb, gpu_mb=per_layer.gpu_mb,
                    cpu_seconds=per_layer.cpu_seconds * seeds * len(layers),
                    gpu_seconds=per_layer.gpu_seconds * seeds * len(layers),
                    disk_mb=rows * 100 / cost.MB, device=device),
                    rows=rows))  # fmt: skip
        if e6["recall"]["enabled"]:
            jobs.append(_job(config, "bigram_recall", name, forward_cost(
                shape, length, e6["recall"]["orders"], device)))  # fmt: skip
    if not jobs:
        return jobs
    rows = sum(j.notes.get("rows", 0) for j in jobs)
    jobs.append(_job(config, "aggregate_e6", "", Cost(
        host_mb=cost.PROCESS_MB + 2 * GB, gpu_mb=0, cpu_seconds=60 + rows / 2e6,
        gpu_seconds=0, disk_mb=50)))  # fmt: skip
    from ess.paper.results import E6_FIGURES, E6_TABLES

    jobs += [_job(config, "e6_figure", name, NOTEBOOK) for name in E6_FIGURES]
    jobs += [_job(config, "e6_table", name, NOTEBOOK) for name in E6_TABLES]
    return jobs


# ---------------------------------------------------------------------------------------------
# Synthetic experiments


def mixers_of(pattern: str) -> list[str]:
    return [kind.strip().upper() for kind in pattern.split(",")]


def train_cost(spec: dict, micro_batch: int) -> Cost:
    """One train_synthetic job: the model, its optimiser and its task's splits (on the device,
    as ess.paper.training.train.train holds them), `micro_batch` sequences' activations at a time;
    every step processes batch_size sequences; evaluation forwards (a third of a step per sequence)
    on eval_sequences every eval_every steps and once on the whole test split."""
    model, task, train = spec["model"], spec["task"], spec["train"]
    L, N, d = task["seq_len"], model.get("state_size", 16), model.get("d_model", 64)
    mixers = mixers_of(model.get("layers", "GLA"))
    state_mb = cost.model_state_mb(
        model.get("layers", "GLA"), model["vocab_size"], d, model["n_layers"], N
    )
    data_mb = cost.split_bytes(task["n_train"] + task["n_test"], L) / cost.MB
    activations_mb, seconds_per_step = cost.train_step_cost(mixers, L, N, d, micro_batch)
    seconds_per_step *= train["batch_size"] / micro_batch
    evals = train.get("eval_every") and train["steps"] // train["eval_every"] or 0
    # a forward is about a third of a step; per sequence, without the step's fixed part
    per_sequence = (
        cost.train_step_cost(mixers, L, N, d, 2)[1] - cost.train_step_cost(mixers, L, N, d, 1)[1]
    )
    eval_seconds = per_sequence / 3 * (evals * train.get("eval_sequences", 256) + task["n_test"])
    cpu = train["steps"] * seconds_per_step + eval_seconds
    device = train.get("device", "cpu")
    on_gpu = device == "cuda"
    held = state_mb + data_mb + activations_mb
    return Cost(
        host_mb=cost.PROCESS_MB + data_mb + (0 if on_gpu else state_mb + activations_mb),
        gpu_mb=cost.CUDA_CONTEXT_MB + held if on_gpu else 0.0,
        cpu_seconds=cpu,
        gpu_seconds=cost.gpu_seconds(cpu, False, cost.GPU_EFFICIENCY_TRAIN) if on_gpu else 0.0,
        disk_mb=state_mb / 4 + 0.05 * train["steps"] / 1000,
        device=device,
    )


def resumable(spec: dict) -> bool:
    """Whether a run keeps its training state (ess.paper.training.train: resume_every_steps or
    _minutes), so that a job killed at the time limit continues on its next attempt instead of
    restarting."""
    train = spec["train"]
    return bool(train.get("resume_every_steps") or train.get("resume_every_minutes"))


def attempts_needed(job: Job, config: dict) -> int:
    """Attempts of at most cluster.max_runtime_h that a job's estimate spans (1 if it fits)."""
    hours = job.cost.seconds(job.threads) / 3600
    return max(1, math.ceil(hours / cluster_limits(config)["max_runtime_h"]))


def train_retries(jobs: Iterable[Job], config: dict, spare: int = 2) -> int | None:
    """Retries of train_synthetic: enough attempts for its longest resumable run to finish
    across time limits, plus `spare` for failures (each attempt asks for more memory); None when
    every run fits one attempt, so the rule takes the profile's `retries` as every rule does
    (Snakemake reads a rule's `retries: 0` as no retries, not as unset)."""
    runs = [j for j in jobs if j.rule == "train_synthetic" and j.notes["resumable"]]
    most = max((attempts_needed(j, config) for j in runs), default=1)
    return most - 1 + spare if most > 1 else None


def micro_batch_size(spec: dict, gpu_mem_mb: float) -> int:
    """The micro-batch of a run: train.micro_batch_size when the config sets it; else the
    whole batch when it fits `gpu_mem_mb` (CPU runs: always), else the largest power-of-two
    divisor of batch_size that fits (1 at the least; the plan then flags the run)."""
    train = spec["train"]
    batch = train["batch_size"]
    if train.get("micro_batch_size"):
        return int(train["micro_batch_size"])
    if train.get("device", "cpu") != "cuda":
        return batch
    size = batch
    while size > 1 and (train_cost(spec, size).gpu_mb > gpu_mem_mb or batch % size):
        size //= 2
    return size


def synthetic_ess_cost(specs: list[dict], n_sequences: int, device: str) -> Cost:
    """One measure_synthetic_ess job: the model_ess of each run (seed) of a cell on
    n_sequences test sequences, every split, each layer on its cheaper exact path. Time counts
    every sequence; memory the group of sequences ess.paper.synthetic.model_ess holds at once (their
    operators within OPERATOR_GROUP_BYTES)."""
    from ess.paper.synthetic.model_ess import OPERATOR_GROUP_BYTES, operator_bytes_per_sequence
    from ess.paper.training.model_config import ModelConfig

    total = None
    for spec in specs:
        model, L = spec["model"], spec["task"]["seq_len"]
        per_sequence = operator_bytes_per_sequence(ModelConfig(**model), L)
        at_once = min(n_sequences, max(1, OPERATOR_GROUP_BYTES // per_sequence))
        N, d = model.get("state_size", 16), model.get("d_model", 64)
        heads = model.get("n_heads", 1)  # ModelConfig's default when the config leaves it out
        kinds = mixers_of(model.get("layers", "GLA"))
        layers = [kinds[i % len(kinds)] for i in range(model["n_layers"])]
        for kind in layers:
            operators = d if kind == "S6" else heads
            one = layer_ess_cost(kind, L, N, operators, n_sequences, at_once, device)
            total = one if total is None else total + one
    return total + Cost(0, 0, 0, 0, disk_mb=0.01 * len(specs))


def layer_ess_cost(
    kind: str, L: int, N: int, operators: int, sequences: int, at_once: int, device: str
) -> Cost:
    """One layer's ESS on `sequences` sequences, `at_once` of them held together, by the path
    ess.measure.layer_ess takes (attention: dense; a recurrence: ess.measure.cheaper_path)."""
    from ess.measure import cheaper_path, materialise_seconds

    dense = kind in ("SA", "SWA") or cheaper_path(L, N, L - 1, operators) == "dense"
    if dense:
        work = cost.dense_cost(L, operators * sequences, L - 1, device)
        held = cost.dense_cost(L, operators * at_once, L - 1, device)
    else:
        work = cost.realisation_cost(L, N, operators * sequences, device)
        held = cost.realisation_cost(L, N, operators * at_once, device)
    extra = build_seconds = 0.0
    if dense and kind not in ("SA", "SWA"):
        # the recurrence's factors A, B, C per channel in float64, and its T built row by
        # row (ess.measure._dense_ssm_ess), before the dense path runs
        extra = 8 * operators * at_once * L * (3 * N + L + N) / cost.MB
        # building T costs L^2 N per channel, ess.measure's own estimate (the one
        # cheaper_path routes by): at N 1024 it is most of the time (the rehearsal's S6 job
        # at L 256, N 1024 took 422-528 s against 52 s without it)
        build_seconds = materialise_seconds(L, N, operators * sequences)
    on_gpu = device == "cuda"
    return dataclasses.replace(
        work,
        host_mb=held.host_mb + (0 if on_gpu else extra),
        gpu_mb=held.gpu_mb + (extra if on_gpu else 0),
        cpu_seconds=work.cpu_seconds + build_seconds,
        gpu_seconds=work.gpu_seconds
        + (cost.gpu_seconds(build_seconds, True, cost.GPU_EFFICIENCY_ESS) if on_gpu else 0),
    )


def complete_spec(spec: dict) -> dict:
    """A run's spec with every field of its three dataclasses
    (ess.paper.synthetic.grid.run_configs): a field the config leaves out takes the dataclass
    default, which the cost model then sees (the spec that the train job receives stays as the
    config states it)."""
    from ess.paper.synthetic.grid import run_configs

    model, task, train = run_configs(spec)
    return {
        "model": dataclasses.asdict(model),
        "task": dataclasses.asdict(task),
        "train": dataclasses.asdict(train),
    }


def synthetic_jobs(config: dict, gpu_mem_mb: float) -> list[Job]:
    from ess.paper.synthetic.experiments import published, synthetic_grid
    from ess.paper.synthetic.grid import cells

    synthetic = config["synthetic"]
    runs = synthetic_grid(synthetic)
    if not runs:
        return []
    specs = {key: complete_spec(run.spec) for key, run in runs.items()}
    jobs = []
    splits = {}
    for key, run in runs.items():
        task = specs[key]["task"]
        key = (run.labels.task, run.labels.difficulty)
        splits[key] = task
    for (task, difficulty), fields in splits.items():
        for split, n in (("train", fields["n_train"]), ("test", fields["n_test"])):
            data_mb = cost.split_bytes(n, fields["seq_len"]) / cost.MB
            jobs.append(_job(config, "make_task_split", f"{task}/{difficulty}/{split}", Cost(
                host_mb=cost.PROCESS_MB + 3 * data_mb, gpu_mb=0,
                cpu_seconds=5 + data_mb / 50, gpu_seconds=0, disk_mb=data_mb)))  # fmt: skip
    for key, spec in specs.items():
        micro = micro_batch_size(spec, gpu_mem_mb)
        jobs.append(
            _job(
                config,
                "train_synthetic",
                key,
                train_cost(spec, micro),
                micro_batch_size=micro,
                batch_size=spec["train"]["batch_size"],
                resumable=resumable(spec),
            )
        )
    ess = synthetic.get("ess", {})
    device = ess.get("device", "cpu")
    for cell, keys in cells(runs, synthetic["seeds"]).items():
        jobs.append(
            _job(
                config,
                "measure_synthetic_ess",
                cell,
                synthetic_ess_cost(
                    [specs[key] for key in keys], ess.get("n_sequences", 16), device
                ),
            )
        )
    steps = sum(spec["train"]["steps"] for spec in specs.values())
    jobs.append(_job(config, "aggregate_synthetic", "", Cost(
        host_mb=cost.PROCESS_MB + 1 * GB, gpu_mb=0, cpu_seconds=30 + steps / 1e6,
        gpu_seconds=0, disk_mb=steps * 40 / cost.MB)))  # fmt: skip
    figures, tables = published(runs)
    jobs += [_job(config, "synthetic_figure", name, NOTEBOOK) for name in figures]
    jobs += [_job(config, "synthetic_table", name, NOTEBOOK) for name in tables]
    return jobs


# ---------------------------------------------------------------------------------------------
# The plan


def _job(config: dict, rule: str, name: str, job_cost: Cost, **notes) -> Job:
    return Job(rule, name, job_cost, threads_of(config, rule), notes)


def plan_jobs(config: dict) -> list[Job]:
    """Every job of `all` for this config (schema defaults filled in), in rule order."""
    gpu_mem_mb = cluster_limits(config)["gpu_mem_gb"] * GB
    return (
        e6_jobs(config)
        + synthetic_jobs(config, gpu_mem_mb)
        + [_job(config, "summary", "", SUMMARY)]
    )


def job_resources(job: Job, config: dict, attempt: int = 1) -> dict:
    """What the rule asks for: mem_mb (the estimate x memory_margin x attempt, capped at the
    node), runtime in minutes (x runtime_margin x attempt, at least 10, capped at the limit),
    gpu (1 for a job on cuda)."""
    limits = cluster_limits(config)
    mem = job.cost.host_mb * limits["memory_margin"] * attempt
    minutes = job.cost.seconds(job.threads) / 60 * limits["runtime_margin"] * attempt
    return {
        "mem_mb": int(min(math.ceil(mem), limits["node_mem_gb"] * GB)),
        "runtime": int(min(max(10, math.ceil(minutes)), limits["max_runtime_h"] * 60)),
        "gpu": int(job.cost.device == "cuda"),
    }


def over_limits(jobs: Iterable[Job], config: dict) -> list[tuple[Job, str]]:
    """(job, reason) for every job whose estimate the cluster section cannot take; and the
    whole plan when it has more jobs than cluster.max_jobs."""
    limits = cluster_limits(config)
    jobs = list(jobs)
    problems = []
    for job in jobs:
        c = job.cost
        if c.gpu_mb > limits["gpu_mem_gb"] * GB:
            problems.append((job, f"GPU memory {c.gpu_mb / GB:.1f} GB > cluster.gpu_mem_gb "
                                  f"{limits['gpu_mem_gb']}"))  # fmt: skip
        if c.host_mb > limits["node_mem_gb"] * GB:
            problems.append((job, f"host memory {c.host_mb / GB:.1f} GB > cluster.node_mem_gb "
                                  f"{limits['node_mem_gb']}"))  # fmt: skip
        hours = c.seconds(job.threads) / 3600
        if hours > limits["max_runtime_h"] and not job.notes.get("resumable"):
            where = "GPU" if c.device == "cuda" else f"{job.threads} CPU core(s)"
            problems.append((job, f"time {hours:.1f} h on {where} > cluster.max_runtime_h "
                                  f"{limits['max_runtime_h']}"))  # fmt: skip
    if len(jobs) > limits["max_jobs"]:
        problems.append(
            (
                Job("all", "", Cost(0, 0, 0, 0, 0)),
                f"{len(jobs)} jobs > cluster.max_jobs {limits['max_jobs']}",
            )
        )
    return problems


def check_plan(config: dict) -> None:
    """Raise a ValueError naming every job over the cluster section's limits, and how to
    proceed; the dry run calls it before any job."""
    problems = over_limits(plan_jobs(config), config)
    if not problems:
        return
    lines = [f"  {job.rule} {job.name}: {reason}" for job, reason in problems[:20]]
    if len(problems) > 20:
        lines.append(f"  ... and {len(problems) - 20} more (`ess plan` lists them all)")
    raise ValueError(
        f"{len(problems)} job(s) of this config exceed the limits of its `cluster` section:\n"
        + "\n".join(lines)
        + "\nTo proceed: shrink or remove those cells of the grid (the sizes that set each "
        "estimate are in `ess plan --configfile ...`), or, if your cluster has more, raise the "
        "cluster.* limits (gpu_mem_gb, node_mem_gb, max_runtime_h, max_jobs)."
    )


def peak_disk_mb(jobs: Iterable[Job], config: dict) -> float:
    """Everything written; with keep_operators false the operator files are deleted once
    measured, and the peak holds one model's (an assumption: models run one after another)."""
    jobs = list(jobs)
    total = sum(j.cost.disk_mb for j in jobs)
    if config.get("keep_operators", True):
        return total
    captures = defaultdict(float)
    for j in jobs:
        if j.rule == "capture_operators":
            captures[j.name.split("/")[0]] += j.cost.disk_mb
    return total - sum(captures.values()) + max(captures.values(), default=0.0)


def summary_rows(jobs: Iterable[Job]) -> list[dict]:
    """Per rule: jobs, largest and total host memory, GPU memory and time (GPU and CPU)."""
    by_rule: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_rule[job.rule].append(job)
    rows = []
    for rule, group in by_rule.items():
        rows.append({
            "rule": rule,
            "jobs": len(group),
            "max_host_gb": max(j.cost.host_mb for j in group) / GB,
            "max_gpu_gb": max(j.cost.gpu_mb for j in group) / GB,
            "max_hours": max(j.cost.seconds(j.threads) for j in group) / 3600,
            "gpu_hours": sum(j.cost.gpu_seconds for j in group if j.cost.device == "cuda") / 3600,
            "cpu_core_hours": sum(j.cost.cpu_seconds for j in group
                                  if j.cost.device != "cuda") / 3600,
            "disk_gb": sum(j.cost.disk_mb for j in group) / GB,
        })  # fmt: skip
    return rows


def profile_conflicts(profile: dict) -> list[str]:
    """Resources that a Snakemake profile's set-resources would set over the cost model's:
    each would silently replace the estimate, so the plan refuses them."""
    conflicts = []
    for rule, values in (profile.get("set-resources") or {}).items():
        for key in sorted(set(values) & {"mem_mb", "runtime", "gpu", "mem_mib"}):
            conflicts.append(f"profile set-resources {rule}.{key} overrides the cost model")
    return conflicts


def read_profile(path) -> dict:
    """A profile's config.yaml, given the profile directory or the file."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    return yaml.safe_load(path.read_text()) or {}


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours >= 0.1 else f"{seconds / 60:,.1f} min"


def plan_text(config: dict, profile=None, list_jobs: bool = False) -> tuple[str, list[str]]:
    """The plan as text (per rule, totals, problems) and the list of problems."""
    jobs = plan_jobs(config)
    limits = cluster_limits(config)
    problems = [f"{job.rule} {job.name}: {reason}" for job, reason in over_limits(jobs, config)]
    concurrency = None
    if profile is not None:
        settings = read_profile(profile)
        problems += profile_conflicts(settings)
        concurrency = settings.get("jobs")
    lines = [
        "ess plan: every job of `all`, estimated from its shape "
        "(ess.paper.cost; docs/cost-model.md).",
        "GPU times are estimates derived from CPU measurements (H100 peak x assumed efficiency);",
        "CPU times are per core; memory is the estimated peak, before the request margin.",
        "",
        f"{'rule':<24}{'jobs':>6}{'max host':>11}{'max GPU':>10}{'max time':>11}"
        f"{'GPU-hours':>11}{'core-hours':>12}{'disk':>10}",
    ]
    for row in summary_rows(jobs):
        lines.append(
            f"{row['rule']:<24}{row['jobs']:>6}{row['max_host_gb']:>8.1f} GB"
            f"{row['max_gpu_gb']:>7.1f} GB{row['max_hours']:>9.2f} h{row['gpu_hours']:>11,.1f}"
            f"{row['cpu_core_hours']:>12,.1f}{row['disk_gb']:>7,.1f} GB"
        )
    gpu_hours = sum(j.cost.gpu_seconds for j in jobs if j.cost.device == "cuda") / 3600
    core_hours = sum(j.cost.cpu_seconds for j in jobs if j.cost.device != "cuda") / 3600
    lines += [
        "",
        f"jobs {len(jobs):,}; GPU-hours {gpu_hours:,.1f}; CPU core-hours {core_hours:,.1f}; "
        f"peak disk {peak_disk_mb(jobs, config) / GB / 1024:,.2f} TB",
        f"limits (config `cluster`): GPU {limits['gpu_mem_gb']} GB, node {limits['node_mem_gb']} "
        f"GB, {limits['max_runtime_h']} h per job, {limits['max_jobs']:,} jobs; requests = "
        f"estimate x {limits['memory_margin']} (memory), x {limits['runtime_margin']} (time), "
        "x attempt",
    ]
    if concurrency:
        busy = sum(j.cost.seconds(j.threads) for j in jobs)
        lines.append(
            f"wall time at the profile's {concurrency} concurrent jobs: at least "
            f"{_hours(busy / concurrency)} (all job time over the concurrency; the DAG's "
            "longest chain may set more)"
        )
    trained = [j for j in jobs if j.rule == "train_synthetic"]
    split = [j for j in trained if j.notes["micro_batch_size"] < j.notes["batch_size"]]
    if split:
        lines.append(
            f"{len(split)} of {len(trained)} training runs accumulate gradients over "
            f"micro-batches to fit {limits['gpu_mem_gb']} GB (smallest micro-batch "
            f"{min(j.notes['micro_batch_size'] for j in split)})"
        )
    long_runs = [j for j in trained if j.notes["resumable"] and attempts_needed(j, config) > 1]
    if long_runs:
        longest = max(long_runs, key=lambda j: j.cost.seconds(j.threads))
        lines.append(
            f"{len(long_runs)} training runs take longer than {limits['max_runtime_h']} h and "
            f"resume from their saved state on the next attempt (train_synthetic retries "
            f"{train_retries(jobs, config)}); the longest, {longest.name}, "
            f"{longest.cost.seconds(longest.threads) / 3600:.0f} h over "
            f"{attempts_needed(longest, config)} attempts"
        )
    if list_jobs:
        lines += ["", f"{'rule':<24}{'job':<52}{'host GB':>8}{'GPU GB':>8}{'hours':>8}  request"]
        for job in jobs:
            request = job_resources(job, config)
            lines.append(
                f"{job.rule:<24}{job.name:<52}{job.cost.host_mb / GB:>8.2f}"
                f"{job.cost.gpu_mb / GB:>8.2f}{job.cost.seconds(job.threads) / 3600:>8.2f}  "
                f"mem_mb={request['mem_mb']} runtime={request['runtime']} gpu={request['gpu']}"
            )
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines += [f"  {problem}" for problem in problems]
    else:
        lines.append("no job exceeds the limits")
    return "\n".join(lines), problems
