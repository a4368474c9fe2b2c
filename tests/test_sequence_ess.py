"""ess.paper.e6.sequence_ess: the long ESS table of rule measure_e6_ess, against the definition."""

import numpy as np
import pandas as pd
import pytest
import torch

from ess import hf
from ess.layers import save_operators
from ess.outputs import tau_column
from ess.paper.e6.sequence_ess import capture_channels, operator_bytes, sequence_ess
from ess.paper.training.model_config import ModelConfig
from ess.paper.training.models import LanguageModel

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


def tiny_capture(family: str) -> list:
    """Operators of a 2-layer random transformers model (mamba: 64 channels, d_state 16;
    llama: 4 query heads reading 2 key/value heads of dim 8) on one sequence of LENGTH."""
    import transformers

    torch.manual_seed(0)
    if family == "mamba":
        config = transformers.MambaConfig(
            vocab_size=32, hidden_size=32, state_size=16, num_hidden_layers=2, expand=2
        )
    else:
        config = transformers.LlamaConfig(
            vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 32, (LENGTH,), generator=torch.Generator().manual_seed(1))
    return hf.capture_operators(model, ids)


def table_of(ops, channel_stride: int):
    return sequence_ess(
        ops, [0, 1], POSITIONS, labels={"model": "m"}, channel_stride=channel_stride,
        tolerance=1e-3, tolerances=[1e-2], relative=True, device="cpu",
    )  # fmt: skip


def test_channels_kept_at_capture_give_the_table_of_the_full_capture():
    """capture_channels keeps only the measured mamba channels; the ESS table is the same as
    measuring every channel_stride-th channel of the full capture, heads named alike."""
    full = tiny_capture("mamba")
    kept = capture_channels(full, 8)
    assert [op.tensors["dt"].shape for op in kept] == [(LENGTH, 8)] * 2  # 64 channels / 8
    assert [op.tensors["a"].shape for op in kept] == [(8, 16)] * 2
    expected = table_of(full, 8)
    pd.testing.assert_frame_equal(table_of(kept, 8), expected)
    assert sorted(expected["head"].unique()) == list(range(0, 64, 8))
    pd.testing.assert_frame_equal(
        table_of(kept, 16), expected[expected["head"] % 16 == 0].reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="captured with channel_stride 8"):
        table_of(kept, 12)


@pytest.mark.parametrize(
    ("family", "shape"),
    [
        ("mamba", dict(kind="mamba", n_heads=64, state_size=16, channel_stride=8)),
        ("llama", dict(kind="attention", n_heads=4, n_kv_heads=2, state_size=8)),
    ],
)
def test_operator_bytes_is_the_size_of_the_operator_file(family, shape, tmp_path):
    ops = capture_channels(tiny_capture(family), shape.get("channel_stride", 1))
    save_operators(ops, tmp_path / "ops.safetensors")
    data = (tmp_path / "ops.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 length, JSON header
    assert len(data) - header == operator_bytes(n_layers=2, seq_len=LENGTH, **shape)


def test_operator_bytes_at_paper_shapes():
    """The numbers docs/method.md states (float32 factors, L 2048, one sequence)."""
    falcon = operator_bytes("mamba", 64, 2048, 8192, 16, channel_stride=32)
    assert falcon == 64 * (2048 * 256 + 256 * 16 + 256 + 2 * 2048 * 16) * 4
    assert round(falcon / 1e6) == 152
    llama = operator_bytes("attention", 32, 2048, 32, 128, n_kv_heads=8)
    assert round(llama / 1e9, 2) == 1.34
