"""What a job of the workflow costs, from its shape (docs/cost-model.md).

Three kinds of work carry almost all of the cost, and each is measured on this machine at
paper.yaml's shapes, one thread, by benchmarks/cost_calibration.py (src/ess/paper/e6/data/
cost_calibration.csv):

- a training step of the synthetic model on one sequence: peak memory of its activations,
  gradients and optimiser state, and seconds, per mixer, in L and N;
- the dense path on one operator (attention): seconds per evaluated split and peak memory, in L;
- the realisation path on one channel: seconds and peak memory, in L and N.

Everything else is arithmetic on shapes: batch and micro-batch, number of sequences, layers,
heads and channels, splits evaluated, bytes of data and weights. Each law is a sum of the terms
the algorithm predicts (`TERMS`) with non-negative coefficients fitted to the measurements
(`fit_law`); outside the measured range it is an extrapolation, and
`benchmarks/cost_calibration.py --check` compares held-out probes with it.

GPU figures cannot be measured here (no GPU). They are estimates, derived from the measured CPU
time of the same work: gpu_seconds = cpu_seconds * CPU_CORE_GFLOPS / (GPU_GFLOPS * efficiency),
where CPU_CORE_GFLOPS is this machine's measured single-core float32 matmul rate (the `matmul`
row of the calibration), GPU_GFLOPS an H100's peak (67 TFLOP/s float32, 34 TFLOP/s float64,
NVIDIA's datasheet), and the efficiency an assumption stated below. GPU memory is the same
tensors as host memory on the CPU, plus the CUDA context.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

MB = 2**20

# H100 SXM peak rates (NVIDIA datasheet), GFLOP/s, without tensor cores.
GPU_GFLOPS_FLOAT32 = 67_000.0
GPU_GFLOPS_FLOAT64 = 34_000.0
# Assumed fractions of that peak. Training a 2-layer, d_model 256 model is a chain of small
# matmuls and elementwise scans: 10% of peak. The ESS paths are per-split eigenvalue problems
# and QR steps of n <= L/2 in float64, which GPUs run far below peak: 2%.
GPU_EFFICIENCY_TRAIN = 0.10
GPU_EFFICIENCY_ESS = 0.02
CUDA_CONTEXT_MB = 600.0
# A job's fixed cost: process start, imports, CUDA initialisation, reading its inputs.
JOB_START_SECONDS = 30.0
# Host memory of a job's fixed part: the rule's Python process with torch imported (about
# 0.7 GB) and, on a cluster, Snakemake's own process inside the job, which imports torch too
# when it evaluates the job's resources. SLURM counts both: the rehearsal's measure job at
# L 1024, N 1024 was killed at 1.29 GB against a 1.19 GB request while its script alone
# peaked at 0.63 GB (benchmarks/rehearsal.md).
PROCESS_MB = 1400.0
# ... with transformers and a model's code imported as well: the rehearsal's capture of a tiny
# stand-in at L 2048 peaked at 1.1 GB (killed against a 1.08 GB request)
TRANSFORMERS_PROCESS_MB = 1600.0


@dataclass(frozen=True)
class Cost:
    """The estimated cost of one job.

    host_mb: peak host memory; gpu_mb: peak GPU memory (0 for a CPU job); cpu_seconds: time on
    one CPU core; gpu_seconds: time on one GPU (an estimate, module docstring; 0 for work that
    has no GPU route); disk_mb: bytes written; device: where the job runs ("cpu" or "cuda").
    """

    host_mb: float
    gpu_mb: float
    cpu_seconds: float
    gpu_seconds: float
    disk_mb: float
    device: str = "cpu"

    def seconds(self, threads: int = 1) -> float:
        """Wall seconds where the job runs: on its GPU, or on `threads` CPU cores."""
        if self.device == "cuda":
            return self.gpu_seconds
        return self.cpu_seconds / max(1, threads)

    def __add__(self, other: Cost) -> Cost:
        """Two parts of one job run one after the other: times and disk add, peaks do not."""
        return Cost(
            host_mb=max(self.host_mb, other.host_mb),
            gpu_mb=max(self.gpu_mb, other.gpu_mb),
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            gpu_seconds=self.gpu_seconds + other.gpu_seconds,
            disk_mb=self.disk_mb + other.disk_mb,
            device=self.device if self.device == other.device else "cuda",
        )


# ---------------------------------------------------------------------------------------------
# Calibration: laws fitted to benchmarks/cost_calibration.py's measurements


# Each law is y = sum_k c_k f_k(L, N, B) over named terms f_k: the terms the work's algorithm
# predicts (a scan stores O(L N) per sequence, attention O(L^2); the dense path's eigenvalue
# problems cost O(n^3) per split with n <= L/2; the realisation path's QR steps O(N^3) per
# step), B the batch (training) or the operators and splits (ESS), and "1" the fixed part that
# does not grow with B. Coefficients: non-negative least squares on the measurements.
TERMS = {
    "1": lambda L, N, B: 1.0,
    "B": lambda L, N, B: B,
    "B*L": lambda L, N, B: B * L,
    "B*L^2": lambda L, N, B: B * L**2,
    "B*L^3": lambda L, N, B: B * L**3,
    "B*L*N": lambda L, N, B: B * L * N,
    "B*L*N^2": lambda L, N, B: B * L * N**2,
    "B*L*N^3": lambda L, N, B: B * L * N**3,
}


@dataclass(frozen=True)
class Law:
    """y = sum_k coefficients[k] * TERMS[terms[k]](L, N, B)."""

    terms: tuple[str, ...]
    coefficients: tuple[float, ...]

    def __call__(self, seq_len: float, state_size: float = 0.0, batch: float = 1.0) -> float:
        return sum(
            c * TERMS[t](seq_len, state_size, batch)
            for t, c in zip(self.terms, self.coefficients, strict=True)
        )


def fit_law(terms: tuple[str, ...], points: list[tuple[float, float, float]], y) -> Law:
    """Non-negative least squares of y on the terms at points (L, N, B), each row weighted by
    1/y so that the fit is good in relative terms across sizes orders of magnitude apart."""
    from scipy.optimize import nnls

    rows = np.array([[TERMS[t](*point) for t in terms] for point in points])
    y = np.asarray(list(y), dtype=float)
    scale = rows.max(axis=0)
    scale[scale == 0] = 1.0
    coefficients, _ = nnls(rows / scale / y[:, None], np.ones_like(y))
    return Law(terms, tuple(float(c) for c in coefficients / scale))


@functools.cache
def calibration_rows() -> tuple[dict, ...]:
    """The measurements of src/ess/paper/data/cost_calibration.csv, numbers parsed."""
    text = files("ess.paper").joinpath("data", "cost_calibration.csv").read_text()
    rows = []
    for row in csv.DictReader(text.splitlines()):
        rows.append({k: v if k in ("kind", "mixer") else float(v) for k, v in row.items()})
    return tuple(rows)


def _rows(kind: str, mixer: str = "") -> list[dict]:
    rows = [r for r in calibration_rows() if r["kind"] == kind and r["mixer"] == mixer]
    if not rows:
        raise ValueError(f"the cost calibration has no {kind!r} rows for mixer {mixer!r}")
    return rows


# Mixers not probed, costed as the mixer whose computation they share: GLA-S6 is GLA's scan
# with S6's featurisation of the gate; SWA is attention with a band mask.
COSTED_AS = {"GLA-S6": "GLA", "SWA": "SA"}


@functools.cache
def train_laws(mixer: str) -> tuple[Law, Law]:
    """(activation MB, seconds) of one training step of the calibration model (vocab 8192,
    d_model 256, 2 layers) on B sequences, in L, N and B. The model's own state (weights,
    gradients, AdamW's two moments) is taken out of the peak: `model_state_mb` adds it back
    for the model at hand."""
    mixer = COSTED_AS.get(mixer, mixer)
    rows = _rows("train", mixer)
    state_mb = [
        model_state_mb(mixer, int(r["vocab_size"]), int(r["d_model"]), int(r["n_layers"]),
                       int(r["state_size"]))
        for r in rows
    ]  # fmt: skip
    points = [(r["seq_len"], r["state_size"], r["batch"]) for r in rows]
    activations = [max(r["peak_mb"] - s, 1.0) for r, s in zip(rows, state_mb, strict=True)]
    seconds = [r["seconds"] for r in rows]
    return (
        fit_law(("1", "B*L", "B*L*N", "B*L^2"), points, activations),
        fit_law(("1", "B*L", "B*L*N", "B*L^2"), points, seconds),
    )


@functools.cache
def dense_laws() -> tuple[Law, Law]:
    """(peak MB, seconds) of the dense path in L: memory with B = operators held, time with
    B = operators x splits evaluated; both metrics with the spectrum."""
    rows = _rows("dense")
    splits = [len(range(1, int(r["seq_len"]), int(r["position_stride"]))) for r in rows]
    held = [(r["seq_len"], 0.0, r["operators"]) for r in rows]
    work = [(r["seq_len"], 0.0, r["operators"] * s) for r, s in zip(rows, splits, strict=True)]
    return (
        fit_law(("1", "B*L^2"), held, [r["peak_mb"] for r in rows]),
        fit_law(("1", "B", "B*L^2", "B*L^3"), work, [r["seconds"] for r in rows]),
    )


@functools.cache
def realisation_laws() -> tuple[Law, Law]:
    """(peak MB, seconds) of the realisation path on B channels in L and N, every split (the
    recursions cover all L whatever the splits evaluated)."""
    rows = _rows("realisation")
    points = [(r["seq_len"], r["state_size"], r["operators"]) for r in rows]
    return (
        fit_law(("1", "B*L*N^2"), points, [r["peak_mb"] for r in rows]),
        fit_law(("1", "B*L*N", "B*L*N^2", "B*L*N^3"), points, [r["seconds"] for r in rows]),
    )


@functools.cache
def cpu_core_gflops() -> float:
    """This machine's single-core float32 matmul rate (the calibration's `matmul` row: one
    n x n by n x n product, 2 n^3 flops)."""
    row = _rows("matmul")[0]
    return 2 * row["seq_len"] ** 3 / row["seconds"] / 1e9


def gpu_seconds(cpu_seconds: float, float64: bool, efficiency: float) -> float:
    """The GPU estimate of work measured at cpu_seconds on one core (module docstring)."""
    peak = GPU_GFLOPS_FLOAT64 if float64 else GPU_GFLOPS_FLOAT32
    return cpu_seconds * cpu_core_gflops() / (peak * efficiency)


# ---------------------------------------------------------------------------------------------
# Shapes


@functools.cache
def model_parameters(
    mixer: str, vocab_size: int, d_model: int, n_layers: int, state_size: int, **model
) -> int:
    """Parameters of ess.paper.training.models.LanguageModel at this shape, built on torch's meta
    device (no memory): weights are tied, so the embedding counts once."""
    import torch

    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.models import LanguageModel

    config = ModelConfig(
        vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, layers=mixer,
        state_size=state_size, **{"mlp_ratio": 0, **model},
    )  # fmt: skip
    with torch.device("meta"):
        return sum(p.numel() for p in LanguageModel(config).parameters())


def model_state_mb(mixer: str, vocab_size: int, d_model: int, n_layers: int, state_size: int):
    """Weights, gradients and AdamW's two moments in float32: 16 bytes per parameter."""
    return 16 * model_parameters(mixer, vocab_size, d_model, n_layers, state_size) / MB


