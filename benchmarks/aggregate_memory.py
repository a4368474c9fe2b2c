"""Peak memory of rule aggregate_synthetic at config/paper.yaml's size: 1,944 runs x 35,000
training steps.

It generates, in a scratch directory, every input the rule reads for the runs of paper.yaml's
synthetic grid (ess.paper.synthetic.experiments.synthetic_grid on config/config.yaml +
config/paper.yaml):
a metrics.json (with the run's labels), an ess.parquet (2 layers x 6 tau, model_ess's columns)
and a curves.csv of 35,000 steps in the train job's format (step, loss, accuracy, lr,
test_accuracy; a test score every 100 steps). The curves are 8 distinct generated ones,
written in turn (the reader's memory depends on a file's size, not on its numbers). Then, in a
fresh process, it runs what the rule runs (ess.paper.synthetic.tables.aggregate_tables, then the
three parquet writes) and prints the peak RSS above the process's RSS after its imports, with the
wall time and the rows of the curves table.

    python benchmarks/aggregate_memory.py                  # ~4 GB of scratch, ~10 minutes
    python benchmarks/aggregate_memory.py --runs 100       # a smoke test
    python benchmarks/aggregate_memory.py --curve-points 0 # the old reader: every step kept
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ess.paper.synthetic.experiments import synthetic_grid  # noqa: E402
from ess.paper.synthetic.grid import memory_items, run_configs  # noqa: E402

STEPS = 35_000
EVAL_EVERY = 100
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def merged(base: dict, top: dict) -> dict:
    """config/config.yaml with paper.yaml on top, nested keys merged (as Snakemake does)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def paper_runs() -> dict:
    """paper.yaml's synthetic runs: {key: ess.paper.synthetic.grid.Run}."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    return synthetic_grid(merged(config, paper)["synthetic"])


def curve_text(seed: int) -> str:
    """A curves.csv of STEPS steps as the train job writes it (Python float reprs)."""
    rng = np.random.default_rng(seed)
    loss = (np.exp(-np.arange(STEPS) / 5000) * 4 + rng.random(STEPS) * 0.1).astype(np.float32)
    accuracy = np.clip(1 - loss / 4, 0, 1).astype(np.float32)
    lr = np.linspace(1e-3, 1e-4, STEPS)
    lines = ["step,loss,accuracy,lr,test_accuracy"]
    for step in range(STEPS):
        test = repr(float(accuracy[step])) if (step + 1) % EVAL_EVERY == 0 else ""
        lines.append(
            f"{step},{float(loss[step])!r},{float(accuracy[step])!r},{float(lr[step])!r},{test}"
        )
    return "\n".join(lines) + "\n"


def generate(runs: dict, scratch: Path) -> dict:
    """Every input of the rule under scratch; returns the child's arguments."""
    texts = [curve_text(seed) for seed in range(8)]
    metrics, ess, curves = [], [], []
    for i, (key, run) in enumerate(runs.items()):
        folder = scratch / key
        folder.mkdir(parents=True, exist_ok=True)
        _, task, train = run_configs(run.spec)
        labels = run.labels
        metrics.append(
            {
                "run": key,
                **labels.job_labels(),
                "memory_items": memory_items(task),
                "steps": train.steps,
                "test_accuracy": 0.5,
                "test_loss": 1.0,
                "test_distillation_loss": None,
                "final_train_loss": 1.0,
                "train_seconds": 1.0,
                "experiments": ",".join(run.experiments),
                **labels.table_labels(),
            }
        )
        rows = [
            {
                "run": key,
                "layer": layer,
                "layer_mixer": "GLA",
                "tss": 16.0,
                "tolerance": tol,
                "ess_tolerance": 8.0,
                "ess_entropy": 6.0,
                "utilisation": 0.5,
            }
            for layer in range(2)
            for tol in TOLERANCES
        ]
        pd.DataFrame(rows).to_parquet(folder / "ess.parquet", index=False)
        (folder / "curves.csv").write_text(texts[i % len(texts)])
        ess.append(str(folder / "ess.parquet"))
        curves.append(str(folder / "curves.csv"))
    return {"metrics": metrics, "ess": ess, "curves": curves, "runs": list(runs)}


CHILD = r"""
import json, resource, sys, time
import pandas as pd
import pyarrow.parquet  # imported before the baseline: pandas loads it at its first parquet
from ess.paper.synthetic.tables import aggregate_tables
args = json.load(open(sys.argv[1]))
curve_points, out = int(sys.argv[2]), sys.argv[3]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

base = rss_mb()
start = time.perf_counter()
if curve_points > 0:
    tables = aggregate_tables(args["metrics"], args["ess"], args["curves"], args["runs"], 1e-3,
                              curve_points)
else:  # the reader before: every curve whole, then one concat
    tables = aggregate_tables(args["metrics"], args["ess"], args["curves"][:1], args["runs"][:1],
                              1e-3, 10**9)
    curves = pd.concat([pd.read_csv(p).assign(run=r) for p, r in zip(args["curves"], args["runs"])],
                       ignore_index=True)
    tables = (*tables[:2], curves)
for name, frame in zip(("runs", "layers", "curves"), tables):
    frame.to_parquet(f"{out}/{name}.parquet", index=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
print(json.dumps({"peak_mb": peak, "seconds": time.perf_counter() - start,
                  "curve_rows": len(tables[2]), "runs": len(tables[0])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="the first n runs (default all)")
    parser.add_argument("--curve-points", type=int, default=1000, help="0: every step kept")
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args()
    runs = paper_runs()
    print(f"paper.yaml: {len(runs)} synthetic runs")
    runs = dict(list(runs.items())[: args.runs])
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        child_args = generate(runs, Path(scratch))
        arguments = Path(scratch) / "arguments.json"
        arguments.write_text(json.dumps(child_args))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        command = [sys.executable, "-c", CHILD, str(arguments), str(args.curve_points), scratch]
        run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-3000:])
        measured = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"aggregate_synthetic, {measured['runs']} runs x {STEPS} steps, curve_points "
        f"{args.curve_points or 'all'}: peak RSS {measured['peak_mb']:.0f} MB above the "
        f"process's after imports, {measured['seconds']:.0f} s, {measured['curve_rows']} curve rows"
    )


if __name__ == "__main__":
    main()
