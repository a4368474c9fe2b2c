"""The ESS of a trained synthetic-task model: every layer's operator (LanguageModel.operators)
on n test sequences, measured by ess.measure.layer_ess at every split (docs/method.md §3.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from ess.measure import TOLERANCES, layer_ess
from ess.metric import tolerance_ess
from ess.paper.training.models import LanguageModel, ModelConfig

# Memory for the operators of one group of sequences in `model_ess` (float32 factors or T).
OPERATOR_GROUP_BYTES = 2**30


def operator_bytes_per_sequence(config: ModelConfig, length: int) -> int:
    """Bytes of one sequence's operators of every layer of a LanguageModel(config)
    (LanguageModel.operators): T (H, L, L) for attention, A, B, C (channels, L, N) for a
    recurrence (S6: d_model channels, the others n_heads), in float32."""
    total = 0
    for kind in config.layer_kinds():
        if kind in ("SA", "SWA"):
            total += config.n_heads * length * length
        else:
            channels = config.d_model if kind == "S6" else config.n_heads
            total += 3 * channels * length * config.state_size
    return 4 * total


@torch.no_grad()
def model_ess(
    model: LanguageModel,
    inputs: Tensor,
    tolerances: Sequence[float] = TOLERANCES,
    relative: bool = True,
    device: str | torch.device = "cpu",
    path: str = "cheaper",
) -> pd.DataFrame:
    """Average ESS of each layer of `model` on inputs: (n, L) token sequences.

    Every split of every sequence, from one spectrum per split, so that tolerance-ESS at every
    tau and entropy-ESS come from one computation (E8). One row per layer and tolerance tau:
    layer, layer_mixer (SA, GLA, ...), tss (mean TSS over split positions: N for a recurrence,
    the mean KV-cache length for attention), tolerance, ess_tolerance and ess_entropy (means
    over sequences, heads/channels and split positions), utilisation (ess_tolerance / tss).
    The forward and the decompositions run on `device`, the sequences in groups whose
    operators fit OPERATOR_GROUP_BYTES; a recurrence takes `path` (`layer_ess`).
    """
    if len(tolerances) == 0:
        raise ValueError("tolerances must name at least one tau")
    model.to(device).eval()
    per_sequence = operator_bytes_per_sequence(model.config, inputs.shape[1])
    group = max(1, OPERATOR_GROUP_BYTES // per_sequence)
    sums: dict[int, dict] = {}
    for start in range(0, len(inputs), group):
        for op in model.operators(inputs[start : start + group].to(device)):
            result, state_size = layer_ess(op, spectrum=True, device=device, path=path)
            layer = sums.setdefault(
                op.layer,
                {"mixer": op.meta["mixer"], "tss": float(state_size.mean()), "count": 0},
            )
            layer["count"] += result.entropy.numel()
            layer["entropy"] = layer.get("entropy", 0.0) + result.entropy.sum().item()
            for tol in tolerances:
                ess = tolerance_ess(result.spectrum, tol, relative).to(torch.float64).sum().item()
                layer[tol] = layer.get(tol, 0.0) + ess
    rows = []
    for index, layer in sums.items():
        for tol in tolerances:
            ess = layer[tol] / layer["count"]
            rows.append(
                {
                    "layer": index,
                    "layer_mixer": layer["mixer"],
                    "tss": layer["tss"],
                    "tolerance": float(tol),
                    "ess_tolerance": ess,
                    "ess_entropy": layer["entropy"] / layer["count"],
                    "utilisation": ess / layer["tss"],
                }
            )
    return pd.DataFrame(rows)
