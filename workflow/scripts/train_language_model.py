"""Rule train_language_model: a small ess.paper.training.models.LanguageModel trained by next-token
prediction on the Jargon File's "train" entries joined by the E6 delimiters
(ess.paper.e6.text.train_language_model), with its BPE tokenizer, saved as a model directory
(ess.paper.e6.fetch.save_language_model)."""

from pathlib import Path

import torch
from workflow_job import record, start

from ess.paper.e6.fetch import save_language_model
from ess.paper.e6.text import (
    corpus_provenance,
    language_model_configs,
    language_model_stream,
    load_passages,
    next_token_loss,
    train_language_model,
    train_tokenizer,
)

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
p, t = smk.params, smk.params.train
passages = {
    split: load_passages(p.min_chars, p.max_chars, seed=t["seed"], split=split)
    for split in ("train", "eval")
}
tokenizer = train_tokenizer(passages["train"], t["vocab_size"])
streams = {
    split: language_model_stream(tokenizer, texts, seed=t["seed"])
    for split, texts in passages.items()
}
model_config, train_config = language_model_configs(t, p.n_layers, len(tokenizer), p.device)
model, losses = train_language_model(model_config, streams["train"], t["seq_len"], train_config)
eval_loss = next_token_loss(model, streams["eval"], t["seq_len"])
print(f"final train loss {losses[-1]:.3f}, eval loss {eval_loss:.3f} nats/token", flush=True)
summary = {
    "n_train_passages": len(passages["train"]),
    "n_train_tokens": int(streams["train"].numel()),
    "n_eval_tokens": int(streams["eval"].numel()),
    "final_train_loss": losses[-1],
    "eval_loss": eval_loss,
}
save_language_model(
    model,
    tokenizer,
    Path(smk.output.model),
    {"model_config": vars(model_config), "train": dict(t), **summary, "losses": losses},
)
record(
    smk,
    [smk.output.model],
    inputs=[],
    started=started,
    seeds={"init": t["seed"], "batches": t["seed"], "passages": t["seed"]},
    corpus=corpus_provenance(),
    **summary,
)
