"""The ESS of a trained synthetic-task model (docs/method.md §2): per layer, the ESS of every
head/channel at every split position of each of n test sequences, from one spectrum per
position, so that tolerance-ESS at several tau and entropy-ESS come from one computation (E8).
Aggregates are means over sequences, heads/channels and positions ("average ESS").
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from ess.metric import (
    EssResult,
    effective_state_size,
    effective_state_size_ssm,
    tolerance_ess,
)
from ess.models import LanguageModel

TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)



def operator_spectra(op: dict) -> tuple[EssResult, Tensor]:
    """Spectra of every H_i of one layer's operator (`LanguageModel.operators` convention).

    Attention ("T": (b, H, L, L)) goes through the dense path (its eigenvalue route: every tau
    of synthetic.ess.tolerances and entropy-ESS come from one spectrum), recurrences ("A", "B",
    "C": (b, H, L, N)) through the realisation path; S6's skip D only touches T's diagonal,
    which no H_i contains. Returns the EssResult with spectrum (b, H, P, R) and the TSS at each
    split position: (P,) float64.
    """
    if "T" in op:
        result = effective_state_size(op["T"], spectrum=True)
        state_size = op["tss"][result.positions].to(torch.float64)
    else:
        result = effective_state_size_ssm(op["A"], op["B"], op["C"], spectrum=True)
        state_size = torch.full((len(result.positions),), float(op["tss"]), dtype=torch.float64)
    return result, state_size


@torch.no_grad()
def model_ess(
    model: LanguageModel,
    inputs: Tensor,
    tolerances: Sequence[float] = TOLERANCES,
    relative: bool = True,
) -> pd.DataFrame:
    """Average ESS of each layer of `model` on inputs: (n, L) token sequences.

    One row per layer and tolerance tau: layer, layer_mixer (SA, GLA, ...), tss (mean TSS over
    split positions: N for a recurrence, the mean KV-cache length for attention), tolerance,
    ess_tolerance and
    ess_entropy (means over sequences, heads/channels and split positions), utilisation
    (ess_tolerance / tss).
    """
    if len(tolerances) == 0:
        raise ValueError("tolerances must name at least one tau")
    model.eval()
    rows = []
    for op in model.operators(inputs):
        result, state_size = operator_spectra(op)
        for tol in tolerances:
            ess = tolerance_ess(result.spectrum, tol, relative).to(torch.float64).mean().item()
            rows.append(
                {
                    "layer": op["layer"],
                    "layer_mixer": op["mixer"],
                    "tss": state_size.mean().item(),
                    "tolerance": float(tol),
                    "ess_tolerance": ess,
                    "ess_entropy": result.entropy.mean().item(),
                    "utilisation": ess / state_size.mean().item(),
                }
            )
    return pd.DataFrame(rows)
