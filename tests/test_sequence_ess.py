"""ess.sequence_ess: the long ESS table of rule measure_e6_ess, against the definition."""

import numpy as np
import torch

from ess import hf
from ess.models import LanguageModel, ModelConfig
from ess.modulation import tau_column
from ess.sequence_ess import sequence_ess

LENGTH = 12
POSITIONS = np.array([1, 3, 6, 10])


def captured_operators():
    """A 2-layer LM (SA, then GLA) with 4 heads of state size 3, captured on one sequence."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=32, d_model=16, n_layers=2, layers="SA,GLA", n_heads=4, state_size=3
    )
    ids = torch.randint(0, 32, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    return hf.capture_operators(LanguageModel(config).eval(), ids)


def definition(T: torch.Tensor, position: int, tau: float) -> int:
    """Tolerance-ESS (relative) of T at one split: singular values of T[i:, :i] above tau s_1."""
    s = torch.linalg.svdvals(T.double()[position:, :position])
    return int((s > tau * s[0]).sum())


def test_the_table_has_one_row_per_head_and_split_with_esses_of_the_definition():
    ops = captured_operators()
    table = sequence_ess(
        ops,
        [1, 0],  # the order of the rows
        POSITIONS,
        labels={"model": "m", "task": "eos", "seed": 3},
        channel_stride=2,
        tolerance=1e-3,
        tolerances=[1e-1, 1e-3],
        relative=True,
        device="cpu",
    )
    assert list(table.columns) == [
        "model", "task", "seed", "layer", "mixer", "kind", "head", "position",
        "ess_tolerance", "ess_entropy", "tss", tau_column(1e-1), tau_column(1e-3),
    ]  # fmt: skip
    assert table["layer"].tolist() == [1] * 8 + [0] * 8
    constant = table[["model", "task", "seed", "mixer"]].drop_duplicates()
    assert constant.to_numpy().tolist() == [["m", "eos", 3, 0]]
    assert table["head"].tolist() == ([0] * 4 + [2] * 4) * 2  # every second head
    assert table["position"].tolist() == POSITIONS.tolist() * 4
    for op in ops:
        rows = table[table["layer"] == op.layer]
        T = op.matrix()  # (heads, L, L)
        for head, position, ess, coarse in rows[
            ["head", "position", "ess_tolerance", tau_column(1e-1)]
        ].itertuples(index=False):
            assert ess == definition(T[head], position, 1e-3), (op.layer, head, position)
            assert coarse == definition(T[head], position, 1e-1), (op.layer, head, position)
        # tss: the KV cache (split i holds i keys) for attention, the state size for GLA
        expected = rows["position"] if op.kind == "attention" else np.full(len(rows), 3)
        np.testing.assert_array_equal(rows["tss"], expected)
    np.testing.assert_array_equal(table["ess_tolerance"], table[tau_column(1e-3)])
    assert (table["ess_entropy"] > 0).all()
