# E1-E5, E7, E8: synthetic tasks -> trained models -> ESS of every trained layer -> one table of
# runs -> a notebook per figure or table (notebooks.smk). ess.paper.synthetic.experiments
# expands the `synthetic` config section into runs, {key: Run} (runs shared by experiments train
# once). A run key is also its results path: {task}/{difficulty}/{mixer pattern}/{tss}/{variant}/seed{seed}.

from ess.paper.results import SYNTHETIC_AGGREGATE, run_inputs, run_path, task_split_path
from ess.paper.synthetic.experiments import synthetic_grid
from ess.paper.synthetic.grid import cells, run_of, task_fields

# (checked by ess.paper.config_checks.check_config in common.smk, before any rule)
SYNTHETIC_RUNS = synthetic_grid(config["synthetic"])
# A cell is a run key without its seed: its seeds' ESS is measured in one job (one process
# start, one torch import, instead of one per run).
SYNTHETIC_SEEDS = config["synthetic"]["seeds"]
SYNTHETIC_CELLS = cells(SYNTHETIC_RUNS, SYNTHETIC_SEEDS)


rule make_task_split:
    output:
        split=task_split_path("{task}", "{difficulty}", "{split}"),
        manifest=manifest(task_split_path("{task}", "{difficulty}", "{split}")),
    log:
        "results/logs/make_task_split/{task}/{difficulty}/{split}.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=planned("make_task_split", "mem_mb"),
        runtime=planned("make_task_split", "runtime"),
    params:
        task=lambda wildcards: task_fields(
            config["synthetic"],
            wildcards.task,
            wildcards.difficulty,
            "synthetic.tasks",
        ),
    message:
        "The {wildcards.split} split of {wildcards.task} at {wildcards.difficulty}"
    script:
        "../scripts/make_task_split.py"


rule train_synthetic:
    input:
        unpack(lambda wildcards: run_inputs(run_of(SYNTHETIC_RUNS, wildcards.run))),
    output:
        model=run_path("{run}", "model.safetensors"),
        curves=run_path("{run}", "curves.csv"),
        metrics=run_path("{run}", "metrics.json"),
        manifests=[
            manifest(run_path("{run}", name))
            for name in ("model.safetensors", "curves.csv", "metrics.json")
        ],
    log:
        "results/logs/train_synthetic/{run}.log",
    benchmark:
        "results/benchmarks/train_synthetic/{run}.tsv"
    # a run longer than the time limit resumes from its state on the next attempt
    retries: train_retries(planned_jobs().values(), config)
    conda:
        "../../envs/torch.yaml"
    threads: threads_of(config, "train_synthetic")
    resources:
        mem_mb=planned("train_synthetic", "mem_mb"),
        runtime=planned("train_synthetic", "runtime"),
        gpu=planned("train_synthetic", "gpu"),
    params:
        spec=lambda wildcards: planned_spec(
            run_of(SYNTHETIC_RUNS, wildcards.run).spec, wildcards.run
        ),
        labels=lambda wildcards: run_of(
            SYNTHETIC_RUNS, wildcards.run
        ).labels.job_labels(),
    message:
        "Training {wildcards.run}"
    script:
        "../scripts/train_synthetic.py"


rule measure_synthetic_ess:
    input:
        models=lambda wildcards: [
            run_path(run, "model.safetensors")
            for run in SYNTHETIC_CELLS[wildcards.cell]
        ],
        model_manifests=lambda wildcards: [
            manifest(run_path(run, "model.safetensors"))
            for run in SYNTHETIC_CELLS[wildcards.cell]
        ],
        test=lambda wildcards: run_inputs(
            run_of(SYNTHETIC_RUNS, SYNTHETIC_CELLS[wildcards.cell][0])
        )["test"],
    output:
        ess=[
            run_path(f"{{cell}}/seed{seed}", "ess.parquet") for seed in SYNTHETIC_SEEDS
        ],
        manifests=[
            manifest(run_path(f"{{cell}}/seed{seed}", "ess.parquet"))
            for seed in SYNTHETIC_SEEDS
        ],
    log:
        "results/logs/measure_synthetic_ess/{cell}.log",
    conda:
        "../../envs/torch.yaml"
    threads: threads_of(config, "measure_synthetic_ess")
    resources:
        mem_mb=planned("measure_synthetic_ess", "mem_mb"),
        runtime=planned("measure_synthetic_ess", "runtime"),
        gpu=planned("measure_synthetic_ess", "gpu"),
    params:
        runs=lambda wildcards: SYNTHETIC_CELLS[wildcards.cell],
        n_sequences=config["synthetic"]["ess"]["n_sequences"],
        device=config["synthetic"]["ess"]["device"],
        tolerances=config["synthetic"]["ess"]["tolerances"],
        relative=config["ess"]["relative"],
    message:
        "ESS of every layer of {wildcards.cell} (every seed)"
    script:
        "../scripts/measure_synthetic_ess.py"


rule aggregate_synthetic:
    input:
        metrics=[run_path(run, "metrics.json") for run in SYNTHETIC_RUNS],
        curves=[run_path(run, "curves.csv") for run in SYNTHETIC_RUNS],
        ess=[run_path(run, "ess.parquet") for run in SYNTHETIC_RUNS],
    output:
        **SYNTHETIC_AGGREGATE,
        manifests=[manifest(path) for path in SYNTHETIC_AGGREGATE.values()],
    log:
        "results/logs/aggregate/synthetic.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=planned("aggregate_synthetic", "mem_mb"),
        runtime=planned("aggregate_synthetic", "runtime"),
    params:
        runs=list(SYNTHETIC_RUNS),
        labels={
            key: {
                "experiments": ",".join(run.experiments),
                **run.labels.table_labels(),
            }
            for key, run in SYNTHETIC_RUNS.items()
        },
        tolerance=config["ess"]["tolerance"],
        curve_points=config["synthetic"]["curve_points"],
    message:
        "Synthetic runs: one table of accuracy and ESS per run and per layer"
    script:
        "../scripts/aggregate_synthetic.py"
