"""What evaluating every split of E6's drop windows costs (issue 28): the splits and the CPU
time of rule measure_e6_ess's ESS on one captured sequence, at the splits E6 evaluates now
(ess.paper.e6.boundaries.trace_positions: the windows whole, the profile offsets, the coarse stride)
against the splits it evaluated before (the offsets and the stride only), in one process on
one thread, each timed after the other on the same operators.

Needs the operators of a run of the default (results/operators/<model>/<task>/seed<s>.safetensors
and its sequence file):

    .venv/bin/python benchmarks/e6_window_cost.py --model smollm2 --task blank_line --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ess.layers import load_operators
from ess.paper.e6.boundaries import offset_mask, offset_splits, trace_positions
from ess.paper.e6.sequence_ess import sequence_ess
from ess.paper.e6.sequences import read_sequence


def former_positions(sequence, offsets, stride) -> np.ndarray:
    """The splits E6 evaluated before issue 28: the counted offsets and the coarse stride."""
    bounds, length = sequence.boundaries, sequence.length
    counted = offset_mask(bounds, sequence.passage_spans, offsets, length)
    near = offset_splits(bounds, offsets)[counted]
    return np.union1d(near, np.arange(1, sequence.length, stride)).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="removed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--results", default="results")
    parser.add_argument("--layers", type=int, nargs="*", help="default: the model's config")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    e6, ess = config["e6"], config["ess"]
    delimiters = e6["delimiters"]
    delimiter = args.task if args.task in delimiters else delimiters[0]
    condition = "delimited" if args.task in delimiters else args.task
    root = Path(args.results)
    sequence = read_sequence(
        root / "sequences" / args.model / delimiter / f"seed{args.seed}.json", condition
    )
    layers = args.layers or config["models"][args.model]["layers"]
    ops = load_operators(
        root / "operators" / args.model / args.task / f"seed{args.seed}.safetensors", layers
    )
    layers = sorted({op.layer for op in ops})
    torch.set_num_threads(1)
    offsets, stride = e6["profile"]["offsets"], e6["position_stride"]
    designs = {
        "offsets + stride (before)": former_positions(sequence, offsets, stride),
        "windows whole + offsets + stride (now)": trace_positions(
            sequence.boundaries,
            sequence.passage_spans,
            sequence.length,
            offsets,
            stride,
            e6["drop"]["before"],
            e6["drop"]["after"],
        ),
    }
    n_boundaries = len(sequence.boundaries)
    labels = f"{args.model}, {args.task}, seed {args.seed}"
    print(f"{labels}: {n_boundaries} boundaries, layers {layers}")
    print("| splits evaluated | splits | per boundary | CPU seconds (1 thread) |")
    print("|---|---|---|---|")
    for name, positions in designs.items():
        started = time.process_time()
        sequence_ess(
            ops,
            layers,
            positions,
            labels={"model": args.model},
            channel_stride=config["models"][args.model].get("channel_stride", 1),
            tolerance=ess["tolerance"],
            tolerances=e6["tolerances"],
            relative=ess["relative"],
            device="cpu",
        )
        seconds = time.process_time() - started
        per_boundary = len(positions) / n_boundaries
        print(f"| {name} | {len(positions)} | {per_boundary:.1f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
