"""Rule fetch_model: ess.fetch.fetch_model into results/models/{model}/fetched, plus a manifest
recording the source and the sha256 of what was fetched (the root of every audit chain)."""

from pathlib import Path

from workflow_job import record, start

from ess.fetch import fetch_model

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
dest = Path(smk.output.model)
fetched = fetch_model(smk.params.source, dest, sha256=smk.params.sha256)
record(smk, [dest], inputs=[], started=started, fetched=str(fetched.relative_to(dest.parent)))
