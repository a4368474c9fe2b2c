"""ess.paper.e6.delimiters: delimited sequences with matched controls, and the ESS drop at
delimiters."""

import re

import numpy as np
import pandas as pd
import pytest

from ess.paper.e6.boundaries import bound_flags, delimiter_drop, summarise_drops
from ess.paper.e6.delimiters import (
    BLANK_LINE_TEXT,
    DELIMITERS,
    build_delimited_sequence,
    contains,
    gap_width,
)

PASSAGES = [
    f"passage {k} says that the {'quick brown fox' if k % 2 else 'lazy dog'} "
    f"jumps {k} times over the fence number {k}, then rests."
    for k in range(40)
]


class WordTokenizer:
    """A GPT-like word tokenizer: ' word', 'word', '\\n\\n', '\\n', ',' and '"' are tokens."""

    PATTERN = re.compile(r"\n\n|\n| ?[^\s,\"]+| ?[,\"]")

    def __init__(self, texts, extra_special=()):
        self.vocab = {"<eos>": 0, "<bos>": 1, **{t: 2 + i for i, t in enumerate(extra_special)}}
        for text in [*texts, BLANK_LINE_TEXT, "\n", ",", '"']:
            for piece in (text, " " + text):
                for token in self.PATTERN.findall(piece):
                    self.vocab.setdefault(token, len(self.vocab))
        self.inverse = {i: t for t, i in self.vocab.items()}
        self.eos_token_id, self.bos_token_id = 0, 1

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[t] for t in self.PATTERN.findall(text)]

    def decode(self, ids):
        return "".join(self.inverse[int(i)] for i in ids)

    def get_vocab(self):
        return dict(self.vocab)


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer(PASSAGES)


# ---------------------------------------------------------------------------------------------
# Building


@pytest.mark.parametrize("delimiter", DELIMITERS)
def test_delimiter_sits_at_the_reported_positions(tokenizer, delimiter):
    seq = build_delimited_sequence(tokenizer, PASSAGES, delimiter, n_tokens=200, seed=0)
    ids = seq.input_ids[0].tolist()
    sep = list(seq.separator)
    assert seq.input_ids.shape == (1, 200) and len(sep) >= 1
    assert seq.boundaries.shape[0] >= 5
    gap = gap_width(tokenizer)
    assert gap == 2  # end_of_speech's '"' + '\n' is the longest separator of this tokenizer
    for p, n in seq.boundaries.tolist():
        assert n - p - 1 == gap  # the same gap for every delimiter and control
        assert ids[n - len(sep) : n] == sep  # the delimiter ends the gap
    np.testing.assert_array_equal(seq.delimiter_end, seq.boundaries[:, 1] - 1)
    np.testing.assert_array_equal(seq.delimiter_start, seq.boundaries[:, 1] - len(sep))


@pytest.mark.parametrize("delimiter", DELIMITERS)
def test_controls_lack_the_delimiter_and_share_every_position(tokenizer, delimiter):
    seq = build_delimited_sequence(tokenizer, PASSAGES, delimiter, n_tokens=200, seed=0)
    sep = list(seq.separator)
    removed, neutral = seq.controls["removed"], seq.controls["neutral"]
    in_gap = np.zeros(seq.length, dtype=bool)
    for p, n in seq.boundaries.tolist():
        in_gap[p + 1 : n] = True
    for control in (removed, neutral):
        assert control.input_ids.shape == seq.input_ids.shape
        np.testing.assert_array_equal(control.boundaries, seq.boundaries)
        np.testing.assert_array_equal(control.passage_spans, seq.passage_spans)
        assert not contains(control.input_ids[0].tolist(), sep)
        assert control.controls == {}
        # the delimiter replaces tokens: outside the gaps every condition has the same tokens
        assert control.input_ids[0, ~in_gap].equal(seq.input_ids[0, ~in_gap])
    comma = tokenizer.encode(",")
    for _p, n in neutral.boundaries.tolist():
        assert neutral.input_ids[0, n - len(comma) : n].tolist() == comma


def test_a_control_does_not_depend_on_its_delimiter(tokenizer):
    built = [build_delimited_sequence(tokenizer, PASSAGES, d, 300, seed=2) for d in DELIMITERS]
    for control in ("removed", "neutral"):
        first = built[0].controls[control]
        for other in built[1:]:
            assert other.controls[control].input_ids.equal(first.input_ids)
            np.testing.assert_array_equal(other.controls[control].boundaries, first.boundaries)


def test_boundaries_match_the_same_passages_across_conditions(tokenizer):
    seq = build_delimited_sequence(tokenizer, PASSAGES, "blank_line", n_tokens=300, seed=3)
    removed = seq.controls["removed"].input_ids[0].tolist()
    gap = gap_width(tokenizer)
    # the removed control holds every passage whole: its own tokens, then its gap
    whole = [tokenizer.decode(removed[a : b + gap]).strip() for a, b in seq.passage_spans[:-1]]
    assert whole == [PASSAGES[k] for k in seq.passage_index[:-1]]
    for condition in (seq, *seq.controls.values()):
        ids = condition.input_ids[0].tolist()
        texts = [tokenizer.decode(ids[a:b]).strip() for a, b in condition.passage_spans[:-1]]
        assert all(w.startswith(t) for w, t in zip(whole, texts, strict=True))
    assert tokenizer.decode(seq.input_ids[0]).count(BLANK_LINE_TEXT) == len(seq.boundaries)


