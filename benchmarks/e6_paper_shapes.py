"""Time and peak memory of one measure_e6_ess job at config/paper.yaml's shapes, on this machine.

    python benchmarks/e6_paper_shapes.py                    # every case (~15 min on 2 cores)
    python benchmarks/e6_paper_shapes.py --quick            # small L, a smoke test
    python benchmarks/e6_paper_shapes.py --device cuda      # the same cases on a GPU

Cases (a layer of random factors with the shapes ess.hf captures, written as an operator file
by ess.layers.save_operators, as rule capture_operators does):

- attention: one 32-head layer (8 key/value heads, head_dim 128: Llama 3 8B, Mistral 7B) at
  L 2048, position_stride 1. A whole layer takes about a quarter of an hour of one core, more
  on a loaded machine, so by default every split of 1 and of 2 of its heads is measured
  (channel_stride 32 and 16), and all 32 heads at split 1 only (seconds: the dense path
  holds T for every head at once, whatever the splits, so this is the layer's peak memory). The
  whole layer at every split is then a row with basis "extrapolated": its time linear in the
  heads (heads are swept one after another), its peak the 32-head row's.
  `--attention-heads 32` measures the whole layer instead (gpu_check.sh does, on a GPU);
- mamba: one Falcon-Mamba-7B-shaped layer: 8192 channels kept at channel_stride 32
  (ess.paper.e6.sequence_ess.capture_channels: 256 channels), d_state 16, L 2048, position_stride 1.

Each case runs in a fresh interpreter that does what measure_e6_ess does: import, load the
operator file, ess.paper.e6.sequence_ess.mixer_ess at the splits 1, 1 + stride, ... The time is that
of mixer_ess: CPU seconds of the process on the CPU (one thread: an idle core's wall seconds, which
other jobs on a shared machine do not inflate; wall_seconds beside it), wall seconds on a GPU.
The peak is the process's peak resident set (ru_maxrss, imports and the loaded operators
included: what a SLURM job's MaxRSS shows). Writes the table as CSV
(benchmarks/calibration/e6_paper_shapes.csv: the cost model of `ess plan` reads it) and prints
it as markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "benchmarks" / "calibration" / "e6_paper_shapes.csv"
COLUMNS = [
    "kind", "heads_or_channels", "seq_len", "state_size", "position_stride", "dtype",
    "peak_rss_mb", "seconds", "threads", "device", "basis", "wall_seconds",
]  # fmt: skip


def attention_operator_file(path: Path, n_heads: int, n_kv_heads: int, head_dim: int, length: int):
    """A random attention layer as ess.hf captures it: q (H, L, d), k (H_kv, L, d), float32,
    unit-variance logits (scale d^-1/2)."""
    from ess.layers import LayerOperator, save_operators

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "q": torch.randn(n_heads, length, head_dim, generator=generator),
        "k": torch.randn(n_kv_heads, length, head_dim, generator=generator),
    }
    meta = {
        "family": "llama", "mixer": "softmax_attention", "n_heads": n_heads,
        "n_kv_heads": n_kv_heads, "head_dim": head_dim, "length": length,
        "scale": head_dim**-0.5, "window": None, "softcap": None,
    }  # fmt: skip
    save_operators([LayerOperator(0, "attention", tensors, meta)], path)


def mamba_operator_file(path: Path, n_channels: int, d_state: int, length: int, stride: int):
    """A random mamba-1 layer as ess.hf captures it, with the channels kept at `stride`
    (ess.paper.e6.sequence_ess.capture_channels): dt (L, D') in softplus range, a = -exp(A_log) with
    A_log = log(1..N) (mamba's init), B, C (L, N)."""
    from ess.layers import LayerOperator, save_operators
    from ess.paper.e6.sequence_ess import capture_channels

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "dt": torch.nn.functional.softplus(
            torch.randn(length, n_channels, generator=generator) - 4
        ),
        "a": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(n_channels, 1),
        "B": torch.randn(length, d_state, generator=generator),
        "C": torch.randn(length, d_state, generator=generator),
        "D": torch.ones(n_channels),
    }
    meta = {"family": "falcon_mamba", "mixer": "mamba", "n_channels": n_channels,
            "d_state": d_state, "length": length}  # fmt: skip
    op = LayerOperator(0, "ssm", tensors, meta)
    save_operators(capture_channels([op], stride), path)


def measure_one(path: str, channel_stride: int, position_stride: int, threads: int, device: str):
    """In this (fresh) interpreter: load the operator file and time mixer_ess, as the job."""
    from ess.layers import load_operators
    from ess.paper.e6.sequence_ess import mixer_ess

    torch.set_num_threads(threads)
    (op,) = load_operators(path)
    length = op.meta["length"]
    positions = np.arange(1, length, position_stride)
    started, cpu_started = time.perf_counter(), time.process_time()
    table = mixer_ess(op, 0, positions, channel_stride, 1e-3, [1e-2, 1e-3], True, device)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    # On the CPU: CPU seconds of the process, which other jobs on a shared machine do not
    # inflate (with one thread, the wall seconds of an idle core); on a GPU: wall seconds.
    seconds = wall if device == "cuda" else time.process_time() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    heads = table["head"].nunique()
    print(
        json.dumps({"seconds": seconds, "wall": wall, "peak_rss_mb": peak_mb, "heads": int(heads)})
    )


def run_case(path: Path, channel_stride: int, position_stride: int, threads: int, device: str):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        sys.executable, __file__, "--one", str(path), str(channel_stride), str(position_stride),
        str(threads), device,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cases(quick: bool, attention_heads: list[int]) -> list[dict]:
    """The cases: paper shapes, or small L for a smoke test."""
    length = 256 if quick else 2048
    mamba = {"kind": "mamba", "channels": 8192, "d_state": 16, "length": length, "stride": 32}
    attention = {"kind": "attention", "heads": 32, "kv": 8, "d": 128, "length": length}
    return [
        {**mamba, "position_stride": 1, "basis": "measured: every kept channel, every split"},
        *(
            {
                **attention, "channel_stride": 32 // heads, "position_stride": 1,
                "basis": f"measured: {heads} of 32 heads, every split",
            }
            for heads in attention_heads
        ),
        {
            **attention, "channel_stride": 1, "position_stride": length,
            "basis": "measured: all 32 heads at split 1 only (the layer's peak memory: T is "
            "built for every head at once)",
        },
    ]  # fmt: skip


def extrapolated(rows: list[dict], n_heads: int) -> dict | None:
    """The whole attention layer at every split: its time linear in the heads through the two
    smallest rows measured at every split, time(H) = t(h1) + (H - h1) (t(h2) - t(h1)) /
    (h2 - h1) (heads are swept one after another); its peak the one measured with all heads at
    one split (the dense path holds T for every head at once, whatever the splits)."""
    every_split = sorted(
        (r for r in rows if r["kind"] == "attention" and r["position_stride"] == 1),
        key=lambda r: r["heads_or_channels"],
    )
    whole = [r for r in rows if r["kind"] == "attention" and r["heads_or_channels"] == n_heads]
    if len(every_split) < 2 or not whole or every_split[-1]["heads_or_channels"] >= n_heads:
        return None
    first, second = every_split[:2]
    h1, h2 = first["heads_or_channels"], second["heads_or_channels"]
    slope = (second["seconds"] - first["seconds"]) / (h2 - h1)
    return {
        **second,
        "heads_or_channels": n_heads,
        "peak_rss_mb": whole[0]["peak_rss_mb"],
        "seconds": round(first["seconds"] + (n_heads - h1) * slope, 1),
        "wall_seconds": "",
        "basis": f"extrapolated: time linear in heads from the {h1}- and {h2}-head rows, "
        f"peak from the {n_heads}-head row at split 1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--attention-heads", type=int, nargs="+", default=[1, 2], choices=[1, 2, 4, 8, 16, 32],
        help="heads of the 32-head layer to measure (default 1 2: the layer is extrapolated)",
    )  # fmt: skip
    parser.add_argument("--csv", type=Path, default=CSV_PATH)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case in cases(args.quick, args.attention_heads):
            path = Path(work, f"{case['kind']}.safetensors")
            if case["kind"] == "mamba":
                mamba_operator_file(
                    path, case["channels"], case["d_state"], case["length"], case["stride"]
                )
                stride, size, state = case["stride"], case["channels"], case["d_state"]
            else:
                attention_operator_file(path, case["heads"], case["kv"], case["d"], case["length"])
                stride, size, state = case["channel_stride"], case["heads"], case["d"]
            result = run_case(path, stride, case["position_stride"], args.threads, args.device)
            rows.append(
                {
                    "kind": case["kind"],
                    "heads_or_channels": result["heads"],
                    "seq_len": case["length"],
                    "state_size": state,
                    "position_stride": case["position_stride"],
                    "dtype": "float32",
                    "peak_rss_mb": round(result["peak_rss_mb"]),
                    "seconds": round(result["seconds"], 1),
                    "wall_seconds": round(result["wall"], 1),
                    "threads": args.threads,
                    "device": args.device,
                    "basis": f"{case['basis']} (of {size}, channel_stride {stride})",
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    whole = extrapolated(rows, 32)
    if whole is not None:
        rows.append(whole)
    if not args.quick:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.csv.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(args.csv)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[column]) for column in COLUMNS) + " |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        path, channel_stride, position_stride, threads, device = sys.argv[2:7]
        measure_one(path, int(channel_stride), int(position_stride), int(threads), device)
    else:
        main()
