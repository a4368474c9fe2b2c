"""ESS from bf16 against ESS from float32 capture of the same model (issue 24, item 6).

    python benchmarks/bf16_vs_fp32.py --model-dir results/models/smollm2/hf --layers 0 3 6
    python benchmarks/bf16_vs_fp32.py --standins          # the six paper families, tiny random

The model's float32 weights are loaded twice (ess.paper.e6.fetch.load_causal_lm): in float32, and
cast to bfloat16 (what `dtype: bfloat16` in a config does: bf16 weights, bf16 forward pass; the
captured factors are stored in float32 either way). Each is captured on the same E6 sequence
(Jargon File passages joined by eos, ess.paper.e6.delimiters.build_delimited_sequence) and measured
by ess.paper.e6.sequence_ess.mixer_ess at the splits 1, 1 + stride, ...; the rows are compared head
by head and split by split. Prints one markdown row per model: mean tolerance-ESS (tau 1e-3,
relative) in float32 and bf16, the mean of bf16 - float32, the share of rows whose ESS differs, the
largest difference, and the relative difference of the mean entropy-ESS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def ess_table(model_dir: Path, dtype: torch.dtype, ids: torch.Tensor, layers, stride: int):
    """The ESS rows (layer, head, position, ess_tolerance, ess_entropy) of `layers`."""
    from ess.hf import capture_operators
    from ess.paper.e6.fetch import load_causal_lm
    from ess.paper.e6.sequence_ess import mixer_ess

    model, _ = load_causal_lm(model_dir, dtype)
    ops = capture_operators(model, ids)
    positions = np.arange(1, ids.numel(), stride)
    frames = [
        mixer_ess(op, 0, positions, 1, 1e-3, [1e-3], True, "cpu")
        for op in ops
        if op.layer in layers
    ]
    return pd.concat(frames, ignore_index=True)


def compare(name: str, model_dir: Path, n_tokens: int, layers, stride: int) -> dict:
    from transformers import AutoTokenizer

    from ess.paper.e6.delimiters import build_delimited_sequence
    from ess.paper.e6.text import load_passages

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    passages = load_passages(120, 200, seed=0, split="eval")
    ids = build_delimited_sequence(tokenizer, passages, "eos", n_tokens, seed=0).input_ids
    tables = {
        dtype: ess_table(model_dir, dtype, ids, layers, stride)
        for dtype in (torch.float32, torch.bfloat16)
    }
    keys = ["layer", "head", "position"]
    both = tables[torch.float32].merge(tables[torch.bfloat16], on=keys, suffixes=("_f32", "_bf16"))
    diff = both["ess_tolerance_bf16"] - both["ess_tolerance_f32"]
    entropy = both["ess_entropy_bf16"].mean() / both["ess_entropy_f32"].mean() - 1
    return {
        "model": name,
        "L": n_tokens,
        "layers": len(set(both["layer"])),
        "rows": len(both),
        "mean ESS f32": round(both["ess_tolerance_f32"].mean(), 2),
        "mean ESS bf16": round(both["ess_tolerance_bf16"].mean(), 2),
        "mean bf16 - f32": round(diff.mean(), 3),
        "rows differing": f"{(diff != 0).mean():.1%}",
        "max abs diff": int(diff.abs().max()),
        "entropy-ESS mean, rel. diff": f"{entropy:+.2%}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a transformers directory (float32)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="default: all")
    parser.add_argument("--n-tokens", type=int, default=512)
    parser.add_argument("--position-stride", type=int, default=1)
    parser.add_argument("--standins", action="store_true", help="the six paper families")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.model_dir:
        layers = args.layers or range(1000)
        rows.append(
            compare(
                args.model_dir.parent.name,
                args.model_dir,
                args.n_tokens,
                layers,
                args.position_stride,
            )
        )
    if args.standins:
        sys.path.insert(0, str(ROOT / "tests"))
        from standins import FAMILIES, build_standin, standin_tokenizer

        tokenizer = standin_tokenizer()
        with tempfile.TemporaryDirectory() as work:
            for family in FAMILIES:
                standin = build_standin(
                    family, Path(work, family), torch.float32, tokenizer=tokenizer
                )
                rows.append(
                    compare(
                        f"{family} stand-in", standin.directory, args.n_tokens, range(2),
                        args.position_stride,
                    )
                )  # fmt: skip
                print(rows[-1], file=sys.stderr, flush=True)
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")


if __name__ == "__main__":
    main()
