"""Speed and memory of the ESS paths against the naive reference, measured in the same run.

    python benchmarks/bench_ess.py                 # the full tables (about 10 minutes here)
    python benchmarks/bench_ess.py --quick         # small sizes, a smoke test (seconds)

Every measurement runs in a fresh subprocess after a warm-up on a tiny input; its peak memory
is the peak resident set during the run minus the resident set before it (Linux VmHWM, reset
through /proc/self/clear_refs), so inputs are not counted. Prints markdown tables:

1. one channel of a random diagonal SSM (N=16), materialised for the naive and dense paths:
   naive (float32 svdvals of T[i:, :i] per i, as a user would write it), dense path, and the
   realisation path for N = 16 and 64; ratios to the naive time; agreement of tolerance-ESS;
2. softmax attention with several heads (no small realisation): naive vs dense path, achieved
   GFLOP/s of the exact problem (L^4/24 flops per head) next to the machine's float64 matmul;
3. scale: the realisation path at long L and on a whole Mamba-sized layer;
then the fitted cost exponent (time ~ L^k) of each method.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time

import torch

from ess import effective_state_size, effective_state_size_ssm


def random_ssm(channels: int, length: int, n: int, seed: int = 0):
    """A random stable diagonal SSM: A: (c, L, N) in (0.5, 0.99), B, C: (c, L, N)."""
    g = torch.Generator().manual_seed(seed)
    A = 0.5 + 0.49 * torch.rand(channels, length, n, generator=g, dtype=torch.float64)
    B = torch.randn(channels, length, n, generator=g, dtype=torch.float64)
    C = torch.randn(channels, length, n, generator=g, dtype=torch.float64)
    return A, B, C


def materialise_diagonal(A, B, C):
    """T[t, j] = sum_n C[t, n] prod_{j<s<=t} A[s, n] B[j, n] via cumulative log-decays.
    A: (c, L, N) -> T: (c, L, L) float64."""
    log_decay = torch.log(A).cumsum(dim=1)  # (c, L, N)
    diff = log_decay[:, :, None, :] - log_decay[:, None, :, :]  # (c, t, j, N)
    causal = torch.tril(torch.ones(A.shape[1], A.shape[1], dtype=torch.bool))
    kernel = torch.where(causal[None, :, :, None], diff, -math.inf).exp()
    return torch.einsum("ctn,ctjn,cjn->ctj", C, kernel, B)


def random_attention(heads: int, length: int, d: int = 64, seed: int = 0):
    """Softmax attention of random queries/keys, as in a layer at initialisation: (h, L, L)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, length, d, generator=g)
    k = torch.randn(heads, length, d, generator=g)
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    return (q @ k.mT / math.sqrt(d)).masked_fill(future, -math.inf).softmax(-1)


def naive_float32(T: torch.Tensor) -> torch.Tensor:
    """What a user would write: one float32 SVD per split position."""
    T = T.float()
    s = [torch.linalg.svdvals(T[..., i:, :i]) for i in range(1, T.shape[-1])]
    return torch.stack([(x > 1e-3 * x.amax(-1, keepdim=True)).sum(-1) for x in s], dim=-1)


# ---------------------------------------------------------------------------------------------
# One measurement = one subprocess


def _run(kind: str, T, A, B, C) -> torch.Tensor:
    if kind in ("naive", "attention_naive"):
        return naive_float32(T)
    if kind in ("dense", "attention_dense"):
        return effective_state_size(T).tolerance
    return effective_state_size_ssm(A, B, C).tolerance


def _peak_rss_mb() -> float:
    """Peak resident memory of this process since the last _reset_peak_rss (VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # Linux: reset the peak RSS to the current RSS


def _measure(task: dict) -> dict:
    """One timed run in this process, after a warm-up on a tiny input (library initialisation
    is not what is measured). peak_mb: peak RSS during the run minus the RSS before it."""
    kind, length = task["kind"], task["length"]
    if kind in ("naive", "dense", "ssm"):
        A, B, C = random_ssm(task.get("channels", 1), length, task.get("n", 16))
        T = materialise_diagonal(A, B, C) if kind != "ssm" else None
        tiny = random_ssm(1, 16, task.get("n", 16))
        _run(kind, materialise_diagonal(*tiny), *tiny)
    else:
        A = B = C = None
        T = random_attention(task["heads"], length)
        _run(kind, random_attention(task["heads"], 16), None, None, None)
    _reset_peak_rss()
    before = _peak_rss_mb()
    start = time.perf_counter()
    tolerance = _run(kind, T, A, B, C)
    seconds = time.perf_counter() - start
    peak_mb = _peak_rss_mb() - before
    return {"seconds": seconds, "peak_mb": peak_mb, "tolerance": tolerance.tolist()}


def measure(task: dict, repeats: int) -> dict:
    """Median over repeats, each in a fresh process; a run over 30 s is not repeated.
    Returns seconds, peak_mb and the tolerance-ESS of the first run."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", json.dumps(task)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(out.splitlines()[-1]))
        if runs[-1]["seconds"] > 30:
            break
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "tolerance": torch.tensor(runs[0]["tolerance"]),
    }


def mismatches(tolerance: torch.Tensor, reference: torch.Tensor) -> int:
    """Split positions whose tolerance-ESS differs from the reference's."""
    return int((tolerance != reference).sum())


def matmul_gflops() -> float:
    """float64 matmul throughput of this machine, measured now."""
    a = torch.randn(2048, 2048, dtype=torch.float64)
    a @ a
    times = []
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(times) / 1e9


