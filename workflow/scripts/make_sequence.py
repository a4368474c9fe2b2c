"""Rule make_sequence: passages of the shipped corpus (ess.text.load_passages, its "eval" entries:
the models trained here never saw them) joined by one delimiter, with its controls
(ess.delimiters.build_delimited_sequence), as a JSON file."""

from pathlib import Path

from sequence_io import write_sequence
from transformers import AutoTokenizer
from workflow_job import record, start

from ess.delimiters import build_delimited_sequence
from ess.provenance import atomic_output
from ess.text import corpus_provenance, load_passages

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
seed = int(smk.wildcards.seed)
tokenizer = AutoTokenizer.from_pretrained(
    smk.input.model, trust_remote_code=smk.params.trust_remote_code, local_files_only=True
)
passages = load_passages(smk.params.min_chars, smk.params.max_chars, seed=seed, split="eval")
sequence = build_delimited_sequence(
    tokenizer,
    passages,
    smk.wildcards.delimiter,
    smk.params.n_tokens,
    seed=seed,
    add_bos=smk.params.add_bos,
)
with atomic_output(Path(smk.output.sequence)) as temporary:
    write_sequence(sequence, temporary)
record(
    smk,
    [smk.output.sequence],
    inputs=[smk.input.model],
    started=started,
    seeds={"passages": seed, "order": seed},
    corpus=corpus_provenance(),
    n_boundaries=len(sequence.boundaries),
    separator=sequence.separator_text,
)
