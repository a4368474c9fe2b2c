# Model weights: fetch once per model (pinned source, sha256 checked), then convert to a plain
# transformers directory (a GGUF is dequantised to safetensors once, here). fetch_model is the
# only job that may reach the Hub: with fetch.on_submit_node it runs on the node that runs
# snakemake (a cluster's login node has the network, its compute nodes often do not).


rule fetch_model:
    output:
        model=directory("results/models/{model}/fetched"),
        manifest="results/models/{model}/fetched.manifest.json",
    log:
        "results/logs/fetch_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_model/{model}.tsv"
    localrule: config["fetch"]["on_submit_node"]
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=planned("fetch_model", "mem_mb"),
        runtime=planned("fetch_model", "runtime"),
    params:
        source=lambda wildcards: model_config(wildcards.model)["source"],
        sha256=lambda wildcards: model_config(wildcards.model)["sha256"],
        gguf_file=lambda wildcards: model_config(wildcards.model)["gguf_file"],
        hf_home=config["fetch"]["hf_home"],
    message:
        "Fetching the weights of {wildcards.model} from {params.source}"
    script:
        "../scripts/fetch_model.py"


rule convert_model:
    input:
        fetched=rules.fetch_model.output.model,
        fetched_manifest=rules.fetch_model.output.manifest,
    output:
        model=directory("results/models/{model}/hf"),
        manifest="results/models/{model}/hf.manifest.json",
    log:
        "results/logs/convert_model/{model}.log",
    benchmark:
        "results/benchmarks/convert_model/{model}.tsv"
    wildcard_constraints:
        model=model_name_pattern(
            [name for name in config["models"] if name not in trained_models()]
        ),
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=planned("convert_model", "mem_mb"),
        runtime=planned("convert_model", "runtime"),
    params:
        gguf_file=lambda wildcards: model_config(wildcards.model)["gguf_file"],
    message:
        "Converting {wildcards.model} to a transformers directory (safetensors)"
    script:
        "../scripts/convert_model.py"


# Models trained here (source train:jargon) take the place of fetch + convert: their directory
# results/models/{model}/hf holds an ess.paper.training.models.LanguageModel and its BPE tokenizer.
rule train_language_model:
    output:
        model=directory("results/models/{model}/hf"),
        manifest="results/models/{model}/hf.manifest.json",
    log:
        "results/logs/train_language_model/{model}.log",
    benchmark:
        "results/benchmarks/train_language_model/{model}.tsv"
    wildcard_constraints:
        model=model_name_pattern(trained_models()),
    conda:
        "../../envs/torch.yaml"
    threads: threads_of(config, "train_language_model")
    resources:
        mem_mb=planned("train_language_model", "mem_mb"),
        runtime=planned("train_language_model", "runtime"),
        gpu=planned("train_language_model", "gpu"),
    params:
        n_layers=lambda wildcards: model_config(wildcards.model)["n_layers"],
        train=lambda wildcards: model_config(wildcards.model)["train"],
        min_chars=config["e6"]["passages"]["min_chars"],
        max_chars=config["e6"]["passages"]["max_chars"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
    message:
        "Training {wildcards.model} on the Jargon File's train entries"
    script:
        "../scripts/train_language_model.py"
