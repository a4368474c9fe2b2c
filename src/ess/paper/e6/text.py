"""Real English text for E6, and a bigram-recall score for causal language models.

The corpus
----------
The Jargon File, version 4.4.7 (29 Dec 2003), edited by Eric S. Raymond: a lexicon of hacker
slang whose entries are short encyclopaedic paragraphs of plain (informal) English prose.

- source: Debian package `dict-jargon` 4.4.7-3.1 (`/usr/share/dictd/jargon.dict.dz` and
  `jargon.index`), upstream http://catb.org/jargon/jargsrc.tar.gz;
- licence: public domain. The File's own notice: "This document (the Jargon File) is in the
  public domain, to be freely used, shared, and modified." (full notice in
  `data/jargon-4.4.7.LICENSE.txt`; please cite it as "Jargon File 4.4.7");
- shipped as `data/jargon-4.4.7.tsv.gz` (484 kB gzip, 1.22 MB of text, 1998 entries), so
  nothing is downloaded at run time and no extra dependency is needed;
- how it was made (`data/README.md`): one line per dictionary entry, `headword<TAB>body`;
  the header lines (headword, pronunciation, part of speech) dropped from the body, the body's
  paragraphs joined with single spaces, cross-reference braces `{...}` removed, entries with
  deeper-indented lines (code, examples, ASCII art: 27 entries) and entries whose body is shorter
  than 100 characters dropped. No line contains a newline, so a passage never holds a blank line
  (one of the delimiters under study).

`load_passages` cuts the entries into paragraph-sized passages and shuffles them with a seed.
`entry_split` puts about a fifth of the entries (by a hash of the headword) in an "eval" split:
E6 traces models on those, and the small models trained here (below) learn from the others.

Bigram recall
-------------
Our definition (the paper's exact slicing is unknown; it follows Zoology's "associative recall
hits"): in a token sequence x_0 .. x_{L-1}, the token x_t (t >= 1) completes the bigram
(x_{t-1}, x_t). Its occurrence number is how many times that bigram occurs at positions <= t.
A model that recalls its context predicts the SECOND occurrence of a bigram much better than the
first: the first occurrence can only be guessed from training statistics, the second can be
copied from context. `bigram_recall` reports the mean log-probability and perplexity of the
completing token at first, second and any repeated occurrence (the prediction for x_t is the
model's output at position t-1).

Small language models
---------------------
`train_tokenizer`, `language_model_stream` and `train_language_model` train an
ess.paper.training.models.LanguageModel (any of its mixers) by next-token prediction on the "train"
passages joined by the E6 delimiters, so that E6 can trace linear attention, gated recurrences and
SSMs on the same text as the pretrained transformers.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CORPUS_FILE = "jargon-4.4.7.tsv.gz"
CORPUS_SHA256 = "f2980d6968494ff6622fdc9139e439b4eb932300d8523c4fce5f736aa4000908"
CORPUS_PROVENANCE: dict[str, Any] = {
    "name": "The Jargon File",
    "version": "4.4.7 (29 Dec 2003)",
    "source": "Debian package dict-jargon 4.4.7-3.1 (/usr/share/dictd/jargon.dict.dz)",
    "upstream": "http://catb.org/jargon/jargsrc.tar.gz",
    "licence": "public domain (the Jargon File's own notice; cite as 'Jargon File 4.4.7')",
    "file": f"ess/paper/e6/data/{CORPUS_FILE}",
    "sha256": CORPUS_SHA256,
    "n_entries": 1998,
}

# Entries whose headword's sha256 is divisible by EVAL_MODULUS form the "eval" split.
EVAL_MODULUS = 5
SPLITS = ("train", "eval")

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) and a space.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+")


# ---------------------------------------------------------------------------------------------
# The corpus


def corpus_provenance() -> dict[str, Any]:
    """Where the corpus comes from (name, version, source, licence, file, sha256, n_entries)."""
    return dict(CORPUS_PROVENANCE)


def load_entries() -> list[tuple[str, str]]:
    """The shipped corpus as (headword, body) pairs, in file order. Checks the file's sha256."""
    raw = resources.files("ess.paper.e6").joinpath("data", CORPUS_FILE).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CORPUS_SHA256:
        raise RuntimeError(
            f"corpus file {CORPUS_FILE} has sha256 {digest}, expected {CORPUS_SHA256}: "
            "the shipped text was changed"
        )
    lines = gzip.decompress(raw).decode("utf-8").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


def split_sentences(text: str) -> list[str]:
    """Split prose at sentence ends (. ! ?, maybe a closing quote, then whitespace)."""
    return [s for s in _SENTENCE_END.split(text) if s]


