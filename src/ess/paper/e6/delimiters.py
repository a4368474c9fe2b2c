"""Token sequences of real passages joined by a context delimiter, and the ESS drop it causes.

E6 (the paper's Figure 7) traces ESS_i along text and asks whether it falls right after a
context delimiter. `build_delimited_sequence` joins passages with the delimiter under study and
builds two matched CONTROLS from the same passages in the same order. Every condition is the
same token stream (passage 0 as it opens a text, every later one as it follows a space,
" passage"), and the last W tokens of every passage that a boundary follows form its GAP,
W = `gap_width` (the longest separator this tokenizer gives any delimiter or control). A
condition overwrites the end of each gap with its separator; the rest of the gap keeps the
passage's own tokens:

| condition   | the gap (W tokens) at the end of passage k                   |
|-------------|--------------------------------------------------------------|
| delimited   | passage k's tokens, then the delimiter's tokens (below)      |
| removed     | passage k's tokens only                                      |
| neutral     | passage k's tokens, then the token(s) of "," (NEUTRAL_TEXT)  |

So the delimiter REPLACES tokens instead of adding them: the three sequences have the same
tokens everywhere but in the gaps, and boundary k sits at the same splits in all of them (no
shift between a boundary's position in the delimited text and in its controls: the end bound
ESS_i <= L - i cannot differ between them). W depends on the tokenizer only, not on the
delimiter, so a control is the same sequence whichever delimiter it is matched with. The price
is that the last W tokens of each passage before a boundary are not the passage's own in the
delimited and neutral texts (the delimiter follows, e.g., "...over the fence<eos>" where the
passage ends "...over the fence number 3.").

Delimiters (our choices; the paper's exact strings are unknown):

- "eos": the tokenizer's eos token id (documents packed as in pretraining);
- "blank_line": the tokens of "\\n\\n";
- "end_of_speech": the tokenizer's chat end-of-turn token followed by "\\n" when its vocabulary
  has one of END_OF_TURN_TOKENS (e.g. "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>");
  otherwise a closing double quote and a newline ('"\\n', END_OF_SPEECH_TEXT), the mark that
  ends a quoted speech in prose.

Every segment (a passage, a delimiter) is tokenized on its own, without special tokens, so a
passage's tokens never merge with the delimiter's and the delimiter's tokens sit exactly where
reported. Boundary k is [p, n]: p the last token of passage k before its gap, n the first token
of passage k+1 (n - p - 1 = W), the same in every condition.

The positions of boundaries and the drop statistics are in ess.paper.e6.boundaries.
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
    passage_spans: (P, 2) int64, [start, stop) of each passage's own tokens, the same in every
                condition (a gap is left out; the last passage may be cut at L)
    passage_index: (P,) int64, which of the given passages each one is
    boundaries: (K, 2) int64, [p, n] per boundary: last token of passage k before its gap,
                first of k+1; the same in every condition
    controls:   {"removed": ..., "neutral": ...} for the delimited sequence, {} for a control;
                boundary k of a control is the same pair of passages, at the same splits.
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
        """(K,) first token of each separator (= next passage's start for an empty one)."""
        return self.boundaries[:, 1] - len(self.separator)

    @property
    def delimiter_end(self) -> np.ndarray:
        """(K,) last token of each gap: where the separator, if any, ends."""
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


def gap_width(tokenizer: Tokenizer) -> int:
    """W: the most tokens any delimiter or control puts between passages with this tokenizer
    (a delimiter it cannot make, "eos" without an eos token, does not count)."""
    widths = [len(separator_tokens(tokenizer, "eos", control)[0]) for control in CONTROLS]
    for delimiter in DELIMITERS:
        try:
            widths.append(len(delimiter_tokens(tokenizer, delimiter)[0]))
        except ValueError:  # no eos token: that delimiter is refused when it is built
            continue
    return max(widths)


def overwrite_gaps(ids: Sequence[int], next_starts: np.ndarray, separator: Sequence[int]):
    """ids with the len(separator) tokens before each of `next_starts` replaced by the
    separator: (L,) list -> (L,) list."""
    out = list(ids)
    for n in np.asarray(next_starts, dtype=np.int64).tolist():
        out[n - len(separator) : n] = separator
    return out


def build_delimited_sequence(
    tokenizer: Tokenizer,
    passages: Sequence[str],
    delimiter: str,
    n_tokens: int,
    seed: int = 0,
    add_bos: bool = False,
) -> DelimitedSequence:
    """Passages joined by a delimiter, with its "removed" and "neutral" controls.

    tokenizer: see `Tokenizer`. passages: texts (e.g. `ess.paper.e6.text.load_passages`); a seeded
    permutation (numpy default_rng(seed)) picks their order, and passages are added in that order
    until the sequence has n_tokens tokens (the last one is cut). The three conditions are the
    same token stream with each boundary's gap overwritten by their separator (module
    docstring), so they share boundaries, passage spans and length. add_bos: start every
    sequence with the tokenizer's bos token. Returns the delimited sequence, with the controls
    in `.controls`.
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
    gap = gap_width(tokenizer)
    delimiter_ids = separators["delimited"][0]
    ids, spans = list(first), []
    for index in order:
        if len(ids) >= n_tokens:
            break
        # the first passage opens the text; every later one follows a space
        encoded = encode(tokenizer, (" " if spans else "") + passages[index])
        if not encoded:
            raise ValueError(f"passage {index} encodes to no tokens: {passages[index]!r}")
        if contains(encoded, delimiter_ids):
            raise ValueError(
                f"passage {index} already contains the {delimiter!r} delimiter's tokens "
                f"{delimiter_ids}: its boundaries would not be the only delimiters"
            )
        if len(ids) + len(encoded) < n_tokens and len(encoded) <= gap:
            raise ValueError(
                f"passage {index} has {len(encoded)} tokens, not more than the gap of {gap} "
                "tokens the separators overwrite at its end: raise e6.passages.min_chars"
            )
        spans.append((len(ids), min(len(ids) + len(encoded), n_tokens)))
        ids.extend(encoded)
    if len(ids) < n_tokens:
        raise ValueError(
            f"the {len(passages)} passages give fewer than n_tokens={n_tokens} tokens: pass "
            "more passages or a smaller n_tokens"
        )
    if len(spans) < 2:
        raise ValueError(f"n_tokens={n_tokens} holds no passage boundary: make it larger")
    starts = np.asarray(spans, dtype=np.int64)[1:, 0]  # n of each boundary
    boundaries = np.stack([starts - gap - 1, starts], axis=1)
    # A passage's own tokens in every condition: the gap is left out of the one before a boundary
    passage_spans = np.asarray(spans, dtype=np.int64)
    passage_spans[:-1, 1] -= gap
    sequences = {
        condition: DelimitedSequence(
            condition=condition,
            delimiter=delimiter,
            separator=tuple(separator),
            separator_text=text,
            input_ids=torch.tensor([overwrite_gaps(ids[:n_tokens], starts, separator)]),
            passage_spans=passage_spans,
            passage_index=order[: len(spans)].astype(np.int64),
            boundaries=boundaries,
        )
        for condition, (separator, text) in separators.items()
    }
    controls = {c: sequences[c] for c in CONTROLS}
    return replace(sequences["delimited"], controls=controls)
