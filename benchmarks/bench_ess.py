"""Speed and memory of the ESS paths against the naive definition, measured in the same run.

    python benchmarks/bench_ess.py                 # every table (about 25 minutes here)
    python benchmarks/bench_ess.py --sections attention      # the attention table only
    python benchmarks/bench_ess.py --quick         # small sizes, a smoke test (a minute)
    python benchmarks/bench_ess.py --device cuda   # adds the fast paths on the GPU

Every measurement runs in a fresh subprocess after a warm-up on a tiny input; its peak memory
is the peak resident set during the run minus the resident set before it (Linux VmHWM, reset
through /proc/self/clear_refs), so inputs are not counted. Each method is timed twice: per core
(torch and BLAS limited to one thread; CPU seconds of the process, which other jobs on a shared
machine do not inflate) and on the whole machine (every thread torch has; wall seconds). Every
ratio is against the two naive loops timed the same way in the same run: float64 `svdvals` of
each H_i (the definition, `effective_state_size_naive`) and float32 `svdvals` (what a user
would write). Prints markdown tables:

1. one channel of a random diagonal SSM (N=16), materialised for the naive and dense paths:
   the dense path and the realisation path for N = 16 and 64;
2. softmax attention with several heads (no small realisation): the dense path with both
   metrics (eigenvalues) and with tolerance-ESS only (entropy=False: eigenvalue counts);
3. scale: the realisation path at long L and on a whole Mamba-sized layer;
then the fitted cost exponent (time ~ L^k, per core) of each method. A method's tolerance-ESS
must equal the float64 definition's: the script counts the positions where it does not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from threadpoolctl import threadpool_limits

from ess import effective_state_size, effective_state_size_naive, effective_state_size_ssm

NAIVE = ("naive64", "naive32")
# an SSM with N = 64: the definition was computed for N = 16 (a GPU run of it is checked
# against its CPU run)
OTHER_OPERATOR = ("ssm64",)
LABELS = {
    "naive64": "naive float64 (definition)",
    "naive32": "naive float32",
    "dense": "dense path",
    "ssm16": "realisation N=16",
    "ssm64": "realisation N=64",
    "spectra": "dense path, both metrics",
    "counts": "dense path, tolerance only",
}


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


def _inputs(task: dict, length: int):
    """(T, A, B, C) of a task's case at this length, on the task's device; T is None for the
    realisation path, A, B, C are None for attention."""
    device = task.get("device", "cpu")
    if task["case"] == "attention":
        return random_attention(task["heads"], length).to(device), None, None, None
    n = {"ssm16": 16, "ssm64": 64}.get(task["method"], task.get("n", 16))  # naive, dense: 16
    A, B, C = random_ssm(task.get("channels", 1), length, n)
    T = (
        materialise_diagonal(A, B, C).to(device)
        if task["method"] in ("naive64", "naive32", "dense")
        else None
    )
    return T, A.to(device), B.to(device), C.to(device)


def _run(method: str, T, A, B, C) -> torch.Tensor:
    if method == "naive64":
        result = effective_state_size_naive(T).tolerance
    elif method == "naive32":
        result = naive_float32(T)
    elif method in ("dense", "spectra"):
        result = effective_state_size(T).tolerance
    elif method == "counts":
        result = effective_state_size(T, entropy=False).tolerance
    else:
        result = effective_state_size_ssm(A, B, C).tolerance
    if result.is_cuda:
        torch.cuda.synchronize()
    return result.cpu()


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
    is not what is measured). threads 1: torch and every BLAS in the process on one thread,
    timed in CPU seconds of the process (on a machine shared with other jobs its wall time
    also counts their time slices); threads 0: every thread, timed in wall seconds.
    peak_mb: peak RSS during the run minus the RSS before it."""
    if task["threads"] == 1:
        torch.set_num_threads(1)
    with threadpool_limits(limits=1 if task["threads"] == 1 else None):
        _run(task["method"], *_inputs(task, 16))
        inputs = _inputs(task, task["length"])
        _reset_peak_rss()
        before = _peak_rss_mb()
        start, cpu_start = time.perf_counter(), time.process_time()
        tolerance = _run(task["method"], *inputs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = _peak_rss_mb() - before
    seconds = cpu if task["threads"] == 1 and task.get("device", "cpu") == "cpu" else wall
    return {"seconds": seconds, "wall": wall, "peak_mb": peak_mb, "tolerance": tolerance.tolist()}


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


def matmul_gflops(threads: int | None) -> float:
    """float64 matmul throughput of this machine on `threads` threads (None: all), now: in CPU
    seconds on one thread, as the per-core rows are timed."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    clock = time.process_time if threads == 1 else time.perf_counter
    a = torch.randn(2048, 2048, dtype=torch.float64)
    a @ a
    times = []
    for _ in range(3):
        start = clock()
        a @ a
        times.append(clock() - start)
    torch.set_num_threads(before)
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


def _seconds(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def _ratio(reference: float, s: float) -> str:
    return f"{reference / s:.1f}x" if reference / s < 100 else f"{reference / s:.0f}x"


def compare(case: dict, methods: list[str], lengths: list[int], args) -> tuple[list, dict]:
    """Time every method at every length per core and on the whole machine (plus on the GPU
    when asked). Returns the table rows and {(method, threads): {"seconds": [per length],
    "mismatches": [tolerance-ESS positions differing from the definition, per length]}}."""
    rows, series = [], {}
    for length in lengths:
        timed = {}
        for method in methods:
            for threads in args.thread_modes:
                task = {**case, "method": method, "length": length, "threads": threads}
                timed[method, threads] = measure(task, args.repeats)
            if args.device != "cpu" and method not in NAIVE:
                task = {**case, "method": method, "length": length, "threads": 0}
                timed[method, args.device] = measure({**task, "device": args.device}, args.repeats)
        first = args.thread_modes[0]  # per core unless only the whole machine is timed
        definition = timed["naive64", first]["tolerance"]
        for (method, threads), m in timed.items():
            record = series.setdefault((method, threads), {"seconds": [], "mismatches": []})
            record["seconds"].append(m["seconds"])
            # another operator is checked against its own first run (threads must not matter)
            own = method in OTHER_OPERATOR
            reference = timed[method, first]["tolerance"] if own else definition
            differ = None if own and threads == first else mismatches(m["tolerance"], reference)
            record["mismatches"].append(differ)
            if threads == args.device:
                continue
            gpu = timed.get((method, args.device))
            rows.append(
                [
                    length if method == methods[0] and threads == first else "",
                    LABELS[method],
                    "1 (per core)" if threads == 1 else f"all {args.threads}",
                    _seconds(m["seconds"]),
                    _ratio(timed["naive64", threads]["seconds"], m["seconds"]),
                    _ratio(timed["naive32", threads]["seconds"], m["seconds"]),
                    f"{m['peak_mb']:.0f}",
                    "-" if differ is None else differ,
                ]
                + (
                    [
                        f"{_seconds(gpu['seconds'])} ("
                        f"{_ratio(timed['naive64', first]['seconds'], gpu['seconds'])}) / "
                        f"{mismatches(gpu['tolerance'], reference)}"
                        if gpu and threads == first
                        else ""
                    ]
                    if args.device != "cpu"
                    else []
                )
            )
    return rows, series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--attention-lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--heads", type=int, default=9, help="attention heads (SmolLM2 has 9)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-length", type=int, default=65536)
    parser.add_argument("--layer-channels", type=int, default=1536, help="Mamba-130M: 1536")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["single", "attention", "scale"],
        choices=["single", "attention", "scale"],
    )
    parser.add_argument(
        "--threads",
        dest="thread_modes",
        nargs="+",
        default=["1", "all"],
        choices=["1", "all"],
        help="per core (1), whole machine (all) or both (default)",
    )
    parser.add_argument("--device", default="cpu", help="also time the fast paths here (cuda)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    if args.device != "cpu" and not torch.device(args.device).type == "cuda":
        parser.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.quick:
        args.lengths, args.attention_lengths, args.heads = [64, 128], [64, 128], 2
        args.repeats, args.long_length, args.layer_channels = 1, 1024, 8
    args.threads = torch.get_num_threads()
    args.thread_modes = [1 if mode == "1" else 0 for mode in args.thread_modes]

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    gpu = f", {torch.cuda.get_device_name(args.device)}" if args.device != "cpu" else ""
    print(
        f"# ESS benchmark: {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}, commit {commit or '?'}{gpu}"
    )
    print(f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    gflops = {threads: matmul_gflops(threads) for threads in (1, None)}
    print(
        f"float64 matmul: {gflops[1]:.1f} GFLOP/s on one thread, {gflops[None]:.1f} on "
        f"{args.threads}\n"
    )
    raw = {"matmul_gflops": {"one_thread": gflops[1], "all_threads": gflops[None]}}
    header = [
        "L",
        "method",
        "threads",
        "seconds (per core: CPU; all: wall)",
        "vs naive f64",
        "vs naive f32",
        "peak MB",
        "tolerance-ESS mismatches vs definition",
    ]
    if args.device != "cpu":
        header.append(
            f"{args.device}: seconds (vs naive f64 in the first threads mode) / mismatches"
        )
    exponents = []

    if "single" in args.sections:
        methods = ["naive64", "naive32", "dense", "ssm16", "ssm64"]
        rows, series = compare({"case": "ssm", "n": 16}, methods, args.lengths, args)
        print("## One channel, random diagonal SSM (N=16), median seconds\n")
        print(table(header, rows))
        raw["single_channel"] = {"lengths": args.lengths, **_jsonable(series)}
        exponents += [
            [
                f"{LABELS[m]}, one channel",
                cost_exponent(args.lengths, series[m, args.thread_modes[0]]["seconds"]),
            ]
            for m in methods
        ]

    if "attention" in args.sections:
        methods = ["naive64", "naive32", "spectra", "counts"]
        case = {"case": "attention", "heads": args.heads}
        rows, series = compare(case, methods, args.attention_lengths, args)
        print(f"\n## Softmax attention, {args.heads} heads, median seconds\n")
        print(table(header, rows))
        raw["attention"] = {"lengths": args.attention_lengths, **_jsonable(series)}
        exponents += [
            [
                f"{LABELS[m]}, attention x{args.heads}",
                cost_exponent(args.attention_lengths, series[m, args.thread_modes[0]]["seconds"]),
            ]
            for m in methods
        ]

    if "scale" in args.sections:
        scale(args, raw)

    if len(exponents) and min(len(args.lengths), len(args.attention_lengths)) > 1:
        mode = "per core" if args.thread_modes[0] == 1 else "whole machine"
        print(f"\n## Fitted cost exponent k (time ~ L^k, {mode})\n")
        print(table(["method", "k"], [[m, f"{k:.2f}"] for m, k in exponents]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


def _jsonable(series: dict) -> dict:
    return {f"{method}/{threads or 'all'}": s for (method, threads), s in series.items()}


def scale(args, raw: dict) -> None:
    """The realisation path at long L (one channel) and on a whole layer, whole machine."""
    long_run = measure(
        {"case": "ssm", "method": "ssm16", "length": args.long_length, "n": 16, "threads": 0}, 1
    )
    layer_length = 128 if args.quick else 2048
    layer = measure(
        {
            "case": "ssm",
            "method": "ssm16",
            "length": layer_length,
            "n": 16,
            "channels": args.layer_channels,
            "threads": 0,
        },
        1,
    )
    state_mb = 2 * args.long_length * 16 * 16 * 8 / 2**20
    print(f"\n## Scale (realisation path, N=16, all {args.threads} threads)\n")
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


if __name__ == "__main__":
    sys.exit(main())
