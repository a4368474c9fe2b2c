"""Rule train_synthetic: one synthetic-task run (ess.paper.training.train.train) from its spec;
writes the checkpoint (safetensors), the per-step curves and the test scores.

Requeue: the training state is kept in resume.pt beside the outputs (TrainConfig.resume_state,
written every resume_every_steps / resume_every_minutes of the spec); a rerun of a killed or
timed-out job continues from it; it is deleted once every output is written."""

import csv
import dataclasses
import json
from pathlib import Path

import torch
from workflow_job import record, start

from ess.outputs import atomic_output
from ess.paper.synthetic.grid import memory_items, run_configs
from ess.paper.training.tasks import load_split
from ess.paper.training.train import load_checkpoint, save_checkpoint, train

smk = snakemake  # noqa: F821 - injected by Snakemake's script preamble
started = start(smk)
torch.set_num_threads(smk.threads)
model_config, task_config, train_config = run_configs(smk.params.spec)
resume_state = Path(smk.output.model).with_name("resume.pt")
train_config = dataclasses.replace(train_config, resume_state=str(resume_state))
splits = load_split(smk.input.train, task_config), load_split(smk.input.test, task_config)
teacher = load_checkpoint(smk.input.teacher[0]) if smk.input.teacher else None
print(f"model {model_config}\ntask {task_config}\ntrain {train_config}", flush=True)

result = train(model_config, task_config, train_config, teacher=teacher, splits=splits)
print(f"test accuracy {result.test_accuracy:.4f} after {result.seconds:.1f} s", flush=True)

with atomic_output(Path(smk.output.model)) as temporary:
    save_checkpoint(result.model, str(temporary))
with atomic_output(Path(smk.output.curves)) as temporary, open(temporary, "w", newline="") as f:
    curves = result.step_table()
    writer = csv.writer(f)
    writer.writerow(curves)
    writer.writerows(zip(*curves.values(), strict=True))
metrics = {
    "run": smk.wildcards.run,
    **smk.params.labels,
    "memory_items": memory_items(task_config),
    "steps": train_config.steps,
    "test_accuracy": result.test_accuracy,
    "test_loss": result.test_loss,
    "test_distillation_loss": result.test_distillation_loss,
    "final_train_loss": result.curves.loss[-1],
    "train_seconds": result.seconds,
    "spec": smk.params.spec,
}
with atomic_output(Path(smk.output.metrics)) as temporary:
    temporary.write_text(json.dumps(metrics, indent=2) + "\n")
resume_state.unlink(missing_ok=True)
record(
    smk,
    [smk.output.model, smk.output.curves, smk.output.metrics],
    inputs=[smk.input.train, smk.input.test, *smk.input.teacher],
    started=started,
    seeds={"train": train_config.seed},
)