def test_sequences_are_seeded(tokenizer):
    a = build_delimited_sequence(tokenizer, PASSAGES, "eos", n_tokens=150, seed=5)
    b = build_delimited_sequence(tokenizer, PASSAGES, "eos", n_tokens=150, seed=5)
    c = build_delimited_sequence(tokenizer, PASSAGES, "eos", n_tokens=150, seed=6)
    assert a.input_ids.equal(b.input_ids) and np.array_equal(a.boundaries, b.boundaries)
    assert not a.input_ids.equal(c.input_ids)


def test_add_bos_and_end_of_turn_token():
    tok = WordTokenizer(PASSAGES, extra_special=("<|im_end|>",))
    seq = build_delimited_sequence(tok, PASSAGES, "end_of_speech", 120, seed=0, add_bos=True)
    assert seq.input_ids[0, 0] == tok.bos_token_id
    assert seq.separator == (tok.vocab["<|im_end|>"], tok.vocab["\n"])
    assert "<|im_end|>" in seq.separator_text
    fallback = build_delimited_sequence(WordTokenizer(PASSAGES), PASSAGES, "end_of_speech", 120)
    assert fallback.separator_text == repr('"\n')


def test_build_errors(tokenizer):
    with pytest.raises(ValueError, match="delimiter must be one of"):
        build_delimited_sequence(tokenizer, PASSAGES, "semicolon", 100)
    with pytest.raises(ValueError, match="fewer than n_tokens=100000"):
        build_delimited_sequence(tokenizer, PASSAGES, "eos", 100_000)
    with pytest.raises(ValueError, match="at least 2 passages"):
        build_delimited_sequence(tokenizer, PASSAGES[:1], "eos", 10)
    with pytest.raises(ValueError, match="no passage boundary"):
        build_delimited_sequence(tokenizer, PASSAGES, "eos", 5)
    with pytest.raises(ValueError, match="already contains the 'blank_line'"):
        bad = ["passage 1 says\n\npassage", *PASSAGES]
        build_delimited_sequence(tokenizer, bad, "blank_line", 10**4)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        build_delimited_sequence(tokenizer, ["", *PASSAGES], "eos", 10**4)
    tokenizer_without_eos = WordTokenizer(PASSAGES)
    tokenizer_without_eos.eos_token_id = None
    with pytest.raises(ValueError, match="eos_token_id"):
        build_delimited_sequence(tokenizer_without_eos, PASSAGES, "eos", 100)


def test_with_a_trained_byte_level_bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(PASSAGES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    for delimiter in DELIMITERS:
        seq = build_delimited_sequence(tok, PASSAGES, delimiter, n_tokens=256, seed=1)
        ids = seq.input_ids[0].tolist()
        for _p, n in seq.boundaries.tolist():
            assert ids[n - len(seq.separator) : n] == list(seq.separator)
        for control in seq.controls.values():
            assert not contains(control.input_ids[0].tolist(), list(seq.separator))
    text = tok.decode(seq.input_ids[0])
    assert text.count('"\n') == len(seq.boundaries)


# ---------------------------------------------------------------------------------------------
# The drop


L = 400
BOUNDARIES = np.array([[10, 12], [99, 101], [199, 201], [299, 301], [380, 382]])
CONTROL_BOUNDARIES = BOUNDARIES - np.arange(5)[:, None]  # as if the delimiter were shorter


def stepped_trace(boundaries, high=10.0, low=4.0, after=8):
    """ESS per split 1..L-1: `high`, and `low` over each boundary's after window."""
    trace = np.full(L - 1, high)
    for _, n in boundaries:
        trace[n : n + after] = low  # splits n+1 .. n+after sit at indices n .. n+after-1
    return trace


def at_bound_near(boundaries, first, last):
    """A bool trace, True at splits 1..first and last..L-1 (a head at the bound there)."""
    splits = np.arange(1, L)
    return (splits <= first) | (splits >= last)


def test_drop_recovers_a_known_step():
    drops = delimiter_drop(
        stepped_trace(BOUNDARIES),
        BOUNDARIES,
        np.full(L - 1, 10.0),
        CONTROL_BOUNDARIES,
        at_bound=at_bound_near(BOUNDARIES, 8, 385),
    )
    assert list(drops["near_end"]) == [True, False, False, False, True]
    interior = drops[~drops["near_end"]]
    np.testing.assert_allclose(interior["drop"], 6.0)
    np.testing.assert_allclose(interior["control_drop"], 0.0)
    np.testing.assert_allclose(interior["drop_vs_control"], 6.0)
    np.testing.assert_allclose(interior["ess_at_delimiter"], 10.0)
    summary = summarise_drops(drops)
    assert summary.loc["interior", "n"] == 3
    assert summary.loc["interior", "mean"] == pytest.approx(6.0)
    assert summary.loc["near_end", "n"] == 2


def test_flat_trace_has_no_drop():
    flat = np.full(L - 1, 7.0)
    drops = delimiter_drop(flat, BOUNDARIES, flat, CONTROL_BOUNDARIES)
    assert not drops["near_end"].any()
    np.testing.assert_allclose(drops["drop_vs_control"], 0.0)


def test_drop_in_the_control_is_subtracted():
    trace = stepped_trace(BOUNDARIES, low=4.0)
    control = stepped_trace(CONTROL_BOUNDARIES, low=9.0)
    drops = delimiter_drop(trace, BOUNDARIES, control, CONTROL_BOUNDARIES)
    np.testing.assert_allclose(drops["drop_vs_control"][1:4], 6.0 - 1.0)


def test_a_head_at_the_bound_inside_the_windows_flags_the_boundary():
    trace = stepped_trace(BOUNDARIES)
    # boundary 1's windows span splits 93 .. 109 (p - 8 + 2 .. n + 8); boundary 2's 193 .. 209
    for split, flagged in ((92, []), (93, [1]), (109, [1]), (110, []), (200, [2])):
        at_bound = pd.Series(np.arange(1, L) == split, index=np.arange(1, L))
        drops = delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES, at_bound=at_bound)
        assert np.flatnonzero(drops["near_end"]).tolist() == flagged, split
        # in the control's windows just the same
        drops = delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES, control_at_bound=at_bound)
        assert np.flatnonzero(drops["near_end"]).tolist() == flagged, split


