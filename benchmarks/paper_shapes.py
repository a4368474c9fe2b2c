"""Peak memory and time of one training step and of one ESS sequence at config/paper.yaml's
shapes, per mixer class: the calibration the cost model of `ess plan` reads.

Shapes: vocab 8192, d_model 256, 2 layers, no MLP, 1 head (paper.yaml's synthetic.model); an
MQAR sequence of length L with min(64, L / 4) key-value pairs; TSS N. Each probe runs in a
fresh process on one thread (torch and BLAS), so its peak RSS is its own:

- train: one optimiser step of ess.paper.training.train (AdamW, answer-only logits, S6's chunked
scan where it
  applies) on ONE sequence; peak RSS over a warm-up step and the timed steps, above the
  process's RSS once the model, optimiser and data are built (so it includes the optimiser
  state and gradients, 3 x the parameters, once); seconds per step, the
  median of the timed steps (CPU seconds of the process on the CPU, wall seconds on a GPU).
- ess: ess.paper.synthetic.model_ess of one sequence (every layer, every split, the cheaper exact
path
  per layer) of a freshly initialised model; peak RSS above the RSS before it; seconds.

It prints a table of medians and the extrapolation to paper.yaml's batch, and writes every
probe to benchmarks/calibration/paper_shapes.csv (kind, mixer, seq_len, state_size, d_model,
vocab_size, n_layers, batch, peak_rss_mb, seconds, threads, device). Extrapolation, stated as
an upper bound: activations grow linearly in the batch and the model's own memory is counted
in every sequence, so

    train:  peak(B) <= B * peak(1),   seconds(B) ~= B * seconds(1)      (B = 256, one CPU thread)
    ess:    seconds(cell) ~= n_sequences * seeds * seconds(1)          (64 x 3, one CPU thread)

    python benchmarks/paper_shapes.py             # the grid below, ~15 minutes on 2 cores
    python benchmarks/paper_shapes.py --kind ess  # one kind (two processes: one per kind)
    python benchmarks/paper_shapes.py --quick     # smoke test: L 256, N 16, a minute
    python benchmarks/paper_shapes.py --device cuda   # the same probes on a GPU (peak: max
                                                      # allocated GPU memory, not RSS)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSV_PATH = ROOT / "benchmarks" / "calibration" / "paper_shapes.csv"
COLUMNS = [
    "kind",
    "mixer",
    "seq_len",
    "state_size",
    "d_model",
    "vocab_size",
    "n_layers",
    "batch",
    "peak_rss_mb",
    "seconds",
    "threads",
    "device",
]
SHAPE = {"vocab_size": 8192, "d_model": 256, "n_layers": 2}
PAPER_BATCH = 256
PAPER_ESS_SEQUENCES = 64 * 3  # synthetic.ess.n_sequences x seeds, one cell

# (kind, mixer, L, N) of the full grid, about 15 minutes on this 2-core machine when it is not
# shared. Training: GLA at L 256, 1024, 2048 x N 16, 128, 1024; LA, WLA, GLA-S6 (the same scan,
# other decays) at L 256, 2048 x N 16, 1024; SA once per L (it has no N); S6 at paper.yaml's
# only S6 length (E3: L 256). ESS per sequence costs far more on a CPU (minutes at L 2048 with
# N >= 128), so its grid is thinner: GLA at (256, 16), (256, 1024), (1024, 1024); LA, WLA,
# GLA-S6 at (1024, 1024); SA at L 256, 1024; S6 at L 256, N 16 and 128 (at N 1024 the dense
# path's L^2 N per channel over 256 channels takes ~10 minutes).
OTHER_RECURRENCES = ("LA", "WLA", "GLA-S6")
FULL_GRID = (
    [("train", "SA", L, 16) for L in (256, 1024, 2048)]
    + [("train", "GLA", L, N) for L in (256, 1024, 2048) for N in (16, 128, 1024)]
    + [("train", m, L, N) for m in OTHER_RECURRENCES for L in (256, 2048) for N in (16, 1024)]
    + [("train", "S6", 256, N) for N in (16, 128, 1024)]
    + [("ess", "SA", L, 16) for L in (256, 1024)]
    + [("ess", "GLA", L, N) for L, N in ((256, 16), (256, 1024), (1024, 1024))]
    + [("ess", m, 1024, 1024) for m in OTHER_RECURRENCES]
    + [("ess", "S6", 256, N) for N in (16, 128)]
)
QUICK_GRID = [("train", m, 256, 16) for m in ("SA", "GLA", "S6")] + [("ess", "GLA", 256, 16)]

# Runs in the child process: one probe, printed as one JSON line.
CHILD = r"""
import json, resource, statistics, sys, time
import torch
kind, mixer, length, n, device, repeats = sys.argv[1:7]
length, n, repeats = int(length), int(n), int(repeats)
torch.set_num_threads(1)
from ess.paper.training.models import LanguageModel, ModelConfig
from ess.paper.training.tasks import TaskConfig, make_split
from ess.paper.training.train import TrainConfig, batch_gradient, parameter_groups
from ess.measure import model_ess

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def peak_mb():
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def now():
    # CPU: seconds of this process's CPU time (one thread), which a shared machine's load does
    # not inflate as it does wall time; GPU: wall time after a synchronise.
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()

