"""Rule make_task_split: one split of a synthetic task, generated from its seed and cached
(ess.paper.training.tasks.save_split)."""

from pathlib import Path

from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.training.tasks import TaskConfig, save_split

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
task = TaskConfig(**smk.params.task)
with atomic_output(Path(smk.output.split)) as temporary:
    save_split(task, smk.wildcards.split, temporary)
seed = task.train_seed if smk.wildcards.split == "train" else task.test_seed
record(smk, [smk.output.split], inputs=[], started=started, seeds={"split": seed})