def pack_sentences(sentences: list[str], max_chars: int) -> list[str]:
    """Greedily pack consecutive sentences into chunks of at most max_chars characters.

    A single sentence longer than max_chars is cut at the last space before max_chars (or hard
    at max_chars when it has none), so every chunk fits.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        while len(sentence) > max_chars:  # an over-long sentence: cut at a word boundary
            cut = sentence.rfind(" ", 1, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            if current:
                chunks.append(current)
                current = ""
            chunks.append(sentence[:cut].rstrip())
            sentence = sentence[cut:].lstrip()
        candidate = f"{current} {sentence}" if current else sentence
        if len(candidate) <= max_chars:
            current = candidate
        else:
            chunks.append(current)
            current = sentence
    if current:
        chunks.append(current)
    return chunks


def entry_split(headword: str) -> str:
    """The split of a corpus entry: "eval" for about 1 / EVAL_MODULUS of them, else "train".

    Decided by the sha256 of the headword alone, so the split is the same on every machine and
    does not depend on passage lengths or seeds: E6 traces models on "eval" passages, and the
    small models trained here (`train_language_model`) never see them.
    """
    digest = int(hashlib.sha256(headword.encode("utf-8")).hexdigest()[:8], 16)
    return "eval" if digest % EVAL_MODULUS == 0 else "train"


def load_passages(
    min_chars: int = 200, max_chars: int = 1000, seed: int = 0, split: str | None = None
) -> list[str]:
    """Paragraph-sized passages of the corpus, in a seeded random order.

    Each entry becomes "headword: body" (a glossary paragraph). Entries longer than max_chars
    are cut at sentence ends into chunks of at most max_chars (`pack_sentences`); chunks shorter
    than min_chars are dropped. The passages are then permuted with numpy's default_rng(seed).
    split: None = every entry; "train" or "eval" = only the entries `entry_split` puts there.
    Deterministic: the same arguments give the same list on every machine. No passage holds a
    newline. Returns list[str]; the provenance is `corpus_provenance()`.
    """
    if min_chars < 1:
        raise ValueError(f"min_chars must be >= 1, got {min_chars}")
    if max_chars < min_chars:
        raise ValueError(f"max_chars ({max_chars}) must be >= min_chars ({min_chars})")
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
    passages = []
    for headword, body in load_entries():
        if split is not None and entry_split(headword) != split:
            continue
        chunks = pack_sentences(split_sentences(f"{headword}: {body}"), max_chars)
        passages.extend(c for c in chunks if len(c) >= min_chars)
    if not passages:
        raise ValueError(f"no passage has between {min_chars} and {max_chars} characters")
    order = np.random.default_rng(seed).permutation(len(passages))
    return [passages[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Bigram recall


def bigram_occurrence(input_ids: np.ndarray) -> np.ndarray:
    """Occurrence number of the bigram each token completes.

    input_ids: (B, L) integers -> (B, L) int64: at t >= 1, how many times the bigram
    (x_{t-1}, x_t) occurs at positions 1..t of its row (1 = first occurrence); 0 at t = 0.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (B, L), got {ids.shape}")
    counts = np.zeros(ids.shape, dtype=np.int64)
    for b, row in enumerate(ids.tolist()):
        seen: dict[tuple[int, int], int] = {}
        for t in range(1, len(row)):
            key = (row[t - 1], row[t])
            seen[key] = seen.get(key, 0) + 1
            counts[b, t] = seen[key]
    return counts


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> np.ndarray:
    """log p(x_t | x_<t) read from next-token logits.

    logits: (B, L, V), position t predicting token t+1; input_ids: (B, L) ->
    (B, L) float64 with log p(x_t) at t >= 1 (from logits[:, t-1]) and NaN at t = 0.
    """
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits must have shape (B, L, V) matching input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(logits.shape)}"
        )
    scores = logits[:, :-1].float()  # float32: a (L, V) float64 copy can take gigabytes
    target = input_ids[:, 1:, None].long().to(scores.device)
    picked = scores.gather(-1, target).squeeze(-1) - torch.logsumexp(scores, dim=-1)
    out = np.full(tuple(input_ids.shape), np.nan)
    out[:, 1:] = picked.double().cpu().numpy()
    return out


def _logits_of(logits_fn: Callable, input_ids: torch.Tensor) -> torch.Tensor:
    """Call a model or function; unwrap transformers' output object or a tuple to the logits.

    A torch module gets the ids on the device of its first parameter.
    """
    if isinstance(logits_fn, torch.nn.Module):
        parameter = next(logits_fn.parameters(), None)
        if parameter is not None:
            input_ids = input_ids.to(parameter.device)
    with torch.no_grad():
        out = logits_fn(input_ids)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"logits_fn must return a (B, L, V) tensor, got {type(out).__name__}")
    return out


