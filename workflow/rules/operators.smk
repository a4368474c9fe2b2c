# From a model and a token sequence to ESS: run the model ONCE per sequence and keep each
# layer's operator factors (capture_operators), then one job per group of layers
# (models.<model>.layers_per_job) computes ESS at every split position of every head/channel,
# with the theoretical state size (extract).


rule capture_operators:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
        sequence=lambda wildcards: task_sequence_path(
            wildcards.model, wildcards.task, wildcards.seed
        ),
    output:
        operators=maybe_temp(operators_path("{model}", "{task}", "{seed}")),
        manifest=manifest(operators_path("{model}", "{task}", "{seed}")),
    log:
        "results/logs/capture_operators/{model}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/capture_operators/{model}/{task}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resources_for("capture_operators", "threads", 1)
    resources:
        mem_mb=resources_for("capture_operators", "mem_mb", 4000),
        runtime=resources_for("capture_operators", "runtime", 20),
        gpu=resources_for("capture_operators", "gpu", 0),
    params:
        condition=lambda wildcards: e6_condition(wildcards.task),
        dtype=lambda wildcards: model_config(wildcards.model)["dtype"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Capturing the operators of every layer of {wildcards.model} on {wildcards.task} (seed {wildcards.seed})"
    script:
        "../scripts/capture_operators.py"


rule extract:
    input:
        operators=operators_path("{model}", "{task}", "{seed}"),
        operators_manifest=manifest(operators_path("{model}", "{task}", "{seed}")),
    output:
        ess=ess_path("{model}", "{task}", "{seed}", "{part}"),
        manifest=manifest(ess_path("{model}", "{task}", "{seed}", "{part}")),
    log:
        "results/logs/extract/{model}/{task}/seed{seed}/part{part}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{task}/seed{seed}/part{part}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resources_for("extract", "threads", 1)
    resources:
        mem_mb=resources_for("extract", "mem_mb", 2000),
        runtime=resources_for("extract", "runtime", 20),
        gpu=resources_for("extract", "gpu", 0),
    params:
        layers=lambda wildcards: layer_parts(wildcards.model)[int(wildcards.part)],
        tolerance=config["ess"]["tolerance"],
        relative=config["ess"]["relative"],
        position_stride=config["ess"]["position_stride"],
        channel_stride=lambda wildcards: model_config(wildcards.model)["channel_stride"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
    message:
        "ESS of layers {params.layers} of {wildcards.model} on {wildcards.task} (seed {wildcards.seed})"
    script:
        "../scripts/extract.py"
