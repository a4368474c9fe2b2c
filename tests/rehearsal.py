"""The rehearsal of config/paper.yaml (tests/test_rehearsal.py): its whole DAG at paper shapes,
thinned only in counts, so that a CPU node can run every rule once.

What is kept, and what is thinned:

- shapes: vocab 8192, d_model 256, 2 layers; every sequence length of MQAR's grid (one
  difficulty per L, the largest number of key-value pairs), selective copying and compression
  at their largest L; the largest state size (1024) of E1 and E3;
  E3-E7 at their own difficulties and state sizes;
- counts: 1 seed, 2 steps of 1 sequence, 16 training and 4 test sequences, 1 sequence for the
  ESS, E4 at one lambda and one layer set, E5 with one teacher and one student, E3 at one
  alpha;
- the device: the CPU (no GPU here), so every estimate compared is a CPU one;
- E6: the six families of paper.yaml as tiny random stand-ins (tests/standins.py) in bf16 at
  L 2048, fetched offline from a Hub-layout cache, thinned as tests/test_e6_hub.py thins them.
"""

from __future__ import annotations

import copy
import re

THINNED_TRAIN = {
    "steps": 2,
    "batch_size": 1,
    "warmup_steps": 1,
    "eval_every": 0,
    "eval_sequences": 4,
    "eval_batch_size": 4,
    "device": "cpu",
}
THINNED_TASK = {"n_train": 16, "n_test": 4}


def one_difficulty_per_length(difficulties: dict) -> list[str]:
    """For each sequence length, the difficulty with the most key-value pairs."""
    best: dict[int, tuple[int, str]] = {}
    for name, fields in difficulties.items():
        length, pairs = fields["seq_len"], fields.get("num_kv_pairs", 0)
        if length not in best or pairs > best[length][0]:
            best[length] = (pairs, name)
    return [best[length][1] for length in sorted(best)]


def thin_synthetic(synthetic: dict) -> dict:
    """paper.yaml's synthetic section (schema defaults filled in), thinned in counts."""
    s = copy.deepcopy(synthetic)
    s["seeds"] = [0]
    s["train"].update(THINNED_TRAIN)
    s["ess"]["n_sequences"] = 1
    if "device" in s["ess"]:
        s["ess"]["device"] = "cpu"
    for task in s["tasks"].values():
        task.setdefault("common", {}).update(THINNED_TASK)
        for fields in (task.get("train") or {}).values():
            fields.update({k: v for k, v in THINNED_TRAIN.items() if k in fields})
    e1 = s["e1"]
    lengths = {
        task: one_difficulty_per_length({d: s["tasks"][task]["difficulties"][d] for d in names})
        for task, names in e1["tasks"].items()
    }
    # MQAR, the paper's main task: one difficulty per L; the others at their largest L only
    e1["tasks"] = {task: names if task == "mqar" else names[-1:] for task, names in lengths.items()}
    e1["state_sizes"] = [max(e1["state_sizes"])]
    if "e3" in s:
        s["e3"]["state_sizes"] = [max(s["e3"]["state_sizes"])]
        s["e3"]["alphas"] = s["e3"]["alphas"][-1:]
    if "e4" in s:
        s["e4"]["lambdas"] = s["e4"]["lambdas"][-1:]
        s["e4"]["layer_sets"] = s["e4"]["layer_sets"][:1]
    if "e5" in s:
        s["e5"]["teacher_difficulties"] = s["e5"]["teacher_difficulties"][:1]
        s["e5"]["student_state_sizes"] = s["e5"]["student_state_sizes"][:1]
    return s


def rehearsal_config(e6_config: dict, standins: dict, node_mem_gb: float) -> dict:
    """The whole config of the rehearsal: E6 on the stand-ins (tests/test_e6_hub.py's
    `standin_config`: paper.yaml's models as tiny Hub-style stand-ins, thinned in counts),
    paper.yaml's synthetic grid thinned in counts (`thin_synthetic`), everything on the CPU,
    and each stand-in's own size in place of the real model's (`params_b`, `head_dim`,
    `n_kv_heads`), so that the plan's estimates and requests are for what runs here. The
    cluster's node memory is the test node's."""
    config = copy.deepcopy(e6_config)
    config["synthetic"] = thin_synthetic(config["synthetic"])
    for name, model in config["models"].items():
        standin = standins[name]
        model["device"] = "cpu"
        model["params_b"] = standin_parameters(standin.directory) / 1e9
        if model.get("d_state") is None:
            model["head_dim"] = standin.state_size
            model["n_kv_heads"] = STANDIN_KV_HEADS.get(standin.family)
    config["cluster"] = {**config.get("cluster", {}), "node_mem_gb": node_mem_gb}
    return config


# tests/standins.py: the grouped-key families read 2 key/value heads
STANDIN_KV_HEADS = {"mistral": 2, "llama": 2}


def standin_parameters(directory) -> int:
    """Parameters stored in a model directory's safetensors files."""
    import math
    from pathlib import Path

    from safetensors import safe_open

    total = 0
    for path in Path(directory).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                total += math.prod(shape)
    return total


SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def submissions(log: str) -> list[tuple[str, str, str]]:
    """(rule, SLURM job id, wildcards) of each submission in a snakemake log. The executor
    plugin writes a job's log to .../rule_<rule>/<wildcards>/<job id>.log, the wildcards as in
    `slurm_wildcards` (none: no folder)."""
    jobs = []
    for jobid, path in SUBMITTED.findall(log):
        match = re.search(r"/rule_(\w+)/(?:(.*)/)?\d+\.log$", path)
        jobs.append((match[1], jobid, match[2] or ""))
    return jobs


def slurm_wildcards(rule: str, name: str) -> str:
    """How the SLURM executor plugin names a job's log folder (its wildcard values joined by
    "_", slashes replaced), from the plan's name of the job (ess.paper.plan.JOB_NAMES)."""
    from ess.paper.plan import JOB_NAMES

    template = JOB_NAMES[rule]
    pattern = re.sub(
        r"\\\{(\w+)\\\}",
        lambda m: f"(?P<{m[1]}>.+)" if m[1] in ("run", "cell") else f"(?P<{m[1]}>[^/]+)",
        re.escape(template),
    )
    match = re.fullmatch(pattern, name)
    values = match.groups() if match else ()
    return "_".join(values).replace("/", "_")


def parse_memory_mb(value: str) -> float:
    """sacct's MaxRSS or ReqMem ("123456K", "2000M", "1.5G") in MB; 0 when empty."""
    match = re.fullmatch(r"([\d.]+)([KMGT]?)n?", value.strip())
    if not match:
        return 0.0
    scale = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[match[2]]
    return float(match[1]) * scale


def parse_elapsed_s(value: str) -> float:
    """sacct's Elapsed ([D-]HH:MM:SS) in seconds."""
    days, _, clock = value.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s
