"""Seeded synthetic tasks: MQAR, selective copying, compression.

Every generator is a pure function of its arguments: the same arguments and seed give the same
tensors, every random draw (keys, values, query positions, filler tokens) comes from one
`numpy.random.Generator` seeded with `seed`. Each returns

    inputs:  LongTensor (n, L)   token ids fed to the model
    targets: LongTensor (n, L)   the token to predict at each position, IGNORE (-100) where
                                 nothing is scored ("answer positions" are the others)

Targets are already shifted: targets[:, t] is what the model must output after reading
inputs[:, : t + 1]. Train and test splits come from distinct seeds (`TaskConfig`).

Definitions (ours where the reference codebases leave a choice; see each function):

- MQAR follows Zoology's `multiquery_ar`.
- Selective copying and compression follow MAD-lab's task descriptions, written as plain
  next-token prediction with teacher forcing (MAD's compression uses an extra decoder; ours
  reproduces the sequence after a compression token instead).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

IGNORE = -100  # target value at positions that are not scored (torch's cross-entropy default)

TASKS = ("mqar", "selective_copying", "compression")
FILLERS = ("any", "values", "zero")  # MQAR filler tokens, see `mqar`


def _check_common(num_examples: int, vocab_size: int, seq_len: int) -> None:
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")


def _rows_without_replacement(
    rng: np.random.Generator,
    num_rows: int,
    n: int,
    k: int,
    log_weights: np.ndarray | None = None,
) -> np.ndarray:
    """(num_rows, k) int64: each row k distinct indices from range(n).

    Gumbel-top-k: the k largest of log_weights + Gumbel noise are a draw of k indices one by one
    without replacement with probabilities proportional to exp(log_weights) (uniform if None),
    the distribution of `numpy.random.choice(n, k, replace=False, p=...)`, vectorised over rows.
    """
    scores = rng.gumbel(size=(num_rows, n))
    if log_weights is not None:
        scores = scores + log_weights[None, :]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def mqar(
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    seed: int,
    power_a: float = 0.01,
    filler: str = "any",
) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall (Zoology's scheme).

    Layout of one example (length L = seq_len, D = num_kv_pairs):

        k_1 v_1 k_2 v_2 ... k_D v_D | filler ... k_{pi(1)} filler ... k_{pi(2)} ...

    - keys are distinct tokens from [1, V/2), values distinct tokens from [V/2, V) (V = vocab);
    - the 2D kv tokens come first; the remaining L - 2D positions hold the D queries, each a key
      placed at an even offset 2g of the query region, the gaps g drawn without replacement from
      range((L - 2D) / 2) with P(g) proportional to a (g + 1)^(a - 1) (power law, a = power_a:
      queries cluster near the kv pairs), so query order is a random permutation of the keys;
    - targets are IGNORE except at each query position, where the target is the value paired
      with the queried key (the model must emit it after reading the key);
    - the other query-region positions are filler, drawn from the same seed: filler="any" draws
      uniform tokens from [0, V) (Zoology's `random_non_queries`); filler="values" draws from
      the value range [V/2, V), so that no filler token is a key (at small V, "any" puts about
      (L - 3D) / V spurious copies of every key after the kv pairs, each followed by a random
      token: a model that stores "the token after key k" then recalls the wrong one);
      filler="zero" is the constant 0 (Zoology's older padding).

    Unlike Zoology we do not require V > L; we require the keys and values to fit their ranges.

    Returns inputs, targets: LongTensor (num_examples, seq_len).
    """
    _check_common(num_examples, vocab_size, seq_len)
    if seq_len % 2 != 0:
        raise ValueError(f"MQAR needs an even seq_len, got seq_len={seq_len}")
    if vocab_size % 2 != 0:
        raise ValueError(f"MQAR needs an even vocab_size (keys/values halves), got {vocab_size}")
    if num_kv_pairs < 1:
        raise ValueError(f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(
            f"vocab_size={vocab_size} too small for num_kv_pairs={num_kv_pairs}: keys come from "
            f"[1, {vocab_size // 2}) and must be distinct, need vocab_size >= "
            f"{2 * num_kv_pairs + 2}"
        )
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"seq_len={seq_len} too short for num_kv_pairs={num_kv_pairs}: need room for the "
            f"2*{num_kv_pairs} kv tokens and {num_kv_pairs} queries at even offsets, i.e. "
            f"seq_len >= {4 * num_kv_pairs}"
        )
    if power_a <= 0:
        raise ValueError(f"power_a must be > 0, got {power_a}")
    if filler not in FILLERS:
        raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")

    rng = np.random.default_rng(seed)
    n, d, half = num_examples, num_kv_pairs, vocab_size // 2
    keys = 1 + _rows_without_replacement(rng, n, half - 1, d)  # (n, D) in [1, V/2)
    values = half + _rows_without_replacement(rng, n, vocab_size - half, d)  # (n, D) in [V/2, V)

    context = 2 * d
    space = (seq_len - context) // 2
    gap_log_p = np.log(power_a) + (power_a - 1) * np.log(np.arange(1, space + 1))
    gaps = _rows_without_replacement(rng, n, space, d, gap_log_p)  # (n, D)
    query_pos = context + 2 * gaps  # (n, D) positions of the queried keys

    if filler == "zero":
        inputs = np.zeros((n, seq_len), dtype=np.int64)
    else:
        low = 0 if filler == "any" else half
        inputs = rng.integers(low, vocab_size, size=(n, seq_len))
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    np.put_along_axis(inputs, query_pos, keys, axis=1)

    targets = np.full((n, seq_len), IGNORE, dtype=np.int64)
    np.put_along_axis(targets, query_pos, values, axis=1)
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets)


