"""Peak memory of rule aggregate_e6's reading step at config/paper.yaml's shapes (issue 24,
item 4): ess.paper.e6.modulation.read_head_means reduces each ESS table to per-layer traces as it
reads it, so its peak should not grow with the number of models; the former step (every table
concatenated, then reduced) is measured beside it.

ESS tables are generated with paper.yaml's shape per file: one measure_e6_ess job = one layer
of one model on one task and seed (layers_per_job 1), L = 2048 at position_stride 1 (2047
splits), 256 channels (Falcon-Mamba-7B: 8192 channels at channel_stride 32, the largest file
of the six models), the columns rule measure_e6_ess writes with paper.yaml's six taus. Thinned
in layers: `--layers` per model (paper.yaml has 32-64), every task (3 delimiters + 2 controls)
and seed (3). Values are seeded (numpy default_rng(seed)). Each measurement runs in a fresh
process; peak RSS is that process's ru_maxrss.

    .venv/bin/python benchmarks/aggregate_e6_memory.py --models 1 2 4 --former 1 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ess import outputs

TASKS = ("eos", "blank_line", "end_of_speech", "removed", "neutral")
SEEDS = (0, 1, 2)
TAUS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # paper.yaml synthetic.ess.tolerances
LENGTH = 2048  # paper.yaml e6.n_tokens
CHANNELS = 256  # Falcon-Mamba-7B: 8192 channels, channel_stride 32


def ess_table(model: str, task: str, seed: int, layer: int, rng: np.random.Generator):
    """One generated ESS table: CHANNELS heads x (LENGTH - 1) splits, measure_e6_ess's
    columns and dtypes."""
    from ess.outputs import tau_column

    splits = np.arange(1, LENGTH)
    n_rows = CHANNELS * splits.size
    tolerance = rng.integers(0, 17, n_rows)
    columns = {
        "model": model,
        "task": task,
        "seed": seed,
        "layer": layer,
        "mixer": 0,
        "kind": "s6",
        "head": np.repeat(np.arange(CHANNELS) * 32, splits.size),
        "position": np.tile(splits, CHANNELS),
        "ess_tolerance": tolerance,
        "ess_entropy": rng.uniform(1.0, 16.0, n_rows),
        "tss": np.full(n_rows, 16),
    }
    for k, tau in enumerate(TAUS):
        columns[tau_column(tau)] = np.minimum(tolerance + k, 16)
    return pd.DataFrame(columns)


def generate(directory: Path, n_models: int, n_layers: int, seed: int) -> list[Path]:
    """Every ESS file of `n_models` models (n_layers layers each) under `directory`."""
    rng = np.random.default_rng(seed)
    paths = []
    for m in range(n_models):
        for task in TASKS:
            for s in SEEDS:
                for layer in range(n_layers):
                    path = directory / f"model{m}" / task / f"seed{s}" / f"part{layer}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ess_table(f"model{m}", task, s, layer, rng).to_parquet(path, index=False)
                    paths.append(path)
    return paths


def measure(mode: str, paths: list[str]) -> dict:
    """In this process: the reading step (`mode` "bounded": read_head_means; "former": every
    table concatenated, then reduced), then its peak RSS and time."""
    from ess.paper.e6 import modulation

    started = time.perf_counter()
    lengths = {(Path(path).parts[-4], s): LENGTH for path in paths for s in SEEDS}
    if mode == "bounded":
        per_layer = modulation.read_head_means(paths, lengths)
    else:
        ess = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
        values = [c for c in ess.columns if c.startswith(outputs.TAU_PREFIX)]
        per_layer = modulation.head_means(ess, [*modulation.METRICS, *values, "tss"], LENGTH)
    traces = modulation.layer_traces(per_layer, [*modulation.METRICS, "tss"])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": time.perf_counter() - started,
        "peak_mb": peak_kib / 1024,
        "trace_rows": len(traces),
    }


def run_child(mode: str, paths: list[Path]) -> dict:
    command = [sys.executable, __file__, "--child", mode, *map(str, paths)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--former", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--layers", type=int, default=1, help="layers per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1:])))
        return
    if min(args.models + args.former + [args.layers]) < 1:
        raise SystemExit("--models, --former and --layers must be >= 1")
    print("| models | files | rows | step | peak RSS (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="aggregate_e6_memory_") as tmp:
        paths = generate(Path(tmp), max(args.models + args.former), args.layers, args.seed)
        per_model = len(paths) // max(args.models + args.former)
        rows_per_file = CHANNELS * (LENGTH - 1)
        runs = [("bounded", n) for n in args.models] + [("former", n) for n in args.former]
        for mode, n in runs:
            chosen = paths[: n * per_model]
            result = run_child(mode, chosen)
            print(
                f"| {n} | {len(chosen)} | {len(chosen) * rows_per_file:,} | {mode} | "
                f"{result['peak_mb']:.0f} | {result['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
