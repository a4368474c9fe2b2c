"""Training throughput: the shipped loop of BASELINE_COMMIT against today's, in one run.

For each mixer of the default synthetic grid (TSS 32, 2 layers, batch 32 and 128), seconds
per step and sequences/s of ess.paper.training.train.train on MQAR kv4 for
- `baseline`: the library as of BASELINE_COMMIT (the loop before the speed-ups) with that
  commit's default (d_model 64, MLP ratio 4, L = 64), extracted with `git archive`;
- `today, same model`: today's library on exactly the baseline's model and task (the loop's
  own speed-up: factorised chunk scan, shifted convolution, answer-only logits, fused AdamW);
- `today, default`: today's library with the synthetic default of config/config.yaml (its
  model and its MQAR length; a different amount of work per sequence, reported as it is).
Every measurement is a fresh process on one thread (per core), the variants interleaved,
repeated `--repeats` times; the table gives medians and ratios against the baseline measured
in the same run. `--parallel 2` adds the summed throughput of two processes at once (the
whole 2-core machine, as `snakemake --cores 2` trains two runs at a time).

    python benchmarks/bench_train.py            # ~10 minutes on 2 cores
    python benchmarks/bench_train.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import yaml

BASELINE_COMMIT = "1be4d11"  # main before the training speed-ups (issue 11)
ROOT = Path(__file__).resolve().parent.parent

# Runs in the child process: the time of `steps` steps as the difference of two runs that
# differ only in their length (setup and evaluation cancel), printed as JSON.
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from ess.paper.training.models import ModelConfig
from ess.paper.training.tasks import TaskConfig, make_split
from ess.paper.training.train import TrainConfig, train
spec = json.loads(sys.argv[1])
task = TaskConfig(**spec["task"])
splits = make_split(task, "train"), make_split(task, "test")
def run(steps):
    config = TrainConfig(steps=steps, batch_size=spec["batch_size"], warmup_steps=0,
                         eval_batch_size=256)
    start = time.perf_counter()
    train(ModelConfig(**spec["model"]), task, config, splits=splits)
    return time.perf_counter() - start
run(spec["warmup"])  # first use of every kernel in this process: not timed
short = run(spec["warmup"])
full = run(spec["warmup"] + spec["steps"])
print(json.dumps({"seconds_per_step": (full - short) / spec["steps"]}))
"""


def baseline_tree(commit: str, into: Path) -> Path:
    """src/ of `commit` extracted under `into` (git archive): the import path of the baseline."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, spec: dict) -> float:
    """Seconds per step of one fresh process importing ess from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"]


def measure_parallel(src: Path, spec: dict, processes: int) -> float:
    """Summed steps/s of `processes` identical processes started together."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    rates = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"benchmark child failed with {child.returncode}")
        rates.append(1.0 / json.loads(out.strip().splitlines()[-1])["seconds_per_step"])
    return sum(rates)


def default_setting() -> tuple[dict, dict]:
    """(model fields, MQAR task fields) of the synthetic default (config/config.yaml)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    synthetic = config["synthetic"]
    return dict(synthetic["model"]), dict(synthetic["tasks"]["mqar"]["common"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default="SA,LA,WLA,GLA,GLA-S6,S6")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--parallel", type=int, default=2, help="processes for the whole-machine row (0 = skip)"
    )
    parser.add_argument("--quick", action="store_true", help="2 mixers, 1 batch size, few steps")
    args = parser.parse_args()
    if args.quick:
        args.mixers, args.batch_sizes, args.steps = "SA,GLA", "32", 20
        args.repeats, args.parallel = 1, 0
    default_model, default_task = default_setting()
    base_task = {
        "name": "mqar",
        "vocab_size": 64,
        "seq_len": 64,
        "num_kv_pairs": 4,
        "n_train": 2048,
        "n_test": 16,
    }
    new_task = {**base_task, "seq_len": default_task["seq_len"], "filler": default_task["filler"]}
    with tempfile.TemporaryDirectory() as tmp:
        old_src = baseline_tree(BASELINE_COMMIT, Path(tmp))
        new_src = ROOT / "src"
        print(
            f"baseline {BASELINE_COMMIT}; one thread per process; {args.steps} timed steps "
            f"after 3 untimed; median of {args.repeats}; default model {default_model}, "
            f"L = {new_task['seq_len']}; load average {os.getloadavg()[0]:.1f}"
        )
        header = ("mixer", "batch", "variant", "ms/step", "seq/s", "x baseline")
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for mixer in args.mixers.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                base_model = {
                    "vocab_size": 64,
                    "d_model": 64,
                    "n_layers": 2,
                    "layers": mixer,
                    "state_size": 32,
                }
                variants = {
                    "baseline": (old_src, base_model, base_task),
                    "today, same model": (new_src, {**base_model, "mlp_ratio": 4}, base_task),
                    "today, default": (
                        new_src,
                        {**base_model, **default_model, "layers": mixer, "state_size": 32},
                        new_task,
                    ),
                }
                specs = {
                    name: {
                        "task": task,
                        "model": model,
                        "batch_size": batch,
                        "steps": args.steps,
                        "warmup": 3,
                    }
                    for name, (_, model, task) in variants.items()
                }
                times = {name: [] for name in variants}
                for _ in range(args.repeats):
                    for name, (src, _, _) in variants.items():
                        times[name].append(measure(src, specs[name]))
                base = statistics.median(times["baseline"])
                for name, samples in times.items():
                    t = statistics.median(samples)
                    print(
                        f"| {mixer} | {batch} | {name} | {1e3 * t:.1f} | {batch / t:.0f} | "
                        f"{base / t:.2f} |",
                        flush=True,
                    )
                if args.parallel:
                    for name in ("baseline", "today, default"):
                        rate = measure_parallel(variants[name][0], specs[name], args.parallel)
                        print(
                            f"| {mixer} | {batch} | {name}, {args.parallel} processes | "
                            f"{1e3 / rate:.1f} | {batch * rate:.0f} | - |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
