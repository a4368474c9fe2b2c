"""Calibrate the cost model (`ess.paper.cost`): time and peak memory of the three kinds of work the
workflow's heavy jobs do, measured on this machine at paper.yaml's shapes, one thread each.

- train: one training step of the synthetic model (vocab 8192, d_model 256, 2 layers, no MLP,
  AdamW) on `batch` sequences (1, and 8 at L 256) of length L, state size N, per mixer; peak
  RSS above the process with torch imported and the model built (so: activations, gradients,
  optimiser state), seconds per step (median of 3 after a warm-up step).
- dense: the dense path (attention's route) on H heads of a causal L x L operator, every split,
  both metrics with the spectrum (what the workflow asks for); peak RSS above the operator
  itself, seconds.
- realisation: the realisation path on C channels of a diagonal recurrence of state N over L
  steps, every split, with the spectrum; peak RSS above the factors, seconds.
- matmul: one float32 (1024 x 1024) @ (1024 x 1024) product, seconds: the core's flop rate,
  from which `ess.paper.cost` derives its GPU estimates.

Every probe runs in a fresh process (peak RSS is a process's high-water mark) and is timed in
CPU seconds of that process (`time.process_time`): with one thread that is the time on one
core, whatever else the machine runs. The shapes are
paper.yaml's, thinned only in batch (one sequence), heads and channels (the cost is linear in
them) and, for the slowest probes, positions (stride: the cost is linear in the number of
splits evaluated). Writes src/ess/paper/data/cost_calibration.csv, which `ess.paper.cost` fits; run
it again after a change to the models or the ESS paths:

    python benchmarks/cost_calibration.py            # about 10 minutes on one core
    python benchmarks/cost_calibration.py --check    # held-out probes against ess.paper.cost
    python benchmarks/cost_calibration.py --quick    # a smoke test, writes nowhere

`--check` measures shapes the calibration did not (HELD_OUT) and prints each measurement next
to the cost model's estimate of the same quantity, with their ratio; it exits 1 when a ratio
falls outside [1/2, 2].
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "src" / "ess" / "data" / "cost_calibration.csv"
COLUMNS = (
    "kind", "mixer", "seq_len", "state_size", "d_model", "vocab_size", "n_layers", "batch",
    "operators", "position_stride", "peak_mb", "seconds", "threads",
)  # fmt: skip

# (mixer, L, N, batch): training probes, one sequence at paper shapes (S6 where one sequence
# fits), and 8 sequences at L 256 so that a step's fixed cost separates from a sequence's.
TRAIN = [
    *[("SA", L, 16, 1) for L in (256, 1024, 2048)],
    *[(m, L, N, 1) for m in ("LA", "GLA") for L in (256, 1024, 2048) for N in (16, 128, 1024)],
    *[("WLA", L, N, 1) for L in (256, 2048) for N in (16, 1024)],
    *[("S6", L, N, 1) for L in (64, 256) for N in (16, 64, 128)],
    *[(m, 256, 16, 8) for m in ("SA", "LA", "GLA", "WLA", "S6")],
]
# (kind, L, N, operators, position_stride)
ESS = [
    *[("dense", L, 0, 1, 1) for L in (256, 512, 1024)],
    ("dense", 2048, 0, 1, 8),
    *[("realisation", L, N, 4, 1) for L in (256, 1024) for N in (16, 64, 256)],
    ("realisation", 2048, 16, 4, 1),
    ("realisation", 256, 1024, 1, 16),
]
MATMUL_SIZE = 1024
WIDTHS = (12, 6, 7, 7, 7, 7, 10, 10)
# Held-out shapes for --check: (kind, mixer, L, N, batch or operators, position_stride).
HELD_OUT = [
    ("train", "GLA", 512, 256, 1, 1),
    ("train", "LA", 1536, 512, 1, 1),
    ("train", "WLA", 1024, 128, 2, 1),
    ("train", "SA", 1536, 16, 1, 1),
    ("train", "S6", 128, 32, 2, 1),
    ("dense", "", 768, 0, 2, 4),
    ("realisation", "", 512, 128, 2, 1),
    ("realisation", "", 1536, 32, 8, 1),
]
QUICK_TRAIN = [("GLA", 64, 16, 1), ("S6", 64, 16, 2)]
QUICK_ESS = [("dense", 64, 0, 1, 1), ("realisation", 64, 16, 2, 1)]

PROBE = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
spec = json.loads(sys.argv[1])

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

if spec["kind"] == "train":
    from ess.paper.training.models import LanguageModel, ModelConfig
    from ess.paper.training.train import TrainConfig, optimiser_step, parameter_groups
    import torch.nn.functional as F
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=8192, d_model=256, n_layers=2, layers=spec["mixer"],
                         n_heads=1, state_size=spec["state_size"], mlp_ratio=0)
    model = LanguageModel(config)
    optimiser = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, fused=True)
    L = spec["seq_len"]
    b = spec["batch"]
    x = torch.randint(0, 8192, (b, L))
    y = torch.full((b, L), -100)
    answers = range(L // 2, L, max(1, L // 16))  # a few answer positions, as in MQAR
    y[:, answers] = torch.randint(0, 8192, (b, len(answers)))
    def step():
        answer = y != -100
        hidden, _ = model.hidden_with_mixer_inputs(x)
        loss = F.cross_entropy(model.head(hidden[answer]), y[answer])
        optimiser_step(model, optimiser, loss, 1.0)
    base = rss_mb()
    times = []
    for _ in range(4):
        t = time.process_time(); step(); times.append(time.process_time() - t)
    seconds = sorted(times[1:])[1]
elif spec["kind"] == "matmul":
    n = spec["seq_len"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    base = rss_mb()
    times = []
    for _ in range(7):
        t = time.process_time(); a @ b; times.append(time.process_time() - t)
    seconds = sorted(times)[3]
else:
    from ess.dense_path import effective_state_size
    from ess.realisation_path import effective_state_size_ssm
    torch.manual_seed(0)
    L, N, H = spec["seq_len"], spec["state_size"], spec["operators"]
    positions = range(1, L, spec["position_stride"])
    if spec["kind"] == "dense":
        T = torch.softmax(torch.randn(H, L, L).masked_fill(
            ~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf")), -1)
        base = rss_mb()
        t = time.process_time()
        effective_state_size(T, positions=positions, spectrum=True)
    else:
        A = torch.rand(H, L, N) * 0.5 + 0.45
        B, C = torch.randn(H, L, N), torch.randn(H, L, N)
        base = rss_mb()
        t = time.process_time()
        effective_state_size_ssm(A, B, C, positions=positions, spectrum=True)
    seconds = time.process_time() - t
print(json.dumps({"peak_mb": max(0.0, peak_mb() - base), "seconds": seconds}))
"""


