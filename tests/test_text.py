"""ess.text: the shipped corpus and the bigram-recall score."""

import math

import numpy as np
import pytest
import torch

from ess.text import (
    bigram_occurrence,
    bigram_recall,
    corpus_provenance,
    first_gap,
    load_entries,
    load_passages,
    pack_sentences,
    split_sentences,
    token_logprobs,
)


@pytest.fixture(scope="module")
def passages() -> list[str]:
    return load_passages(200, 1000, seed=0)


# ---------------------------------------------------------------------------------------------
# Corpus


def test_corpus_has_its_provenance():
    info = corpus_provenance()
    assert info["name"] == "The Jargon File"
    assert info["version"].startswith("4.4.7")
    assert "public domain" in info["licence"]
    assert "dict-jargon 4.4.7-3.1" in info["source"]
    assert len(load_entries()) == info["n_entries"]


def test_passages_are_deterministic_and_within_bounds(passages):
    again = load_passages(200, 1000, seed=0)
    assert again == passages
    assert len(passages) > 1500
    lengths = np.array([len(p) for p in passages])
    assert lengths.min() >= 200 and lengths.max() <= 1000
    assert not any("\n" in p for p in passages)


def test_seed_changes_only_the_order(passages):
    other = load_passages(200, 1000, seed=1)
    assert other != passages
    assert sorted(other) == sorted(passages)


def test_load_passages_rejects_bad_bounds():
    with pytest.raises(ValueError, match="max_chars"):
        load_passages(500, 100)
    with pytest.raises(ValueError, match="min_chars"):
        load_passages(0, 100)


def test_split_sentences_keeps_closing_quotes():
    text = "He said “foo.” Then he left! Why? (Yes.) ok"
    assert split_sentences(text) == ["He said “foo.”", "Then he left!", "Why?", "(Yes.)", "ok"]


def test_pack_sentences_fits_and_keeps_every_word():
    sentences = ["a b c.", "d e.", "f " * 30 + "g.", "h."]
    chunks = pack_sentences(sentences, max_chars=12)
    assert all(len(c) <= 12 for c in chunks)
    assert " ".join(chunks).split() == " ".join(sentences).split()


# ---------------------------------------------------------------------------------------------
# Bigram recall

V = 4
# bigram (x_{t-1}, x_t) occurrences: t = 1..4 first, t = 5..8 second, t = 9 third
SEQUENCE = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]])


def counting_logits(input_ids: torch.Tensor) -> torch.Tensor:
    """Uniform before position 4; from position 4 on, p(next = x_t + 1 mod V) = 1/2."""
    batch, length = input_ids.shape
    logits = torch.zeros(batch, length, V)
    for t in range(4, length):
        logits[:, t, (input_ids[:, t] + 1) % V] = math.log(3.0)
    return logits


def test_bigram_occurrence_and_gap_by_hand():
    assert bigram_occurrence(SEQUENCE.numpy()).tolist() == [[0, 1, 1, 1, 1, 2, 2, 2, 2, 3]]
    assert first_gap(SEQUENCE.numpy()).tolist() == [[0, 0, 0, 0, 0, 4, 4, 4, 4, 8]]


def test_token_logprobs_reads_the_previous_position():
    out = token_logprobs(counting_logits(SEQUENCE), SEQUENCE)
    assert np.isnan(out[0, 0])
    np.testing.assert_allclose(out[0, 1:5], math.log(1 / 4), rtol=1e-6)
    np.testing.assert_allclose(out[0, 5:], math.log(1 / 2), rtol=1e-6)


def test_bigram_recall_known_answer():
    r = bigram_recall(counting_logits, SEQUENCE)
    assert (r["n_first"], r["n_second"], r["n_repeat"]) == (4, 4, 5)
    assert r["ppl_first"] == pytest.approx(4.0)
    assert r["ppl_second"] == pytest.approx(2.0)
    assert r["logprob_repeat"] == pytest.approx(math.log(1 / 2))
    assert r["recall_gain"] == pytest.approx(math.log(2.0))
    assert r["ppl_ratio"] == pytest.approx(0.5)


def test_bigram_recall_min_distance_leaves_out_near_repeats():
    r = bigram_recall(counting_logits, SEQUENCE[0].numpy(), min_distance=5)
    assert r["n_second"] == 0 and math.isnan(r["ppl_second"])
    assert r["n_repeat"] == 5


class _Output:
    def __init__(self, logits):
        self.logits = logits


class _Model(torch.nn.Module):
    def forward(self, input_ids):
        return _Output(counting_logits(input_ids))


def test_bigram_recall_accepts_a_module_with_logits_output():
    assert bigram_recall(_Model(), SEQUENCE) == bigram_recall(counting_logits, SEQUENCE)
    as_tuple = bigram_recall(lambda ids: (counting_logits(ids),), SEQUENCE)
    assert as_tuple == bigram_recall(counting_logits, SEQUENCE)


def test_bigram_recall_errors():
    with pytest.raises(ValueError, match="L >= 2"):
        bigram_recall(counting_logits, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="min_distance"):
        bigram_recall(counting_logits, SEQUENCE, min_distance=0)
    with pytest.raises(TypeError, match="logits_fn"):
        bigram_recall(lambda ids: "nope", SEQUENCE)
    with pytest.raises(ValueError, match="logits must have shape"):
        bigram_recall(lambda ids: torch.zeros(1, 3, V), SEQUENCE)


def test_bigram_recall_on_a_tiny_transformers_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 16, (2, 40), generator=torch.Generator().manual_seed(1))
    r = bigram_recall(model, ids)
    assert r == bigram_recall(lambda x: model(input_ids=x).logits, ids)
    assert r["n_first"] + r["n_repeat"] == 2 * 39
    assert r["n_second"] > 0 and np.isfinite(r["ppl_second"])
