"""Rule bigram_recall: the model's bigram-recall score on one E6 sequence
(ess.text.bigram_recall), as JSON."""

import json
from pathlib import Path

from sequence_io import read_sequence
from workflow_job import load_model, record, start

from ess.provenance import atomic_output
from ess.text import bigram_recall

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
sequence = read_sequence(smk.input.sequence, smk.params.condition)
model = load_model(smk)  # a transformers model or an ess.models.LanguageModel
score = bigram_recall(
    model,
    sequence.input_ids,
    min_distance=smk.params.min_distance,
    n_boot=smk.params.n_boot,
    confidence=smk.params.confidence,
    seed=smk.params.seed,
)
result = {"model": smk.wildcards.model, "seed": int(smk.wildcards.seed), **score}
with atomic_output(Path(smk.output.recall)) as temporary:
    temporary.write_text(json.dumps(result, indent=2) + "\n")
record(
    smk,
    [smk.output.recall],
    inputs=[smk.input.model, smk.input.sequence],
    started=started,
    seeds={"bootstrap": smk.params.seed},
)