def _slice_summary(logprobs: np.ndarray) -> dict[str, float]:
    """Count, mean log-prob and perplexity exp(-mean) of a set of token log-probs."""
    if logprobs.size == 0:
        return {"n": 0, "logprob": float("nan"), "ppl": float("nan")}
    mean = float(logprobs.mean())
    return {"n": int(logprobs.size), "logprob": mean, "ppl": float(np.exp(-mean))}


def first_gap(input_ids: np.ndarray) -> np.ndarray:
    """Distance back to the bigram's first occurrence.

    input_ids: (B, L) -> (B, L) int64: at t >= 1, t minus the position where the bigram
    (x_{t-1}, x_t) first completed in its row (0 at its first occurrence and at t = 0).
    """
    ids = np.asarray(input_ids)
    gaps = np.zeros(ids.shape, dtype=np.int64)
    for b, row in enumerate(ids.tolist()):
        first: dict[tuple[int, int], int] = {}
        for t in range(1, len(row)):
            gaps[b, t] = t - first.setdefault((row[t - 1], row[t]), t)
    return gaps


def bigram_recall(
    logits_fn: Callable,
    input_ids: torch.Tensor | np.ndarray,
    min_distance: int = 1,
    n_boot: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Bigram-recall score of a causal LM on a token sequence.

    logits_fn: a transformers causal LM, a torch module or any callable taking (B, L) int64
    token ids and returning (B, L, V) next-token logits (or an object with `.logits`).
    input_ids: (B, L) or (L,). min_distance: a second occurrence counts only if the bigram's
    first occurrence completed at least this many tokens earlier (1 = any; larger values leave
    out local repeats).

    Returns a dict with, for each slice of completing tokens x_t (t >= 1):
      first_*   first occurrence of the bigram (x_{t-1}, x_t) in its row;
      second_*  exactly its second occurrence (that satisfies min_distance): the recall slice;
      repeat_*  any occurrence after the first (no distance condition);
    the fields n_*, logprob_* (mean natural-log probability) and ppl_* (exp(-logprob_*)); and
    recall_gain = logprob_second - logprob_first (nats; larger = better recall) and
    ppl_ratio = ppl_second / ppl_first (smaller = better recall). n_boot > 0 adds
    recall_gain_lo, recall_gain_hi: its percentile-bootstrap CI over tokens (`recall_gain_ci`).
    """
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.detach().cpu().long()
    else:
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"input_ids must have shape (B, L) with L >= 2, got {tuple(ids.shape)}")
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    # one row at a time: a (B, L, V) logits tensor of a 262k-token vocabulary takes gigabytes
    logprobs = np.concatenate(
        [token_logprobs(_logits_of(logits_fn, row), row) for row in ids[:, None]]
    )
    counts = bigram_occurrence(ids.numpy())
    second = (counts == 2) & (first_gap(ids.numpy()) >= min_distance)
    result: dict[str, float] = {}
    for name, mask in (("first", counts == 1), ("second", second), ("repeat", counts >= 2)):
        summary = _slice_summary(logprobs[mask])
        result.update({f"{key}_{name}": value for key, value in summary.items()})
    result["recall_gain"] = result["logprob_second"] - result["logprob_first"]
    result["ppl_ratio"] = result["ppl_second"] / result["ppl_first"]
    if n_boot > 0:
        lo, hi = recall_gain_ci(logprobs[counts == 1], logprobs[second], n_boot, confidence, seed)
        result.update(recall_gain_lo=lo, recall_gain_hi=hi)
    return result


def recall_gain_ci(
    first: np.ndarray, second: np.ndarray, n_boot: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the recall gain mean(second) - mean(first) over tokens: the
    first and second occurrences' log-probabilities resampled independently
    (ess.paper.stats.bootstrap_mean_difference_ci). NaN, NaN when a slice is empty."""
    from ess.paper.stats import bootstrap_mean_difference_ci

    return bootstrap_mean_difference_ci(first, second, n_boot, confidence, seed)


# ---------------------------------------------------------------------------------------------
# Small language models trained on the corpus (E6 beyond pretrained transformers)
#
# E6's pretrained models are all softmax attention. To trace linear attention, gated
# recurrences and SSMs on the same text, the workflow trains ess.paper.training.models.LanguageModel
# with those mixers here, on the "train" entries (`entry_split`), by next-token prediction on the
# passages joined by the E6 delimiters (as documents are packed in pretraining), with a
# byte-level BPE tokenizer trained on the same passages.

LM_EOS = "<|endoftext|>"
LM_BOS = "<|startoftext|>"
LM_END_OF_TURN = "<|im_end|>"  # one of ess.paper.e6.delimiters.END_OF_TURN_TOKENS


def train_tokenizer(texts: list[str], vocab_size: int = 4096) -> Any:
    """A byte-level BPE tokenizer (transformers PreTrainedTokenizerFast) trained on `texts`.

    Special tokens: eos LM_EOS, bos LM_BOS and the chat end-of-turn token LM_END_OF_TURN, so
    every E6 delimiter (ess.paper.e6.delimiters.delimiter_tokens) exists. Deterministic for fixed
    texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[LM_EOS, LM_BOS, LM_END_OF_TURN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=LM_EOS,
        bos_token=LM_BOS,
        additional_special_tokens=[LM_END_OF_TURN],
    )


def language_model_stream(tokenizer: Any, passages: list[str], seed: int = 0) -> torch.Tensor:
    """(T,) int64: the passages in order, each followed by a delimiter drawn (numpy
    default_rng(seed)) uniformly from ess.paper.e6.delimiters.DELIMITERS with that delimiter's
    tokens.

    Passages are encoded bare, without special tokens, as in E6's delimited sequences.
    """
    from ess.paper.e6.delimiters import DELIMITERS, delimiter_tokens, encode

    separators = [delimiter_tokens(tokenizer, name)[0] for name in DELIMITERS]
    choice = np.random.default_rng(seed).integers(0, len(separators), size=len(passages))
    ids: list[int] = []
    for passage, k in zip(passages, choice.tolist(), strict=True):
        ids.extend(encode(tokenizer, passage))
        ids.extend(separators[k])
    return torch.tensor(ids, dtype=torch.long)


def token_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(W, seq_len + 1): consecutive non-overlapping windows of a (T,) stream (the rest is
    dropped); inputs are [:, :-1], next-token targets [:, 1:]."""
    n_windows = (tokens.numel() - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"a stream of {tokens.numel()} tokens holds no window of {seq_len} + 1")
    index = torch.arange(n_windows)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return tokens[index]


@torch.no_grad()
def next_token_loss(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int) -> float:
    """Mean next-token cross-entropy (nats) of `model` over the windows of a (T,) stream."""
    windows = token_windows(tokens, seq_len)
    total = 0.0
    for window in windows:
        logits = model(window[None, :-1])
        total += F.cross_entropy(logits[0].float(), window[1:], reduction="sum").item()
    return total / (windows.shape[0] * seq_len)


def language_model_configs(
    train: dict, n_layers: int, vocab_size: int, device: str = "cpu"
) -> tuple[Any, Any]:
    """(ModelConfig, TrainConfig) of a small LM from a config's models.<name>.train entry
    (schema $defs/language_model): the one place that maps those keys to the dataclasses, for
    rule train_language_model and for the check before any job (ess.paper.config_checks)."""
    from ess.paper.training.model_config import ModelConfig
    from ess.paper.training.train import TrainConfig

    model_config = ModelConfig(
        vocab_size=vocab_size,
        d_model=train["d_model"],
        n_layers=n_layers,
        layers=train["layers"],
        n_heads=train["n_heads"],
        state_size=train["state_size"],
    )
    train_config = TrainConfig(
        steps=train["steps"],
        batch_size=train["batch_size"],
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        warmup_steps=train["warmup_steps"],
        seed=train["seed"],
        log_every=train.get("log_every", 0),
        device=device,
    )
    return model_config, train_config


def train_language_model(
    model_config: Any, tokens: torch.Tensor, seq_len: int, train_config: Any
) -> tuple[Any, list[float]]:
    """Train a fresh ess.paper.training.models.LanguageModel(model_config) by next-token prediction.

    tokens: (T,) int64 stream (`language_model_stream`), cut into `token_windows` of seq_len;
    train_config: ess.paper.training.train.TrainConfig (steps, batch_size, lr with warmup and cosine
    decay, weight_decay, grad_clip, seed, device). torch.manual_seed(seed) fixes the initialisation
    and a generator seeded with seed the order of the windows (the loop is
    ess.paper.training.train.fit). Returns (the model in eval mode on the CPU, the loss of every
    step).
    """
    from ess.paper.training.models import LanguageModel
    from ess.paper.training.train import fit, loss_gradient

    if int(tokens.max()) >= model_config.vocab_size:
        raise ValueError(
            f"token id {int(tokens.max())} >= model vocab_size={model_config.vocab_size}"
        )
    torch.manual_seed(train_config.seed)
    device = torch.device(train_config.device)
    model = LanguageModel(model_config).to(device)
    windows = token_windows(tokens, seq_len).to(device)

    def batch_loss(index: torch.Tensor) -> tuple[torch.Tensor, None]:
        batch = windows[index.to(device)]
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), None

    losses = fit(model, windows.shape[0], loss_gradient(batch_loss), train_config).loss
    return model.cpu().eval(), losses
