# E1-E5, E7, E8: synthetic tasks -> trained models -> ESS of every trained layer -> one table of
# runs -> a notebook per figure or table. ess.experiments expands the `synthetic` config section
# into runs, {key: Run} (runs shared by experiments train once). A run key is also its results
# path: {task}/{difficulty}/{mixer pattern}/{tss}/{variant}/seed{seed}.

from ess.captions import notebook_settings
from ess.experiments import (
    cells,
    check_runs,
    published,
    run_inputs,
    run_of,
    run_path,
    synthetic_grid,
    task_fields,
    task_split_path,
)

SYNTHETIC_RUNS = synthetic_grid(config["synthetic"])
check_runs(
    SYNTHETIC_RUNS, config["ess"]["tolerance"], config["synthetic"]["ess"]["tolerances"]
)
# A cell is a run key without its seed: its seeds' ESS is measured in one job (one process
# start, one torch import, instead of one per run).
SYNTHETIC_SEEDS = config["synthetic"]["seeds"]
SYNTHETIC_CELLS = cells(SYNTHETIC_RUNS, SYNTHETIC_SEEDS)
SYNTHETIC_FIGURES, SYNTHETIC_TABLES = published(SYNTHETIC_RUNS)
# The config behind the numbers, stated in the notebooks' captions.
SYNTHETIC_SETTINGS = notebook_settings(config)
SYNTHETIC_AGGREGATE = {
    # one row per run: labels, test scores, mean over layers at ess.tolerance
    "runs": "results/aggregate/synthetic_runs.parquet",
    # one row per run x layer x tau of synthetic.ess.tolerances
    "layers": "results/aggregate/synthetic_layers.parquet",
    # one row per run x training step: loss, accuracy, lr
    "curves": "results/aggregate/synthetic_curves.parquet",
}


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


# ---------------------------------------------------------------------------------------------
# Figures and tables: one notebook each (notebooks/<name>.ipynb), all reading the aggregate.


rule synthetic_figure:
    input:
        **SYNTHETIC_AGGREGATE,
        notebook=notebook_path("{name}"),
    output:
        png=report(
            "results/figures/{name}.png",
            caption="../report/synthetic_figure.rst",
            category="Synthetic tasks (E1-E5, E7, E8)",
        ),
        pdf="results/figures/{name}.pdf",
        manifests=multiext(
            "results/figures/{name}", ".png.manifest.json", ".pdf.manifest.json"
        ),
        notebook="results/notebooks/{name}.ipynb",
    log:
        "results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(SYNTHETIC_FIGURES) or "(?!)",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=planned("synthetic_figure", "mem_mb"),
        runtime=planned("synthetic_figure", "runtime"),
    params:
        parameters=notebook_parameters(
            ["notebook", *SYNTHETIC_AGGREGATE],
            ["png", "pdf"],
            settings=SYNTHETIC_SETTINGS,
        ),
    message:
        "Figure {wildcards.name}"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule synthetic_table:
    input:
        **SYNTHETIC_AGGREGATE,
        notebook=notebook_path("{name}"),
    output:
        csv=report(
            "results/tables/{name}.csv",
            caption="../report/synthetic_table.rst",
            category="Synthetic tasks (E1-E5, E7, E8)",
        ),
        md="results/tables/{name}.md",
        tex="results/tables/{name}.tex",
        manifests=multiext(
            "results/tables/{name}",
            ".csv.manifest.json",
            ".md.manifest.json",
            ".tex.manifest.json",
        ),
        notebook="results/notebooks/{name}.ipynb",
    log:
        "results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(SYNTHETIC_TABLES) or "(?!)",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=planned("synthetic_table", "mem_mb"),
        runtime=planned("synthetic_table", "runtime"),
    params:
        parameters=notebook_parameters(
            ["notebook", *SYNTHETIC_AGGREGATE],
            ["csv", "md", "tex"],
            settings=SYNTHETIC_SETTINGS,
        ),
    message:
        "Table {wildcards.name}"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"
