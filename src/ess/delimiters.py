"""Token sequences of real passages joined by a context delimiter, and the ESS drop it causes.

E6 (the paper's Figure 7) traces ESS_i along text and asks whether it falls right after a
context delimiter. `build_delimited_sequence` joins passages with the delimiter under study and
builds two matched CONTROLS from the same passages in the same order:

| condition   | between passage k and k+1                      | next passage encoded as |
|-------------|------------------------------------------------|-------------------------|
| delimited   | the delimiter's tokens (below)                 | "passage"               |
| removed     | nothing (the passages joined by one space)     | " passage"              |
| neutral     | the token(s) of "," (NEUTRAL_TEXT)             | " passage"              |

Delimiters (our choices; the paper's exact strings are unknown):

- "eos": the tokenizer's eos token id (documents packed as in pretraining);
- "blank_line": the tokens of "\\n\\n";
- "end_of_speech": the tokenizer's chat end-of-turn token followed by "\\n" when its vocabulary
  has one of END_OF_TURN_TOKENS (e.g. "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>");
  otherwise a closing double quote and a newline ('"\\n', END_OF_SPEECH_TEXT), the mark that
  ends a quoted speech in prose.

Every segment (a passage, a delimiter) is tokenized on its own, without special tokens, so a
passage's tokens never merge with the delimiter's and the delimiter's tokens sit exactly where
reported. In each condition passage k+1 starts at that condition's `boundaries[k, 1]`:
boundaries are matched across conditions by their index k (absolute positions differ by the
delimiters' lengths).

The positions of boundaries and the drop statistics are in ess.boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

DELIMITERS = ("eos", "blank_line", "end_of_speech")
CONTROLS = ("removed", "neutral")
BLANK_LINE_TEXT = "\n\n"
NEUTRAL_TEXT = ","
END_OF_SPEECH_TEXT = '"\n'
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<|endofturn|>",
)


class Tokenizer(Protocol):
    """What is used of a tokenizer (a transformers tokenizer has all of it).

    encode(text, add_special_tokens=False) -> list[int] (or an object with `.ids`);
    eos_token_id (for "eos"), bos_token_id (for add_bos=True), get_vocab() (for
    "end_of_speech"; a tokenizer without it uses the fallback text).
    """

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True, eq=False)
class DelimitedSequence:
    """One token sequence of passages and what lies between them.

    condition:  "delimited", "removed" or "neutral"
    delimiter:  the delimiter under study ("eos", "blank_line", "end_of_speech")
    separator:  the tokens placed between passages in THIS condition, as a list of ids
    separator_text: a readable description of them ("" for removed)
    input_ids:  (1, L) int64
    passage_spans: (P, 2) int64, [start, stop) of each passage (the last may be cut at L)
    passage_index: (P,) int64, which of the given passages each one is
    boundaries: (K, 2) int64, [p, n] per boundary: last token of passage k, first of k+1
    controls:   {"removed": ..., "neutral": ...} for the delimited sequence, {} for a control;
                boundary k of a control is the same pair of passages as boundary k here.
    """

    condition: str
    delimiter: str
    separator: tuple[int, ...]
    separator_text: str
    input_ids: torch.Tensor
    passage_spans: np.ndarray
    passage_index: np.ndarray
    boundaries: np.ndarray
    controls: dict[str, DelimitedSequence] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def delimiter_start(self) -> np.ndarray:
        """(K,) first token of each delimiter (= next passage's start for an empty one)."""
        return self.boundaries[:, 0] + 1

    @property
    def delimiter_end(self) -> np.ndarray:
        """(K,) last token of each delimiter: the position where the delimiter ends."""
        return self.boundaries[:, 1] - 1


# ---------------------------------------------------------------------------------------------
# Tokenizer access


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of text, no special tokens added (transformers or `tokenizers` objects)."""
    out = tokenizer.encode(text, add_special_tokens=False)
    ids = out.ids if hasattr(out, "ids") else out
    return [int(i) for i in ids]


def end_of_turn_token(tokenizer: Tokenizer) -> tuple[str, int] | None:
    """The first of END_OF_TURN_TOKENS in the tokenizer's vocabulary, with its id, or None."""
    if not hasattr(tokenizer, "get_vocab"):
        return None
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            return token, int(vocab[token])
    return None


def delimiter_tokens(tokenizer: Tokenizer, delimiter: str) -> tuple[list[int], str]:
    """(ids, description) of a named delimiter for this tokenizer (see the module docstring)."""
    if delimiter == "eos":
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("delimiter 'eos' needs a tokenizer with an eos_token_id, it has none")
        return [int(tokenizer.eos_token_id)], f"eos token {tokenizer.eos_token_id}"
    if delimiter == "blank_line":
        return encode(tokenizer, BLANK_LINE_TEXT), repr(BLANK_LINE_TEXT)
    if delimiter == "end_of_speech":
        found = end_of_turn_token(tokenizer)
        if found is not None:
            token, token_id = found
            return [token_id, *encode(tokenizer, "\n")], f"{token} + '\\n'"
        return encode(tokenizer, END_OF_SPEECH_TEXT), repr(END_OF_SPEECH_TEXT)
    raise ValueError(f"delimiter must be one of {DELIMITERS}, got {delimiter!r}")


def separator_tokens(tokenizer: Tokenizer, delimiter: str, condition: str) -> tuple[list[int], str]:
    """(ids, description) placed between passages in a condition."""
    if condition == "delimited":
        return delimiter_tokens(tokenizer, delimiter)
    if condition == "removed":
        return [], ""
    if condition == "neutral":
        return encode(tokenizer, NEUTRAL_TEXT), repr(NEUTRAL_TEXT)
    raise ValueError(f"condition must be 'delimited' or one of {CONTROLS}, got {condition!r}")


# ---------------------------------------------------------------------------------------------
# Building the sequences


def contains(ids: Sequence[int], pattern: Sequence[int]) -> bool:
    """Whether `pattern` occurs contiguously in `ids` (never, for an empty pattern)."""
    ids, pattern, n = list(ids), list(pattern), len(pattern)
    return n > 0 and any(ids[i : i + n] == pattern for i in range(len(ids) - n + 1))


def _join(
    first: list[int], passages: Sequence[list[int]], separator: list[int], n_tokens: int
) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """Concatenate first + (separator + passage)*, cut at n_tokens.

    Returns (ids, passage_spans (P, 2), boundaries (K, 2)), or None when the passages run out
    before n_tokens. A boundary counts when the next passage's first token is inside.
    """
    ids = list(first)
    spans = []
    for k, passage in enumerate(passages):
        if k > 0:
            ids.extend(separator)
        if len(ids) >= n_tokens:
            break
        spans.append((len(ids), min(len(ids) + len(passage), n_tokens)))
        ids.extend(passage)
        if len(ids) >= n_tokens:
            break
    if len(ids) < n_tokens:
        return None
    spans_array = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    boundaries = np.stack([spans_array[:-1, 1] - 1, spans_array[1:, 0]], axis=1)
    return ids[:n_tokens], spans_array, boundaries


def build_delimited_sequence(
    tokenizer: Tokenizer,
    passages: Sequence[str],
    delimiter: str,
    n_tokens: int,
    seed: int = 0,
    add_bos: bool = False,
) -> DelimitedSequence:
    """Passages joined by a delimiter, with its "removed" and "neutral" controls.

    tokenizer: see `Tokenizer`. passages: texts (e.g. `ess.text.load_passages`); a seeded
    permutation (numpy default_rng(seed)) picks their order, and passages are added in that order
    until the sequence has n_tokens tokens (the last one is cut). The three conditions use the
    same passages in the same order, each cut at n_tokens, and keep the boundaries all three have
    (K = the smallest count). add_bos: start every sequence with the tokenizer's bos token.
    Returns the delimited sequence, with the controls in `.controls`.
    """
    import torch  # here, not at the top: reading the sequences' boundaries needs no torch

    if n_tokens < 2:
        raise ValueError(f"n_tokens must be >= 2, got {n_tokens}")
    if len(passages) < 2:
        raise ValueError(f"need at least 2 passages to make a boundary, got {len(passages)}")
    first: list[int] = []
    if add_bos:
        if getattr(tokenizer, "bos_token_id", None) is None:
            raise ValueError("add_bos=True needs a tokenizer with a bos_token_id, it has none")
        first = [int(tokenizer.bos_token_id)]
    order = np.random.default_rng(seed).permutation(len(passages))
    separators = {c: separator_tokens(tokenizer, delimiter, c) for c in ("delimited", *CONTROLS)}
    # Passage k as it follows the delimiter (bare) or a space (spaced); the first opens the
    # sequence, so it is encoded bare in every condition.
    bare: list[list[int]] = []
    spaced: list[list[int]] = []

    def length(condition: str) -> int:
        encoded = bare if condition == "delimited" else spaced
        n_separators = max(len(encoded) - 1, 0)
        separator = separators[condition][0]
        return len(first) + sum(map(len, encoded)) + n_separators * len(separator)

    delimiter_ids = separators["delimited"][0]
    for index in order:
        if all(length(c) >= n_tokens for c in separators):
            break
        bare.append(encode(tokenizer, passages[index]))
        spaced.append(encode(tokenizer, " " + passages[index]) if spaced else bare[-1])
        if not bare[-1]:
            raise ValueError(f"passage {index} encodes to no tokens: {passages[index]!r}")
        if any(contains(ids, delimiter_ids) for ids in (bare[-1], spaced[-1])):
            raise ValueError(
                f"passage {index} already contains the {delimiter!r} delimiter's tokens "
                f"{delimiter_ids}: its boundaries would not be the only delimiters"
            )
    built = {}
    for condition, (separator, text) in separators.items():
        joined = _join(first, bare if condition == "delimited" else spaced, separator, n_tokens)
        if joined is None:
            raise ValueError(
                f"the {len(passages)} passages give fewer than n_tokens={n_tokens} tokens in "
                f"condition {condition!r}: pass more passages or a smaller n_tokens"
            )
        built[condition] = (separator, text, *joined)
    n_common = min(b[-1].shape[0] for b in built.values())
    if n_common == 0:
        raise ValueError(f"n_tokens={n_tokens} holds no passage boundary: make it larger")
    sequences = {
        condition: DelimitedSequence(
            condition=condition,
            delimiter=delimiter,
            separator=tuple(separator),
            separator_text=text,
            input_ids=torch.tensor([ids], dtype=torch.long),
            passage_spans=spans,
            passage_index=order[: len(spans)].astype(np.int64),
            boundaries=boundaries[:n_common],
        )
        for condition, (separator, text, ids, spans, boundaries) in built.items()
    }
    controls = {c: sequences[c] for c in CONTROLS}
    return replace(sequences["delimited"], controls=controls)
