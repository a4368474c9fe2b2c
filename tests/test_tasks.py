"""ess.paper.training.tasks: the generators' invariants, seeding and argument checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ess.paper.training.tasks import (
    IGNORE,
    TaskConfig,
    compression,
    load_split,
    make_split,
    mqar,
    save_split,
    selective_copying,
)


def kv_table(row: torch.Tensor, num_kv_pairs: int) -> dict[int, int]:
    """{key: value} from the kv pairs at the start of one MQAR example."""
    keys, values = row[0 : 2 * num_kv_pairs : 2], row[1 : 2 * num_kv_pairs : 2]
    return dict(zip(keys.tolist(), values.tolist(), strict=True))


@settings(max_examples=40, deadline=None)
@given(
    half_vocab=st.integers(3, 40),
    half_len=st.integers(2, 40),
    num_kv_pairs=st.integers(1, 10),
    seed=st.integers(0, 2**31),
    filler=st.sampled_from(["any", "values", "zero"]),
)
def test_mqar_answers_are_the_values_paired_with_the_queried_keys(
    half_vocab, half_len, num_kv_pairs, seed, filler
):
    vocab, length = 2 * half_vocab, 2 * half_len
    if num_kv_pairs > half_vocab - 1 or 4 * num_kv_pairs > length:
        with pytest.raises(ValueError):
            mqar(4, vocab, length, num_kv_pairs, seed, filler=filler)
        return
    inputs, targets = mqar(4, vocab, length, num_kv_pairs, seed, filler=filler)
    assert inputs.shape == targets.shape == (4, length)
    assert inputs.dtype == targets.dtype == torch.long
    for row, target in zip(inputs, targets, strict=True):
        table = kv_table(row, num_kv_pairs)
        keys, values = list(table), list(table.values())
        assert len(table) == num_kv_pairs  # distinct keys
        assert len(set(values)) == num_kv_pairs  # distinct values
        assert all(1 <= k < vocab // 2 for k in keys)
        assert all(vocab // 2 <= v < vocab for v in values)
        answer_positions = (target != IGNORE).nonzero().flatten().tolist()
        assert len(answer_positions) == num_kv_pairs
        assert all(
            p >= 2 * num_kv_pairs and (p - 2 * num_kv_pairs) % 2 == 0 for p in answer_positions
        )
        queried = [row[p].item() for p in answer_positions]
        assert sorted(queried) == sorted(keys)  # every key queried exactly once
        for p in answer_positions:
            assert target[p].item() == table[row[p].item()]
        assert 0 <= row.min() and row.max() < vocab


def test_mqar_filler_values_never_repeats_a_key_outside_the_queries():
    inputs, targets = mqar(50, 64, 64, 4, seed=3, filler="values")
    region = inputs[:, 8:]
    is_query = targets[:, 8:] != IGNORE
    assert (region[~is_query] >= 32).all()


def test_mqar_filler_zero_and_queries_cluster_near_the_kv_pairs():
    inputs, targets = mqar(2000, 64, 128, 4, seed=0, filler="zero")
    is_query = targets != IGNORE
    assert (inputs[:, 8:][~is_query[:, 8:]] == 0).all()
    first_half = is_query[:, 8:68].sum()
    assert first_half > is_query[:, 68:].sum()  # power law: more queries early


def test_mqar_same_seed_same_data_and_different_seed_different_data():
    a = mqar(16, 64, 64, 4, seed=7)
    b = mqar(16, 64, 64, 4, seed=7)
    c = mqar(16, 64, 64, 4, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 63}, "even seq_len.*63"),
        ({"vocab_size": 63}, "even vocab_size.*63"),
        ({"vocab_size": 8, "num_kv_pairs": 4}, "vocab_size=8 too small for num_kv_pairs=4"),
        ({"seq_len": 12, "num_kv_pairs": 4}, "seq_len=12 too short for num_kv_pairs=4"),
        ({"num_kv_pairs": 0}, "num_kv_pairs must be >= 1, got 0"),
        ({"num_examples": 0}, "num_examples must be >= 1, got 0"),
        ({"power_a": -1.0}, "power_a must be > 0, got -1.0"),
        ({"filler": "noise"}, "filler must be one of .*'noise'"),
    ],
)
def test_mqar_bad_arguments_name_the_bad_value(kwargs, message):
    args = {"num_examples": 2, "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4, "seed": 0}
    with pytest.raises(ValueError, match=message):
        mqar(**{**args, **kwargs})


@settings(max_examples=30, deadline=None)
@given(
    vocab=st.integers(4, 40),
    length=st.integers(2, 60),
    k=st.integers(1, 20),
    seed=st.integers(0, 2**31),
)
def test_selective_copying_outputs_the_content_tokens_in_order(vocab, length, k, seed):
    if 2 * k > length:
        with pytest.raises(ValueError, match=f"seq_len={length} too short"):
            selective_copying(3, vocab, length, k, seed)
        return
    inputs, targets = selective_copying(3, vocab, length, k, seed)
    blank, copy = vocab - 2, vocab - 1
    assert inputs.shape == targets.shape == (3, length)
    for row, target in zip(inputs, targets, strict=True):
        region = row[: length - k]
        content = region[region != blank]
        assert len(content) == k
        assert (content < vocab - 2).all()
        assert row[length - k].item() == copy
        assert (target[: length - k] == IGNORE).all()
        assert torch.equal(target[length - k :], content)  # the answers: content, in order
        assert torch.equal(row[length - k + 1 :], content[:-1])  # teacher forcing


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(3, 40), half=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_compression_reproduces_the_sequence_after_the_compression_token(vocab, half, seed):
    length = 2 * half
    inputs, targets = compression(3, vocab, length, seed)
    assert inputs.shape == targets.shape == (3, length)
    assert (inputs[:, :half] < vocab - 1).all()
    assert (inputs[:, half] == vocab - 1).all()
    assert (targets[:, :half] == IGNORE).all()
    assert torch.equal(targets[:, half:], inputs[:, :half])
    assert torch.equal(inputs[:, half + 1 :], inputs[:, : half - 1])


def test_copying_and_compression_are_seeded():
    assert torch.equal(selective_copying(4, 16, 32, 4, 1)[0], selective_copying(4, 16, 32, 4, 1)[0])
    assert not torch.equal(
        selective_copying(4, 16, 32, 4, 1)[0], selective_copying(4, 16, 32, 4, 2)[0]
    )
    assert torch.equal(compression(4, 16, 32, 1)[0], compression(4, 16, 32, 1)[0])
    assert not torch.equal(compression(4, 16, 32, 1)[0], compression(4, 16, 32, 2)[0])


def test_copying_and_compression_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens_to_copy must be >= 1, got 0"):
        selective_copying(2, 16, 32, 0, 0)
    with pytest.raises(ValueError, match="vocab_size must be >= 3, got 2"):
        selective_copying(2, 2, 32, 4, 0)
    with pytest.raises(ValueError, match="even seq_len.*31"):
        compression(2, 16, 31, 0)


def test_task_config_splits_come_from_distinct_seeds():
    for name in ("mqar", "selective_copying", "compression"):
        config = TaskConfig(name=name, n_train=8, n_test=5)
        train_inputs, _ = make_split(config, "train")
        test_inputs, _ = make_split(config, "test")
        assert train_inputs.shape == (8, 64) and test_inputs.shape == (5, 64)
        assert not torch.equal(train_inputs[:5], test_inputs)
        assert torch.equal(make_split(config, "train")[0], train_inputs)


def test_task_config_rejects_bad_values():
    with pytest.raises(ValueError, match="train_seed and test_seed must differ.*3"):
        TaskConfig(train_seed=3, test_seed=3)
    with pytest.raises(ValueError, match="unknown task name 'recall'"):
        TaskConfig(name="recall")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        make_split(TaskConfig(), "val")


def test_make_split_passes_the_filler_through():
    inputs, _ = make_split(TaskConfig(filler="zero", num_kv_pairs=2, n_train=4), "train")
    assert (inputs[:, 4:] == 0).float().mean() > 0.9  # queries only between the zeros


def test_cached_split_round_trips_and_refuses_another_task(tmp_path):
    config = TaskConfig(name="selective_copying", n_train=6, n_test=3)
    save_split(config, "test", tmp_path / "test.safetensors")
    inputs, targets = load_split(tmp_path / "test.safetensors", config)
    expected = make_split(config, "test")
    assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    with pytest.raises(ValueError, match="not the requested"):
        load_split(tmp_path / "test.safetensors", TaskConfig(name="compression"))
