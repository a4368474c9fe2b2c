"""Rule bigram_recall: the model's bigram-recall score (ess.paper.e6.text.bigram_recall) over the
sequences of one E6 task for passage orders 0 .. orders-1, scored together, as JSON."""

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer
from workflow_job import load_model, record, start

from ess.outputs import atomic_output
from ess.paper.e6.delimiters import build_delimited_sequence
from ess.paper.e6.text import bigram_recall, corpus_provenance, load_passages

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
tokenizer = AutoTokenizer.from_pretrained(
    smk.input.model, trust_remote_code=p.trust_remote_code, local_files_only=True
)
rows = []
for seed in range(p.orders):
    passages = load_passages(p.min_chars, p.max_chars, seed=seed, split="eval")
    sequence = build_delimited_sequence(
        tokenizer, passages, p.delimiter, p.n_tokens, seed=seed, add_bos=p.add_bos
    )
    chosen = sequence if p.condition == "delimited" else sequence.controls[p.condition]
    rows.append(chosen.input_ids)
model = load_model(smk)  # a transformers model or an ess.paper.training.models.LanguageModel
score = bigram_recall(
    model,
    torch.cat(rows),
    min_distance=p.min_distance,
    n_boot=p.n_boot,
    confidence=p.confidence,
    seed=p.seed,
)
result = {"model": smk.wildcards.model, "orders": p.orders, **score}
with atomic_output(Path(smk.output.recall)) as temporary:
    temporary.write_text(json.dumps(result, indent=2) + "\n")
record(
    smk,
    [smk.output.recall],
    inputs=[smk.input.model],
    started=started,
    seeds={"bootstrap": p.seed, "passages": list(range(p.orders))},
    corpus=corpus_provenance(),
)