torch.manual_seed(0)
config = ModelConfig(vocab_size=8192, d_model=256, n_layers=2, layers=mixer, n_heads=1,
                     state_size=n, mlp_ratio=0)
model = LanguageModel(config).to(device)
task = TaskConfig(vocab_size=8192, seq_len=length, num_kv_pairs=min(64, length // 4),
                  n_train=1, n_test=1)
x, y = (t.to(device) for t in make_split(task, "train"))
seconds = []
if kind == "train":
    train = TrainConfig(batch_size=1)
    optimiser = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, fused=True)
    def step():
        optimiser.zero_grad(set_to_none=True)
        batch_gradient(model, x, y, train)
        optimiser.step()
    # The baseline is taken before the first step: RSS after a step keeps the allocator's
    # freed pages, which would hide the step's own peak. The peak then includes the optimiser
    # state and gradients (3 x the parameters, ~30 MB here) once.
    base = rss_mb() if device == "cpu" else torch.cuda.memory_allocated() / 2**20
    step()  # warm-up, not timed
    for _ in range(repeats):
        start = now()
        step()
        seconds.append(now() - start)
else:
    base = rss_mb() if device == "cpu" else torch.cuda.memory_allocated() / 2**20
    start = now()
    model_ess(model, x, device=device)
    seconds.append(now() - start)
print(json.dumps({"peak_rss_mb": peak_mb() - base, "seconds": statistics.median(seconds)}))
"""


def probe(kind: str, mixer: str, length: int, n: int, device: str, repeats: int) -> dict:
    """One probe in a fresh process on one thread: its row of the CSV."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env |= {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [kind, mixer, str(length), str(n), device, str(repeats)]
    run = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"probe {args} failed:\n{run.stderr[-2000:]}")
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    state_size = "" if mixer == "SA" else n
    return {
        "kind": kind,
        "mixer": mixer,
        "seq_len": length,
        "state_size": state_size,
        **SHAPE,
        "batch": 1,
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "seconds": round(measured["seconds"], 4),
        "threads": 1,
        "device": device,
    }


def write_csv(rows: list[dict], path: Path, kinds: set[str]) -> None:
    """The rows to `path` through a temporary file and a rename, keeping the rows of the other
    kinds already there (so that `--kind train` and `--kind ess` can run as two processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [row for row in csv.DictReader(f) if row["kind"] not in kinds]
    temporary = path.with_suffix(f".csv.tmp{os.getpid()}")
    with open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(kept + rows, key=lambda row: row["kind"] != "train"))
    os.replace(temporary, path)


def table(rows: list[dict]) -> str:
    """Markdown: per probe the measured peak and seconds and the extrapolation (module
    docstring's formula) to paper.yaml's batch (train) or one cell's sequences (ess)."""
    lines = [
        "| kind | mixer | L | N | peak MB (1 seq) | seconds (1 seq) | extrapolated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "train":
            gb, hours = PAPER_BATCH * r["peak_rss_mb"] / 1024, PAPER_BATCH * r["seconds"]
            extra = f"batch 256: <= {gb:.1f} GB, {hours:.1f} s/step"
        else:
            extra = f"cell (64 x 3 seq): {PAPER_ESS_SEQUENCES * r['seconds'] / 3600:.2f} h"
        n = r["state_size"] if r["state_size"] != "" else "-"
        lines.append(
            f"| {r['kind']} | {r['mixer']} | {r['seq_len']} | {n} | {r['peak_rss_mb']:.0f} "
            f"| {r['seconds']:.3g} | {extra} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 small probes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per probe")
    parser.add_argument("--csv", type=Path, default=None, help=f"default {CSV_PATH} (full grid)")
    parser.add_argument("--kind", choices=["train", "ess"], default=None, help="one kind only")
    args = parser.parse_args()
    grid = QUICK_GRID if args.quick else FULL_GRID
    kinds = {args.kind} if args.kind else {"train", "ess"}
    grid = [probe_args for probe_args in grid if probe_args[0] in kinds]
    path = args.csv or (None if args.quick else CSV_PATH)
    rows = []
    for kind, mixer, length, n in grid:
        rows.append(probe(kind, mixer, length, n, args.device, args.repeats))
        measured = f"{rows[-1]['peak_rss_mb']} MB {rows[-1]['seconds']} s"
        print(f"{kind} {mixer} L={length} N={n}: {measured}", flush=True)
        if path is not None:  # after every probe: a stopped run keeps what it measured
            write_csv(rows, path, kinds)
    if path is not None:
        print(f"wrote {path}")
    print(table(rows))


if __name__ == "__main__":
    main()