def test_a_window_cut_by_an_end_flags_the_boundary():
    trace = np.full(L - 1, 5.0)
    cut = np.array([[10, 12], [200, 202], [385, 392]])  # the last after window ends at 400 = L
    drops = delimiter_drop(trace, cut, trace, cut)
    assert drops["near_end"].tolist() == [False, False, True]


def test_bound_flags_mark_the_min_i_l_minus_i_bound():
    splits = np.array([1, 3, 5, 7, 9])
    # L = 10: bounds 1, 3, 5, 3, 1
    flags = bound_flags(np.array([1.0, 2.0, 5.0, 3.0, 0.0]), splits, 10)
    assert flags.tolist() == [True, False, True, True, False]


def test_trace_forms_agree_and_strided_traces_work():
    trace = stepped_trace(BOUNDARIES)
    as_array = delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES)
    frame = pd.DataFrame({"position": np.arange(1, L), "ess": trace})
    as_frame = delimiter_drop(frame, BOUNDARIES, frame, BOUNDARIES)
    pd.testing.assert_frame_equal(as_array, as_frame)
    strided = frame.iloc[::2]
    drops = delimiter_drop(strided, BOUNDARIES, strided, BOUNDARIES, seq_len=L, control_seq_len=L)
    np.testing.assert_allclose(drops["drop"][1:4], 6.0)


def test_drop_errors():
    trace = np.ones(L - 1)
    with pytest.raises(ValueError, match="same boundaries"):
        delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES[:3])
    with pytest.raises(ValueError, match="shorter than before"):
        delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES, before=60, after=60)
    with pytest.raises(ValueError, match="before and after"):
        delimiter_drop(trace, BOUNDARIES, trace, BOUNDARIES, before=0)
    with pytest.raises(ValueError, match="lacks columns"):
        delimiter_drop(pd.DataFrame({"x": [1.0]}), BOUNDARIES, trace, BOUNDARIES)
    with pytest.raises(ValueError, match="split positions start at 1"):
        delimiter_drop(pd.Series([1.0], index=[0]), BOUNDARIES, trace, BOUNDARIES)


# ---------------------------------------------------------------------------------------------
# Sequence files


def test_sequence_files_round_trip_every_field(tokenizer, tmp_path):
    import torch

    from ess.paper.e6.sequences import from_dict, read_sequence, to_dict, write_sequence

    sequence = build_delimited_sequence(tokenizer, PASSAGES, "end_of_speech", 200, seed=3)
    again = from_dict(to_dict(sequence))
    for name in ("delimited", *sequence.controls):
        a = sequence if name == "delimited" else sequence.controls[name]
        b = again if name == "delimited" else again.controls[name]
        for field, value in vars(a).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, getattr(b, field)), field
                assert value.dtype == getattr(b, field).dtype, field
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, getattr(b, field))
                assert value.dtype == getattr(b, field).dtype, field
            elif field != "controls":
                assert value == getattr(b, field), field
    path = tmp_path / "sequence.json"
    write_sequence(sequence, path)
    control = read_sequence(path, "removed")
    assert torch.equal(control.input_ids, sequence.controls["removed"].input_ids)
    assert read_sequence(path).separator == sequence.separator
