"""Rule convert_model: ess.paper.e6.fetch.convert_to_transformers (a GGUF is dequantised to
safetensors once) into results/models/{model}/hf, plus a manifest pointing back at the fetched
weights."""

from pathlib import Path

from workflow_job import record, start

from ess.paper.e6.fetch import convert_to_transformers

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
out_dir = convert_to_transformers(
    Path(smk.input.fetched), Path(smk.output.model), gguf_file=smk.params.gguf_file
)
record(smk, [out_dir], inputs=[smk.input.fetched], started=started)