def dense_cost(seq_len: int, operators: int, splits: int, device: str = "cpu") -> Cost:
    """The dense path on `operators` L x L operators at `splits` split positions."""
    peak_law, seconds_law = dense_laws()
    cpu = seconds_law(seq_len, 0, operators * splits)
    peak = peak_law(seq_len, 0, operators)
    return _ess_cost(cpu, peak, device)


def realisation_cost(seq_len: int, state_size: int, channels: int, device: str = "cpu") -> Cost:
    """The realisation path on `channels` recurrences of state N over L steps. The path splits
    the batch so that its stored square-root Gramians stay under 2 GB
    (ess.realisation_path.SSM_FACTOR_BUDGET_BYTES): the peak is capped there."""
    peak_law, seconds_law = realisation_laws()
    cpu = seconds_law(seq_len, state_size, channels)
    peak = min(peak_law(seq_len, state_size, channels), 2.5 * 1024)
    return _ess_cost(cpu, peak, device)


def _ess_cost(cpu: float, peak: float, device: str) -> Cost:
    on_gpu = device == "cuda"
    return Cost(
        host_mb=PROCESS_MB + (0 if on_gpu else peak),
        gpu_mb=CUDA_CONTEXT_MB + peak if on_gpu else 0.0,
        cpu_seconds=cpu,
        gpu_seconds=gpu_seconds(cpu, True, GPU_EFFICIENCY_ESS) if on_gpu else 0.0,
        disk_mb=0.0,
        device=device,
    )


def split_bytes(n_examples: int, seq_len: int) -> float:
    """A task split on disk and in memory: inputs and targets, int64, (n, L) each."""
    return 2 * 8 * n_examples * seq_len


def train_step_cost(
    mixers: Iterable[str], seq_len: int, state_size: int, d_model: int, sequences: int
) -> tuple[float, float]:
    """(activation MB, CPU seconds) of one step on `sequences` sequences. A hybrid pattern
    costs the mean of its mixers per layer; d_model scales both linearly from the calibration's
    256 (the width of every activation and of the step's matmuls)."""
    mixers = list(mixers)
    activations = seconds = 0.0
    for mixer in mixers:
        act_law, seconds_law = train_laws(mixer)
        activations += act_law(seq_len, state_size, sequences) / len(mixers)
        seconds += seconds_law(seq_len, state_size, sequences) / len(mixers)
    width = d_model / 256
    return activations * width, seconds * width
