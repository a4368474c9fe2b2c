"""Rule summary: results/summary.md from the run's published figures and tables, their
manifests and the key E6 table (ess.paper.summary.build_summary)."""

from pathlib import Path

from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.summary import build_summary

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)

output = Path(smk.output.summary)
text = build_summary(smk.input.published, smk.input.e6_table, base=str(output.parent))
with atomic_output(output) as temporary:
    temporary.write_text(text)
results = [path for path in smk.input.published if not path.endswith(".manifest.json")]
record(smk, [output], inputs=results, started=started)