def cost_exponent(lengths: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(L)."""
    x = [math.log(v) for v in lengths]
    y = [math.log(v) for v in seconds]
    mx, my = statistics.mean(x), statistics.mean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--attention-lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--heads", type=int, default=9, help="attention heads (SmolLM2 has 9)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-length", type=int, default=65536)
    parser.add_argument("--layer-channels", type=int, default=1536, help="Mamba-130M: 1536")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    if args.quick:
        args.lengths, args.attention_lengths, args.heads = [64, 128], [64, 128], 2
        args.repeats, args.long_length, args.layer_channels = 1, 1024, 8

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"# ESS benchmark: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit or '?'}"
    )
    gflops = matmul_gflops()
    print(f"float64 matmul: {gflops:.1f} GFLOP/s\n")
    raw = {"matmul_gflops": gflops}

    # 1. one channel, realisable operator
    rows, series = [], {"naive": [], "dense": [], "ssm16": [], "ssm64": []}
    for length in args.lengths:
        naive = measure({"kind": "naive", "length": length}, args.repeats)
        dense = measure({"kind": "dense", "length": length}, args.repeats)
        ssm16 = measure({"kind": "ssm", "length": length, "n": 16}, args.repeats)
        ssm64 = measure({"kind": "ssm", "length": length, "n": 64}, args.repeats)
        for key, m in (("naive", naive), ("dense", dense), ("ssm16", ssm16), ("ssm64", ssm64)):
            series[key].append(m["seconds"])
        rows.append(
            [
                length,
                f"{naive['seconds']:.3f}",
                f"{dense['seconds']:.3f} ({naive['seconds'] / dense['seconds']:.1f}x)",
                f"{ssm16['seconds']:.3f} ({naive['seconds'] / ssm16['seconds']:.0f}x)",
                f"{ssm64['seconds']:.3f} ({naive['seconds'] / ssm64['seconds']:.0f}x)",
                f"{naive['peak_mb']:.0f} / {dense['peak_mb']:.0f} / {ssm16['peak_mb']:.0f}",
                f"{mismatches(naive['tolerance'], dense['tolerance'])} / "
                f"{mismatches(ssm16['tolerance'], dense['tolerance'])}",
            ]
        )
    print("## One channel, random diagonal SSM (N=16), median seconds (speed-up vs naive)\n")
    print(
        table(
            [
                "L",
                "naive f32",
                "dense path",
                "realisation N=16",
                "realisation N=64",
                "peak MB naive/dense/N=16",
                "tolerance-ESS mismatches vs float64 dense: naive f32 / N=16",
            ],
            rows,
        )
    )
    raw["single_channel"] = {"lengths": args.lengths, **series}

    # 2. attention, several heads
    rows, att = [], {"naive": [], "dense": []}
    for length in args.attention_lengths:
        naive = measure(
            {"kind": "attention_naive", "length": length, "heads": args.heads}, args.repeats
        )
        dense = measure(
            {"kind": "attention_dense", "length": length, "heads": args.heads}, args.repeats
        )
        att["naive"].append(naive["seconds"])
        att["dense"].append(dense["seconds"])
        achieved = args.heads * length**4 / 24 / dense["seconds"] / 1e9
        rows.append(
            [
                length,
                f"{naive['seconds']:.2f}",
                f"{dense['seconds']:.2f}",
                f"{naive['seconds'] / dense['seconds']:.1f}x",
                f"{achieved:.1f} ({100 * achieved / gflops:.0f}% of matmul)",
                f"{naive['peak_mb']:.0f} / {dense['peak_mb']:.0f}",
            ]
        )
    print(f"\n## Softmax attention, {args.heads} heads, median seconds\n")
    print(
        table(
            [
                "L",
                "naive f32",
                "dense path",
                "speed-up",
                "GFLOP/s (L^4/24 per head)",
                "peak MB naive/dense",
            ],
            rows,
        )
    )
    raw["attention"] = {"lengths": args.attention_lengths, **att}

    # 3. scale
    long_run = measure({"kind": "ssm", "length": args.long_length, "n": 16}, 1)
    layer_length = 128 if args.quick else 2048
    layer = measure(
        {"kind": "ssm", "length": layer_length, "n": 16, "channels": args.layer_channels}, 1
    )
    state_mb = 2 * args.long_length * 16 * 16 * 8 / 2**20
    print("\n## Scale (realisation path, N=16)\n")
    print(
        table(
            ["case", "seconds", "peak MB"],
            [
                [
                    f"one channel, L={args.long_length} (F and G factors: {state_mb:.0f} MB)",
                    f"{long_run['seconds']:.1f}",
                    f"{long_run['peak_mb']:.0f}",
                ],
                [
                    f"a Mamba layer: {args.layer_channels} channels, L={layer_length}",
                    f"{layer['seconds']:.1f}",
                    f"{layer['peak_mb']:.0f}",
                ],
            ],
        )
    )
    raw["scale"] = {
        "long": {k: long_run[k] for k in ("seconds", "peak_mb")},
        "layer": {k: layer[k] for k in ("seconds", "peak_mb")},
    }

    print("\n## Fitted cost exponent k (time ~ L^k)\n")
    exponents = [
        ["naive f32, one channel", cost_exponent(args.lengths, series["naive"])],
        ["dense path, one channel", cost_exponent(args.lengths, series["dense"])],
        ["realisation N=16", cost_exponent(args.lengths, series["ssm16"])],
        ["realisation N=64", cost_exponent(args.lengths, series["ssm64"])],
        [
            f"naive f32, attention x{args.heads}",
            cost_exponent(args.attention_lengths, att["naive"]),
        ],
        [
            f"dense path, attention x{args.heads}",
            cost_exponent(args.attention_lengths, att["dense"]),
        ],
    ]
    print(table(["method", "k"], [[m, f"{k:.2f}"] for m, k in exponents]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
