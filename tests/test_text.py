"""ess.paper.e6.text: the shipped corpus and the bigram-recall score."""

import math

import numpy as np
import pytest
import torch

from ess.paper.e6.text import (
    LM_END_OF_TURN,
    LM_EOS,
    bigram_occurrence,
    bigram_recall,
    corpus_provenance,
    entry_split,
    first_gap,
    language_model_stream,
    load_entries,
    load_passages,
    next_token_loss,
    pack_sentences,
    recall_gain_ci,
    split_sentences,
    token_logprobs,
    token_windows,
    train_language_model,
    train_tokenizer,
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
    with pytest.raises(ValueError, match="split must be None or one of"):
        load_passages(200, 1000, split="test")


def test_train_and_eval_splits_partition_the_passages_by_entry(passages):
    train = load_passages(200, 1000, seed=0, split="train")
    held_out = load_passages(200, 1000, seed=0, split="eval")
    assert sorted(train + held_out) == sorted(passages)
    assert not set(train) & set(held_out)
    headwords = {h for h, _ in load_entries()}
    eval_heads = {h for h in headwords if entry_split(h) == "eval"}
    assert 0.15 < len(eval_heads) / len(headwords) < 0.25  # 1 / EVAL_MODULUS
    assert all(
        p.split(":", 1)[0] in eval_heads for p in held_out if p.split(":", 1)[0] in headwords
    )


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


def test_recall_gain_ci_brackets_the_gain_and_is_seeded():
    r = bigram_recall(counting_logits, SEQUENCE)
    assert "recall_gain_lo" not in r  # n_boot = 0: no interval
    # constant log-probabilities within each slice: the interval is the point
    with_ci = bigram_recall(counting_logits, SEQUENCE, n_boot=200)
    assert with_ci["recall_gain_lo"] == pytest.approx(math.log(2.0))
    assert with_ci["recall_gain_hi"] == pytest.approx(math.log(2.0))
    rng = np.random.default_rng(0)
    first, second = rng.normal(-4.0, 1.0, 400), rng.normal(-1.0, 1.0, 30)
    lo, hi = recall_gain_ci(first, second, 2000, 0.95, seed=3)
    assert lo < second.mean() - first.mean() < hi
    assert 0.4 < hi - lo < 1.2  # about 2 * 1.96 * sqrt(1/30 + 1/400)
    assert (lo, hi) == recall_gain_ci(first, second, 2000, 0.95, seed=3)
    assert np.isnan(recall_gain_ci(first, second[:0], 100, 0.95, seed=0)).all()
    with pytest.raises(ValueError, match="confidence"):
        recall_gain_ci(first, second, 100, 1.5, seed=0)


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


# ---------------------------------------------------------------------------------------------
# Small language models trained on the corpus


@pytest.fixture(scope="module")
def tokenizer(passages):
    return train_tokenizer(passages[:300], vocab_size=600)


def test_trained_tokenizer_has_every_e6_delimiter_and_is_deterministic(passages, tokenizer):
    from ess.paper.e6.delimiters import DELIMITERS, delimiter_tokens, end_of_turn_token

    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == LM_EOS
    assert end_of_turn_token(tokenizer) == (
        LM_END_OF_TURN,
        tokenizer.convert_tokens_to_ids(LM_END_OF_TURN),
    )
    assert all(delimiter_tokens(tokenizer, name)[0] for name in DELIMITERS)
    assert train_tokenizer(passages[:300], vocab_size=600).get_vocab() == tokenizer.get_vocab()
    text = passages[0]
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    with pytest.raises(ValueError, match="vocab_size must be >= 300"):
        train_tokenizer(passages[:3], vocab_size=100)


def test_language_model_stream_puts_one_delimiter_after_each_passage(passages, tokenizer):
    from ess.paper.e6.delimiters import encode

    texts = passages[:40]
    stream = language_model_stream(tokenizer, texts, seed=3)
    assert torch.equal(stream, language_model_stream(tokenizer, texts, seed=3))
    assert not torch.equal(stream, language_model_stream(tokenizer, texts, seed=4))
    eos = int((stream == tokenizer.eos_token_id).sum())
    end_of_turn = int((stream == tokenizer.convert_tokens_to_ids(LM_END_OF_TURN)).sum())
    blank = tokenizer.decode(stream).count("\n\n")  # "<|im_end|>\n" holds a single newline
    assert eos > 0 and end_of_turn > 0 and eos + end_of_turn < len(texts)
    assert blank + eos + end_of_turn == len(texts)
    assert stream[: len(encode(tokenizer, texts[0]))].tolist() == encode(tokenizer, texts[0])


def test_token_windows_are_consecutive_next_token_pairs():
    windows = token_windows(torch.arange(23), seq_len=5)
    assert windows.shape == (4, 6)
    assert torch.equal(windows[1], torch.arange(5, 11))
    with pytest.raises(ValueError, match="holds no window"):
        token_windows(torch.arange(5), seq_len=5)


def test_train_language_model_learns_the_stream_and_is_seeded(passages, tokenizer):
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.train import TrainConfig

    stream = language_model_stream(tokenizer, passages[:60], seed=0)
    config = ModelConfig(vocab_size=len(tokenizer), d_model=32, n_layers=2, layers="GLA,SA")
    train = TrainConfig(steps=40, batch_size=4, lr=1e-2, warmup_steps=4, seed=1)
    model, losses = train_language_model(config, stream, 64, train)
    assert len(losses) == 40 and np.mean(losses[-5:]) < losses[0] - 0.5
    assert not model.training
    assert next_token_loss(model, stream[:2000], 64) < losses[0] - 0.5
    _, again = train_language_model(config, stream, 64, train)
    assert again == losses
    small = ModelConfig(vocab_size=100, d_model=32, n_layers=2)
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_language_model(small, stream, 64, train)