def probe(spec: dict) -> dict:
    """Run one probe in a fresh single-threaded process; its peak_mb and seconds."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def specs(quick: bool) -> list[dict]:
    train = QUICK_TRAIN if quick else TRAIN
    ess = QUICK_ESS if quick else ESS
    rows = [
        dict(kind="matmul", mixer="", seq_len=MATMUL_SIZE, state_size=0, d_model=0,
             vocab_size=0, n_layers=0, batch=1, operators=1, position_stride=1)
    ]  # fmt: skip
    rows += [
        dict(kind="train", mixer=m, seq_len=L, state_size=N, d_model=256, vocab_size=8192,
             n_layers=2, batch=b, operators=1, position_stride=1)
        for m, L, N, b in train
    ]  # fmt: skip
    rows += [
        dict(kind=kind, mixer="", seq_len=L, state_size=N, d_model=0, vocab_size=0,
             n_layers=1, batch=1, operators=H, position_stride=s)
        for kind, L, N, H, s in ess
    ]  # fmt: skip
    return rows


def estimate(spec: dict) -> tuple[float, float]:
    """ess.paper.cost's (peak MB, seconds) for a probe's shape, the quantities the probe
    measures."""
    from ess.paper import cost

    L, N = spec["seq_len"], spec["state_size"]
    if spec["kind"] == "train":
        activations, seconds = cost.train_laws(spec["mixer"])
        state = cost.model_state_mb(spec["mixer"], 8192, 256, 2, N)
        return state + activations(L, N, spec["batch"]), seconds(L, N, spec["batch"])
    if spec["kind"] == "dense":
        peak, seconds = cost.dense_laws()
        splits = len(range(1, L, spec["position_stride"]))
        return peak(L, 0, spec["operators"]), seconds(L, 0, spec["operators"] * splits)
    peak, seconds = cost.realisation_laws()
    return peak(L, N, spec["operators"]), seconds(L, N, spec["operators"])


def check() -> int:
    """Held-out probes against the cost model; 1 when a ratio leaves [1/2, 2]."""
    print(
        f"{'kind':<12}{'mixer':<6}{'L':>6}{'N':>6}{'B':>4}  peak MB (est, ratio)    s (est, ratio)"
    )
    worst = 1.0
    for kind, mixer, L, N, b, stride in HELD_OUT:
        spec = dict(kind=kind, mixer=mixer, seq_len=L, state_size=N, batch=b, operators=b,
                    position_stride=stride)  # fmt: skip
        measured = probe(spec)
        peak, seconds = estimate(spec)
        ratios = (peak / measured["peak_mb"], seconds / measured["seconds"])
        worst = max(worst, *(max(r, 1 / r) for r in ratios))
        print(
            f"{kind:<12}{mixer:<6}{L:>6}{N:>6}{b:>4}  {measured['peak_mb']:7.0f} ({peak:6.0f}, "
            f"{ratios[0]:4.2f})  {measured['seconds']:7.3f} ({seconds:7.3f}, {ratios[1]:4.2f})",
            flush=True,
        )
    print(f"largest factor between estimate and measurement: {worst:.2f}")
    return 0 if worst <= 2.0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny probes, write nothing")
    parser.add_argument("--check", action="store_true", help="held-out probes vs ess.paper.cost")
    args = parser.parse_args()
    if args.check:
        sys.exit(check())
    rows = []
    header = ("kind", "mixer", "L", "N", "ops", "stride", "peak MB", "s")
    print("".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(
        zip(header, WIDTHS, strict=True))))  # fmt: skip
    for spec in specs(args.quick):
        row = {**spec, **probe(spec), "threads": 1}
        rows.append(row)
        print(
            f"{row['kind']:<12}{row['mixer']:<6}{row['seq_len']:>6}{row['state_size']:>6}"
            f"{row['operators']:>5}{row['position_stride']:>7}{row['peak_mb']:>10.1f}"
            f"{row['seconds']:>10.3f}",
            flush=True,
        )
    if args.quick:
        return
    with open(CALIBRATION, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})
    print(f"wrote {CALIBRATION.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
