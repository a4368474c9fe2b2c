"""Training throughput: the shipped loop of BASELINE_COMMIT against today's, in one run.

For each mixer of the default synthetic grid, sequences/s and steps/s of ess.train.train on
MQAR (V 64, L 64, kv 4, TSS 32, d_model 64, 2 layers) at each batch size, for
- `baseline`: the library as of BASELINE_COMMIT (the loop before the speed-ups, MLP ratio 4),
  extracted with `git archive` into a temporary folder;
- `same model`: today's library, the same architecture (mlp_ratio 4);
- `default`: today's library with the synthetic default's model (config/config.yaml).
Every measurement is a fresh process on one thread, the three variants interleaved, repeated
`--repeats` times; the table gives medians and the ratios against the baseline measured in the
same run. `--parallel 2` also runs two processes at once (the whole 2-core machine, as
`snakemake --cores 2` trains two runs at a time) and reports their summed throughput.

    python benchmarks/bench_train.py            # ~6 minutes on 2 cores
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

# Runs in the child process: train `steps` steps (after `warmup` untimed ones) and print JSON.
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from ess.models import ModelConfig
from ess.tasks import TaskConfig, make_split
from ess.train import TrainConfig, train
spec = json.loads(sys.argv[1])
task = TaskConfig(**spec["task"])
splits = make_split(task, "train"), make_split(task, "test")
def run(steps):
    config = TrainConfig(steps=steps, batch_size=spec["batch_size"], warmup_steps=0,
                         eval_batch_size=256)
    start = time.perf_counter()
    train(ModelConfig(**spec["model"]), task, config, splits=splits)
    return time.perf_counter() - start
short = run(spec["warmup"])
full = run(spec["warmup"] + spec["steps"])
print(json.dumps({"seconds_per_step": (full - short) / spec["steps"]}))
"""


def baseline_tree(commit: str, into: Path) -> Path:
    """src/ of `commit` extracted under `into` (git archive): the import path of the baseline."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
        check=True, capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, spec: dict) -> float:
    """Seconds per step of one fresh process importing ess from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"]


def measure_parallel(src: Path, spec: dict, processes: int) -> float:
    """Summed steps/s of `processes` identical processes started together."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)],
                         stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    rates = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"benchmark child failed with {child.returncode}")
        rates.append(1.0 / json.loads(out.strip().splitlines()[-1])["seconds_per_step"])
    return sum(rates)


def default_model() -> dict:
    """The synthetic default's shared model settings (config/config.yaml synthetic.model)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return dict(config["synthetic"]["model"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default="SA,LA,WLA,GLA,GLA-S6,S6")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="processes for the whole-machine row (0 = skip)")
    parser.add_argument("--quick", action="store_true", help="2 mixers, 1 batch size, few steps")
    args = parser.parse_args()
    if args.quick:
        args.mixers, args.batch_sizes, args.steps, args.repeats, args.parallel = "SA,GLA", "32", 5, 1, 0
    default = default_model()
    task = {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4,
            "n_train": 2048, "n_test": 16}
    with tempfile.TemporaryDirectory() as tmp:
        old_src = baseline_tree(BASELINE_COMMIT, Path(tmp))
        new_src = ROOT / "src"
        print(f"baseline {BASELINE_COMMIT}; one thread per process; {args.steps} timed steps after "
              f"3 untimed; median of {args.repeats}; default model {default}")
        header = ("mixer", "batch", "variant", "ms/step", "seq/s", "x baseline")
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for mixer in args.mixers.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                base_model = {"vocab_size": 64, "d_model": 64, "n_layers": 2, "layers": mixer,
                              "state_size": 32}
                variants = {
                    "baseline": (old_src, base_model),
                    "same model": (new_src, {**base_model, "mlp_ratio": 4}),
                    "default": (new_src, {**base_model, **default, "layers": mixer,
                                          "state_size": 32}),
                }
                times = {name: [] for name in variants}
                for _ in range(args.repeats):
                    for name, (src, model) in variants.items():
                        spec = {"task": task, "model": model, "batch_size": batch,
                                "steps": args.steps, "warmup": 3}
                        times[name].append(measure(src, spec))
                base = statistics.median(times["baseline"])
                for name, samples in times.items():
                    t = statistics.median(samples)
                    print(f"| {mixer} | {batch} | {name} | {1e3 * t:.1f} | {batch / t:.0f} | "
                          f"{base / t:.2f} |", flush=True)
                if args.parallel:
                    for name in ("baseline", "default"):
                        src, model = variants[name]
                        spec = {"task": task, "model": model, "batch_size": batch,
                                "steps": args.steps, "warmup": 3}
                        rate = measure_parallel(src, spec, args.parallel)
                        print(f"| {mixer} | {batch} | {name}, {args.parallel} processes | "
                              f"{1e3 / rate:.1f} | {batch * rate:.0f} | - |", flush=True)


if __name__ == "__main__":
    main()