def selective_copying(
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    num_tokens_to_copy: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Selective copying (MAD-lab), as next-token prediction with teacher forcing.

    Tokens: content from [0, V - 2), BLANK = V - 2 (noise), COPY = V - 1 (delimiter).
    With K = num_tokens_to_copy, the full sequence s has length L + 1:

        s = [ region of L - K tokens: K content tokens at random sorted positions, rest BLANK ]
            [ COPY ] [ the K content tokens in order ]

    inputs = s[:-1], targets = s[1:] with IGNORE except the last K positions: after reading
    COPY (and then the copied tokens so far) the model must output the next content token in
    their order of appearance. Content tokens are drawn uniformly with replacement.

    Returns inputs, targets: LongTensor (num_examples, seq_len).
    """
    _check_common(num_examples, vocab_size, seq_len)
    if num_tokens_to_copy < 1:
        raise ValueError(f"num_tokens_to_copy must be >= 1, got {num_tokens_to_copy}")
    if 2 * num_tokens_to_copy > seq_len:
        raise ValueError(
            f"seq_len={seq_len} too short for num_tokens_to_copy={num_tokens_to_copy}: the "
            f"region before COPY (seq_len - K tokens) must hold the K tokens, need seq_len >= "
            f"{2 * num_tokens_to_copy}"
        )
    rng = np.random.default_rng(seed)
    n, k = num_examples, num_tokens_to_copy
    blank, copy = vocab_size - 2, vocab_size - 1
    region = seq_len - k
    content = rng.integers(0, vocab_size - 2, size=(n, k))
    positions = np.sort(_rows_without_replacement(rng, n, region, k), axis=1)

    full = np.full((n, seq_len + 1), blank, dtype=np.int64)
    np.put_along_axis(full, positions, content, axis=1)
    full[:, region] = copy
    full[:, region + 1 :] = content
    targets = full[:, 1:].copy()
    targets[:, : seq_len - k] = IGNORE
    return torch.from_numpy(full[:, :-1].copy()), torch.from_numpy(targets)


def compression(
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Compression (after MAD-lab): store a whole random sequence, then reproduce it.

    Tokens: content from [0, V - 1), COMPRESS = V - 1. With M = L / 2, the full sequence s has
    length L + 1:

        s = [ M random content tokens x ] [ COMPRESS ] [ x again ]

    inputs = s[:-1], targets = s[1:] with IGNORE except the last M positions (the reproduction
    of x, teacher forced). Unlike selective copying there is no noise: every stored token is
    recalled, so a recurrent model must keep all M tokens in its state across COMPRESS.
    (MAD-lab decodes x from the compression token's embedding with a separate MLP; this
    next-token version keeps one model for all tasks.)

    Returns inputs, targets: LongTensor (num_examples, seq_len).
    """
    _check_common(num_examples, vocab_size, seq_len)
    if seq_len % 2 != 0:
        raise ValueError(f"compression needs an even seq_len (M = L/2 tokens), got {seq_len}")
    rng = np.random.default_rng(seed)
    m = seq_len // 2
    x = rng.integers(0, vocab_size - 1, size=(num_examples, m))
    full = np.concatenate([x, np.full((num_examples, 1), vocab_size - 1), x], axis=1)
    targets = full[:, 1:].copy()
    targets[:, : seq_len - m] = IGNORE
    return torch.from_numpy(full[:, :-1].astype(np.int64)), torch.from_numpy(targets)


@dataclass(frozen=True)
class TaskConfig:
    """The knobs of one task and its splits; `make_split` turns it into tensors.

    name: one of TASKS. num_kv_pairs / power_a / filler are used by MQAR, num_tokens_to_copy
    by selective copying. train_seed and test_seed must differ (distinct splits).
    """

    name: str = "mqar"
    vocab_size: int = 64
    seq_len: int = 64
    num_kv_pairs: int = 4
    num_tokens_to_copy: int = 8
    power_a: float = 0.01
    filler: str = "any"
    n_train: int = 10_000
    n_test: int = 1_000
    train_seed: int = 0
    test_seed: int = 1

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"unknown task name {self.name!r}; expected one of {TASKS}")
        if self.train_seed == self.test_seed:
            raise ValueError(
                f"train_seed and test_seed must differ (distinct splits), both are "
                f"{self.train_seed}"
            )


