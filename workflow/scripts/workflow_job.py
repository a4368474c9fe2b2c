"""What every workflow script does around its one library call: log to the job's log file,
and record a provenance manifest beside each output (ess.paper.provenance.write_manifest).

Imported by the scripts of workflow/scripts/ (Snakemake puts that folder on sys.path).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from ess.paper.provenance import write_manifest

# sha256 of each input this job has recorded: a model directory or operator file named by
# several manifests (one per seed) is hashed once per job.
INPUT_HASHES: dict[str, str] = {}


def start(smk) -> float:
    """Send this job's stdout, stderr and logging to its log file; return the start time."""
    started = time.time()
    log = open(smk.log[0], "w")  # kept open for the whole job
    sys.stdout = sys.stderr = log
    logging.basicConfig(
        stream=log, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
    )
    logging.info("rule %s, wildcards %s", smk.rule, dict(smk.wildcards.items()))
    logging.info("outputs %s", json.dumps(list(smk.output)))  # how `ess status` finds this log
    return started


def record(smk, outputs, inputs, started: float, seeds: dict | None = None, **extra) -> None:
    """Write `<output>.manifest.json` for each output: inputs, params (the config values the
    rule used), seeds, wildcards and anything in `extra`."""
    config = {name: value for name, value in smk.params.items()}
    extra = {"rule": smk.rule, "wildcards": dict(smk.wildcards.items()), **extra}
    for output in outputs:
        write_manifest(
            Path(output),
            inputs=[Path(path) for path in inputs],
            config=config,
            seeds=seeds,
            started=started,
            extra=extra,
            input_hashes=INPUT_HASHES,
        )


def load_model(smk):
    """The rule's model (input `model`, a transformers directory) on params.device in
    params.dtype, with torch using the job's threads (ess.paper.e6.fetch.load_causal_lm)."""
    import torch

    from ess.paper.e6.fetch import load_causal_lm

    torch.set_num_threads(smk.threads)
    model, _ = load_causal_lm(
        smk.input.model, getattr(torch, smk.params.dtype), smk.params.trust_remote_code
    )
    return model.to(smk.params.device)
