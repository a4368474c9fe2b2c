# E6, state modulation in LLMs (the paper's Figure 7): ESS traced along real text whose passages
# are joined by a context delimiter, against controls without one. Per model, delimiter and
# seed: one token sequence (make_sequence); every task (delimiters and controls) is captured and
# extracted by the rules of operators.smk; aggregate turns ESS per position into drops at the
# delimiters with bootstrap CIs; one rule per figure or table runs its notebook.

E6_AGGREGATE = {
    # ESS per split position, mean over the heads/channels of each layer
    "traces": "results/aggregate/e6_traces.parquet",
    # one row per boundary, layer (-1 = mean over layers), control and ESS kind
    "boundaries": "results/aggregate/e6_boundary_drops.parquet",
    # drop_vs_control per layer, bootstrap CI over boundaries (and seeds)
    "by_layer": "results/aggregate/e6_drop_by_layer.parquet",
    "by_layer_csv": "results/aggregate/e6_drop_by_layer.csv",
    # the same on the mean over layers, with each model's bigram recall
    "by_model": "results/aggregate/e6_drop.parquet",
    "by_model_csv": "results/aggregate/e6_drop.csv",
    # correlation of the drop with recall across models (NaN with fewer than 3 models)
    "correlation": "results/aggregate/e6_recall_correlation.parquet",
    "correlation_csv": "results/aggregate/e6_recall_correlation.csv",
}


