# Model weights: fetch once per model (pinned source, sha256 checked), then convert to a plain
# transformers directory (a GGUF is dequantised to safetensors once, here).


rule fetch_model:
    output:
        model=directory("results/models/{model}/fetched"),
        manifest="results/models/{model}/fetched.manifest.json",
    log:
        "results/logs/fetch_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_model/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=resources_for("fetch_model", "mem_mb", 2000),
        runtime=resources_for("fetch_model", "runtime", 30),
    params:
        source=lambda wildcards: model_config(wildcards.model)["source"],
        sha256=lambda wildcards: model_config(wildcards.model)["sha256"],
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
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=resources_for("convert_model", "mem_mb", 4000),
        runtime=resources_for("convert_model", "runtime", 30),
    params:
        gguf_file=lambda wildcards: model_config(wildcards.model)["gguf_file"],
    message:
        "Converting {wildcards.model} to a transformers directory (safetensors)"
    script:
        "../scripts/convert_model.py"
