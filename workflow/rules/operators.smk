# From a model and its token sequences to ESS: run the model ONCE per sequence and keep each
# layer's operator factors (capture_operators), then one job per group of layers
# (models.<model>.layers_per_job) computes ESS at the split positions E6 uses (around every
# boundary, plus a coarse stride) of every head/channel, with the theoretical state size
# (measure_e6_ess). One job covers every seed (passage order) of a model and task: a job pays seconds
# to start and load the model, a sequence costs less than that.


rule capture_operators:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
        sequences=lambda wildcards: seed_paths(
            task_sequence_path, wildcards.model, wildcards.task
        ),
    output:
        operators=[
            maybe_temp(path)
            for path in seed_paths(operators_path, "{model}", "{task}")
        ],
        manifests=[
            manifest(path) for path in seed_paths(operators_path, "{model}", "{task}")
        ],
    log:
        "results/logs/capture_operators/{model}/{task}.log",
    benchmark:
        "results/benchmarks/capture_operators/{model}/{task}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: threads_of(config, "capture_operators")
    resources:
        mem_mb=planned("capture_operators", "mem_mb"),
        runtime=planned("capture_operators", "runtime"),
        gpu=planned("capture_operators", "gpu"),
    params:
        condition=lambda wildcards: e6_condition(wildcards.task),
        dtype=lambda wildcards: model_config(wildcards.model)["dtype"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
        channel_stride=lambda wildcards: model_config(wildcards.model)["channel_stride"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Capturing the operators of every layer of {wildcards.model} on {wildcards.task} (every seed)"
    script:
        "../scripts/capture_operators.py"


rule measure_e6_ess:
    input:
        operators=seed_paths(operators_path, "{model}", "{task}"),
        operators_manifests=[
            manifest(path) for path in seed_paths(operators_path, "{model}", "{task}")
        ],
        sequences=lambda wildcards: seed_paths(
            task_sequence_path, wildcards.model, wildcards.task
        ),
    output:
        ess=seed_paths(ess_path_of_part, "{model}", "{task}", "{part}"),
        manifests=[
            manifest(path)
            for path in seed_paths(ess_path_of_part, "{model}", "{task}", "{part}")
        ],
    log:
        "results/logs/measure_e6_ess/{model}/{task}/part{part}.log",
    benchmark:
        "results/benchmarks/measure_e6_ess/{model}/{task}/part{part}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: threads_of(config, "measure_e6_ess")
    resources:
        mem_mb=planned("measure_e6_ess", "mem_mb"),
        runtime=planned("measure_e6_ess", "runtime"),
        gpu=planned("measure_e6_ess", "gpu"),
    params:
        seeds=e6_seeds(),
        condition=lambda wildcards: e6_condition(wildcards.task),
        layers=lambda wildcards: layer_parts(wildcards.model)[int(wildcards.part)],
        tolerance=config["ess"]["tolerance"],
        tolerances=config["e6"]["tolerances"],
        relative=config["ess"]["relative"],
        position_stride=config["e6"]["position_stride"],
        offsets=config["e6"]["profile"]["offsets"],
        before=config["e6"]["drop"]["before"],
        after=config["e6"]["drop"]["after"],
        channel_stride=lambda wildcards: model_config(wildcards.model)["channel_stride"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
    message:
        "ESS of layers {params.layers} of {wildcards.model} on {wildcards.task} (every seed)"
    script:
        "../scripts/measure_e6_ess.py"
