"""Rule aggregate_e6: read the ESS tables, sequences and recall scores, and write the tables of
E6's statistics (ess.paper.e6.modulation.aggregate: the drop at every boundary, its bootstrap
summaries per layer and per model, the boundary-aligned profile, the hierarchy test and the
correlation of the drop with recall)."""

import json
from pathlib import Path

from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.e6 import modulation
from ess.paper.e6.sequences import read_sequence

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
p = smk.params

sequences = {}
for path in smk.input.sequences:
    parts = Path(path).parts  # results/sequences/{model}/{delimiter}/seed{seed}.json
    seed = int(Path(path).stem.removeprefix("seed"))
    sequences[parts[-3], parts[-2], seed] = read_sequence(path)
modulation.check_controls(sequences, reference=p.delimiters[0])
recall = [json.loads(Path(path).read_text()) for path in smk.input.recall]
# Each ESS table is reduced to its per-layer traces as it is read (bounded memory).
lengths = {(model, seed): built.length for (model, _, seed), built in sequences.items()}
per_layer = modulation.read_head_means(smk.input.ess, lengths)
tables = modulation.aggregate(
    per_layer,
    sequences,
    recall,
    controls=p.controls,
    before=p.before,
    after=p.after,
    offsets=p.offsets,
    hierarchy=p.hierarchy,
    correlation=p.correlation,
    n_boot=p.n_boot,
    confidence=p.confidence,
    seed=p.seed,
)

# Each table to its parquet file, and the summaries also to CSV (output `<name>_csv`).
outputs = {name: path for name, path in smk.output.items() if name != "manifests"}
for name, path in outputs.items():
    frame = tables[name.removesuffix("_csv")]
    with atomic_output(Path(path)) as temporary:
        if path.endswith(".csv"):
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
record(
    smk,
    list(outputs.values()),
    inputs=[*smk.input.ess, *smk.input.sequences, *smk.input.recall],
    started=started,
    seeds={"bootstrap": p.seed},
)
