"""Rule make_sequence: for every delimiter and seed, passages of the shipped corpus
(ess.paper.e6.text.load_passages, its "eval" entries: the models trained here never saw them) in
that seed's order, joined by the delimiter, with its controls
(ess.paper.e6.delimiters.build_delimited_sequence), as one JSON file each. One job per model: its
tokenizer loads once."""

from pathlib import Path

from transformers import AutoTokenizer
from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.e6.delimiters import build_delimited_sequence
from ess.paper.e6.sequences import write_sequence
from ess.paper.e6.text import corpus_provenance, load_passages

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params
tokenizer = AutoTokenizer.from_pretrained(
    smk.input.model, trust_remote_code=p.trust_remote_code, local_files_only=True
)
# One passage order per seed, shared by every delimiter.
passages = {
    seed: load_passages(p.min_chars, p.max_chars, seed=seed, split="eval") for seed in p.seeds
}
# smk.output.sequences is in model_sequences order: each delimiter, then each seed
orders = [(delimiter, seed) for delimiter in p.delimiters for seed in p.seeds]
for (delimiter, seed), output in zip(orders, smk.output.sequences, strict=True):
    sequence = build_delimited_sequence(
        tokenizer, passages[seed], delimiter, p.n_tokens, seed=seed, add_bos=p.add_bos
    )
    with atomic_output(Path(output)) as temporary:
        write_sequence(sequence, temporary)
    record(
        smk,
        [output],
        inputs=[smk.input.model],
        started=started,
        seeds={"passages": seed, "order": seed},
        corpus=corpus_provenance(),
        delimiter=delimiter,
        n_boundaries=len(sequence.boundaries),
        separator=sequence.separator_text,
    )
    print(f"{delimiter} seed {seed}: {len(sequence.boundaries)} boundaries", flush=True)