def make_split(config: TaskConfig, split: str) -> tuple[Tensor, Tensor]:
    """inputs, targets: LongTensor (n, L) for split "train" (n_train, train_seed) or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split == "train":
        n, seed = config.n_train, config.train_seed
    else:
        n, seed = config.n_test, config.test_seed
    if config.name == "mqar":
        return mqar(
            n,
            config.vocab_size,
            config.seq_len,
            config.num_kv_pairs,
            seed,
            config.power_a,
            config.filler,
        )
    if config.name == "selective_copying":
        return selective_copying(
            n, config.vocab_size, config.seq_len, config.num_tokens_to_copy, seed
        )
    return compression(n, config.vocab_size, config.seq_len, seed)


def save_split(config: TaskConfig, split: str, path: str | Path) -> None:
    """make_split(config, split) to a safetensors file ("inputs", "targets"), with the task
    config and split name as JSON metadata, so that a cached split names what it holds."""
    inputs, targets = make_split(config, split)
    metadata = {"task_config": json.dumps(asdict(config)), "split": split}
    save_file({"inputs": inputs, "targets": targets}, str(path), metadata=metadata)


def load_split(path: str | Path, config: TaskConfig | None = None) -> tuple[Tensor, Tensor]:
    """inputs, targets of a file written by `save_split`; with `config`, a file made from
    another task config is an error (a stale cache must not train the wrong task)."""
    with safe_open(str(path), framework="pt") as f:
        stored = TaskConfig(**json.loads(f.metadata()["task_config"]))
        if config is not None and stored != config:
            raise ValueError(f"{path} holds {stored}, not the requested {config}")
        return f.get_tensor("inputs"), f.get_tensor("targets")