rule make_sequence:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
    output:
        sequence=sequence_path("{model}", "{delimiter}", "{seed}"),
        manifest=manifest(sequence_path("{model}", "{delimiter}", "{seed}")),
    log:
        "results/logs/make_sequence/{model}/{delimiter}/seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=resources_for("make_sequence", "mem_mb", 2000),
        runtime=resources_for("make_sequence", "runtime", 5),
    params:
        n_tokens=config["e6"]["n_tokens"],
        add_bos=lambda wildcards: e6_add_bos(wildcards.model),
        min_chars=config["e6"]["passages"]["min_chars"],
        max_chars=config["e6"]["passages"]["max_chars"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Token sequence of passages joined by {wildcards.delimiter} for {wildcards.model} (seed {wildcards.seed})"
    script:
        "../scripts/make_sequence.py"


rule bigram_recall:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
        sequence=lambda wildcards: task_sequence_path(
            wildcards.model, config["e6"]["recall"]["task"], wildcards.seed
        ),
    output:
        recall=recall_path("{model}", "{seed}"),
        manifest=manifest(recall_path("{model}", "{seed}")),
    log:
        "results/logs/bigram_recall/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/bigram_recall/{model}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resources_for("bigram_recall", "threads", 1)
    resources:
        mem_mb=resources_for("bigram_recall", "mem_mb", 4000),
        runtime=resources_for("bigram_recall", "runtime", 20),
        gpu=resources_for("bigram_recall", "gpu", 0),
    params:
        task=config["e6"]["recall"]["task"],
        condition=e6_condition(config["e6"]["recall"]["task"]),
        min_distance=config["e6"]["recall"]["min_distance"],
        n_boot=config["stats"]["n_boot"],
        confidence=config["stats"]["confidence"],
        seed=config["stats"]["seed"],
        dtype=lambda wildcards: model_config(wildcards.model)["dtype"],
        device=lambda wildcards: model_config(wildcards.model)["device"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Bigram recall of {wildcards.model} on the {params.task} sequence (seed {wildcards.seed})"
    script:
        "../scripts/bigram_recall.py"


rule aggregate:
    input:
        ess=e6_ess_tables(),
        sequences=e6_sequences(),
        recall=e6_recall_tables(),
    output:
        traces=E6_AGGREGATE["traces"],
        boundaries=E6_AGGREGATE["boundaries"],
        by_layer=E6_AGGREGATE["by_layer"],
        by_layer_csv=E6_AGGREGATE["by_layer_csv"],
        by_model=E6_AGGREGATE["by_model"],
        by_model_csv=E6_AGGREGATE["by_model_csv"],
        correlation=E6_AGGREGATE["correlation"],
        correlation_csv=E6_AGGREGATE["correlation_csv"],
        manifests=[manifest(path) for path in E6_AGGREGATE.values()],
    log:
        "results/logs/aggregate/e6.log",
    benchmark:
        "results/benchmarks/aggregate/e6.tsv"
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=resources_for("aggregate", "mem_mb", 4000),
        runtime=resources_for("aggregate", "runtime", 30),
    params:
        delimiters=config["e6"]["delimiters"],
        controls=config["e6"]["controls"],
        before=config["e6"]["drop"]["before"],
        after=config["e6"]["drop"]["after"],
        boundary_margin=config["e6"]["drop"]["boundary_margin"],
        n_boot=config["stats"]["n_boot"],
        confidence=config["stats"]["confidence"],
        correlation=config["stats"]["correlation"],
        seed=config["stats"]["seed"],
    message:
        "E6 statistics: ESS drop at delimiters vs controls, bootstrap CIs, recall correlation"
    script:
        "../scripts/aggregate_e6.py"


# ---------------------------------------------------------------------------------------------
# Figures and tables: one notebook each, executed with papermill; the executed notebook is kept.


rule e6_delimiter_traces:
    input:
        notebook=notebook_path("e6_delimiter_traces"),
        traces=E6_AGGREGATE["traces"],
        traces_manifest=manifest(E6_AGGREGATE["traces"]),
        boundaries=E6_AGGREGATE["boundaries"],
        boundaries_manifest=manifest(E6_AGGREGATE["boundaries"]),
    output:
        png=report(
            "results/figures/e6_delimiter_traces.png",
            caption="../report/e6_delimiter_traces.rst",
            category="E6 state modulation",
        ),
        pdf="results/figures/e6_delimiter_traces.pdf",
        manifests=multiext(
            "results/figures/e6_delimiter_traces",
            ".png.manifest.json",
            ".pdf.manifest.json",
        ),
        notebook="results/notebooks/e6_delimiter_traces.ipynb",
    log:
        "results/logs/notebooks/e6_delimiter_traces.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_delimiter_traces", "mem_mb", 2000),
        runtime=resources_for("e6_delimiter_traces", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["traces", "boundaries", "notebook"],
            ["png", "pdf"],
            delimiters=config["e6"]["delimiters"],
            controls=config["e6"]["controls"],
            seed=config["e6"]["seeds"][0],
            settings=e6_settings(),
        ),
    message:
        "Figure e6_delimiter_traces: ESS along the text, delimiters vs controls"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_drop_by_layer:
    input:
        notebook=notebook_path("e6_drop_by_layer"),
        by_layer=E6_AGGREGATE["by_layer"],
        by_layer_manifest=manifest(E6_AGGREGATE["by_layer"]),
    output:
        png=report(
            "results/figures/e6_drop_by_layer.png",
            caption="../report/e6_drop_by_layer.rst",
            category="E6 state modulation",
        ),
        pdf="results/figures/e6_drop_by_layer.pdf",
        manifests=multiext(
            "results/figures/e6_drop_by_layer",
            ".png.manifest.json",
            ".pdf.manifest.json",
        ),
        notebook="results/notebooks/e6_drop_by_layer.ipynb",
    log:
        "results/logs/notebooks/e6_drop_by_layer.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_drop_by_layer", "mem_mb", 2000),
        runtime=resources_for("e6_drop_by_layer", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["by_layer", "notebook"], ["png", "pdf"], settings=e6_settings()
        ),
    message:
        "Figure e6_drop_by_layer: ESS drop at delimiters per layer, with bootstrap CIs"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_delimiter_drop:
    input:
        notebook=notebook_path("e6_delimiter_drop"),
        by_model=E6_AGGREGATE["by_model"],
        by_model_manifest=manifest(E6_AGGREGATE["by_model"]),
        correlation=E6_AGGREGATE["correlation"],
        correlation_manifest=manifest(E6_AGGREGATE["correlation"]),
    output:
        csv=report(
            "results/tables/e6_delimiter_drop.csv",
            caption="../report/e6_delimiter_drop.rst",
            category="E6 state modulation",
        ),
        md="results/tables/e6_delimiter_drop.md",
        tex="results/tables/e6_delimiter_drop.tex",
        manifests=multiext(
            "results/tables/e6_delimiter_drop",
            ".csv.manifest.json",
            ".md.manifest.json",
            ".tex.manifest.json",
        ),
        notebook="results/notebooks/e6_delimiter_drop.ipynb",
    log:
        "results/logs/notebooks/e6_delimiter_drop.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_delimiter_drop", "mem_mb", 2000),
        runtime=resources_for("e6_delimiter_drop", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["by_model", "correlation", "notebook"],
            ["csv", "md", "tex"],
            settings=e6_settings(),
        ),
    message:
        "Table e6_delimiter_drop: ESS drop per model and delimiter, recall, correlation"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_drop_vs_recall:
    input:
        notebook=notebook_path("e6_drop_vs_recall"),
        by_model=E6_AGGREGATE["by_model"],
        by_model_manifest=manifest(E6_AGGREGATE["by_model"]),
        correlation=E6_AGGREGATE["correlation"],
        correlation_manifest=manifest(E6_AGGREGATE["correlation"]),
    output:
        png=report(
            "results/figures/e6_drop_vs_recall.png",
            caption="../report/e6_drop_vs_recall.rst",
            category="E6 state modulation",
        ),
        pdf="results/figures/e6_drop_vs_recall.pdf",
        manifests=multiext(
            "results/figures/e6_drop_vs_recall",
            ".png.manifest.json",
            ".pdf.manifest.json",
        ),
        notebook="results/notebooks/e6_drop_vs_recall.ipynb",
    log:
        "results/logs/notebooks/e6_drop_vs_recall.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_drop_vs_recall", "mem_mb", 2000),
        runtime=resources_for("e6_drop_vs_recall", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["by_model", "correlation", "notebook"],
            ["png", "pdf"],
            delimiters=config["e6"]["delimiters"],
            controls=config["e6"]["controls"],
            settings=e6_settings(),
        ),
    message:
        "Figure e6_drop_vs_recall: ESS drop at delimiters per model against its bigram recall"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"
