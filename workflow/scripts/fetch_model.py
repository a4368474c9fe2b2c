"""Rule fetch_model: ess.paper.e6.fetch.fetch_model into results/models/{model}/fetched, plus a
manifest recording the source, the Hub commit an hf source resolved to, and the sha256 of what was
fetched (the root of every audit chain)."""

import os
from pathlib import Path

from workflow_job import record, start

from ess.paper.e6.fetch import fetch_model, fetched_commit

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
hf_home = smk.params.hf_home
if hf_home:  # the token (HF_HOME/token) and the cache live there
    os.environ["HF_HOME"] = str(Path(hf_home).expanduser())
dest = Path(smk.output.model)
fetched = fetch_model(
    smk.params.source,
    dest,
    sha256=smk.params.sha256,
    cache_dir=Path(hf_home).expanduser() / "hub" if hf_home else None,
    gguf_file=smk.params.gguf_file,
)
record(
    smk,
    [dest],
    inputs=[],
    started=started,
    fetched=str(fetched.relative_to(dest.parent)),
    hub_commit=fetched_commit(dest),
)
