# E6, state modulation in LLMs (the paper's Figure 7): ESS traced along real text whose passages
# are joined by a context delimiter, against controls without one. Per model, delimiter and
# seed: one token sequence (make_sequence); every task (delimiters and controls) is captured and
# extracted by the rules of operators.smk; aggregate_e6 turns ESS per position into drops at the
# delimiters with bootstrap CIs; one rule per figure or table runs its notebook.

# What E6 publishes: results/figures/<name>.{png,pdf} and results/tables/<name>.{csv,md,tex}.
E6_FIGURES = [
    "e6_delimiter_traces",
    "e6_boundary_profile",
    "e6_drop_by_layer",
    "e6_drop_vs_recall",
]
E6_TABLES = ["e6_delimiter_drop", "e6_hierarchy", "e6_drop_by_tau"]
E6_AGGREGATE = {
    # ESS per evaluated split position, mean over the heads/channels of each layer
    "traces": "results/aggregate/e6_traces.parquet",
    # one row per boundary, layer (-1 = mean over layers), control and ESS kind
    "boundaries": "results/aggregate/e6_boundary_drops.parquet",
    # drop_vs_control per layer, bootstrap CI over boundaries (and seeds)
    "by_layer": "results/aggregate/e6_drop_by_layer.parquet",
    "by_layer_csv": "results/aggregate/e6_drop_by_layer.csv",
    # the same on the mean over layers, at every tau and entropy-ESS, with each model's recall
    "by_model": "results/aggregate/e6_drop.parquet",
    "by_model_csv": "results/aggregate/e6_drop.csv",
    # correlation of the drop with recall over the models whose recall is measured
    "correlation": "results/aggregate/e6_recall_correlation.parquet",
    "correlation_csv": "results/aggregate/e6_recall_correlation.csv",
    # mean ESS at each offset from the delimiter, per layer group and condition
    "profile": "results/aggregate/e6_boundary_profile.parquet",
    "profile_csv": "results/aggregate/e6_boundary_profile.csv",
    # Kendall's tau of the drops of e6.hierarchy against its stated order
    "hierarchy": "results/aggregate/e6_hierarchy.parquet",
    "hierarchy_csv": "results/aggregate/e6_hierarchy.csv",
}


rule make_sequence:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
    output:
        sequences=seed_paths(sequence_path, "{model}", "{delimiter}"),
        manifests=[
            manifest(path)
            for path in seed_paths(sequence_path, "{model}", "{delimiter}")
        ],
    log:
        "results/logs/make_sequence/{model}/{delimiter}.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=resources_for("make_sequence", "mem_mb", 2000),
        runtime=resources_for("make_sequence", "runtime", 5),
    params:
        seeds=e6_seeds(),
        n_tokens=config["e6"]["n_tokens"],
        add_bos=lambda wildcards: e6_add_bos(wildcards.model),
        min_chars=config["e6"]["passages"]["min_chars"],
        max_chars=config["e6"]["passages"]["max_chars"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Token sequences of passages joined by {wildcards.delimiter} for {wildcards.model} (every seed)"
    script:
        "../scripts/make_sequence.py"


rule bigram_recall:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
    output:
        recall=recall_path("{model}"),
        manifest=manifest(recall_path("{model}")),
    log:
        "results/logs/bigram_recall/{model}.log",
    benchmark:
        "results/benchmarks/bigram_recall/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resources_for("bigram_recall", "threads", 1)
    resources:
        mem_mb=resources_for("bigram_recall", "mem_mb", 4000),
        runtime=resources_for("bigram_recall", "runtime", 20),
        gpu=resources_for("bigram_recall", "gpu", 0),
    params:
        task=config["e6"]["recall"]["task"],
        delimiter=e6_sequence_delimiter(config["e6"]["recall"]["task"]),
        condition=e6_condition(config["e6"]["recall"]["task"]),
        orders=config["e6"]["recall"]["orders"],
        n_tokens=config["e6"]["n_tokens"],
        add_bos=lambda wildcards: e6_add_bos(wildcards.model),
        min_chars=config["e6"]["passages"]["min_chars"],
        max_chars=config["e6"]["passages"]["max_chars"],
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
        "Bigram recall of {wildcards.model} on {params.orders} {params.task} sequences"
    script:
        "../scripts/bigram_recall.py"


rule aggregate_e6:
    input:
        ess=e6_ess_tables(),
        sequences=e6_sequences(),
        recall=e6_recall_tables(),
    output:
        **E6_AGGREGATE,
        manifests=[manifest(path) for path in E6_AGGREGATE.values()],
    log:
        "results/logs/aggregate/e6.log",
    benchmark:
        "results/benchmarks/aggregate/e6.tsv"
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=resources_for("aggregate_e6", "mem_mb", 4000),
        runtime=resources_for("aggregate_e6", "runtime", 30),
    params:
        delimiters=config["e6"]["delimiters"],
        controls=config["e6"]["controls"],
        before=config["e6"]["drop"]["before"],
        after=config["e6"]["drop"]["after"],
        boundary_margin=config["e6"]["drop"]["boundary_margin"],
        offsets=config["e6"]["profile"]["offsets"],
        hierarchy=config["e6"]["hierarchy"],
        n_boot=config["stats"]["n_boot"],
        confidence=config["stats"]["confidence"],
        correlation=config["stats"]["correlation"],
        seed=config["stats"]["seed"],
    message:
        "E6 statistics: ESS drop at delimiters vs controls, profiles, hierarchy, recall"
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


rule e6_boundary_profile:
    input:
        notebook=notebook_path("e6_boundary_profile"),
        profile=E6_AGGREGATE["profile"],
        profile_manifest=manifest(E6_AGGREGATE["profile"]),
        by_model=E6_AGGREGATE["by_model"],
        by_model_manifest=manifest(E6_AGGREGATE["by_model"]),
    output:
        png=report(
            "results/figures/e6_boundary_profile.png",
            caption="../report/e6_boundary_profile.rst",
            category="E6 state modulation",
        ),
        pdf="results/figures/e6_boundary_profile.pdf",
        manifests=multiext(
            "results/figures/e6_boundary_profile",
            ".png.manifest.json",
            ".pdf.manifest.json",
        ),
        notebook="results/notebooks/e6_boundary_profile.ipynb",
    log:
        "results/logs/notebooks/e6_boundary_profile.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_boundary_profile", "mem_mb", 2000),
        runtime=resources_for("e6_boundary_profile", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["profile", "by_model", "notebook"],
            ["png", "pdf"],
            delimiters=config["e6"]["delimiters"],
            controls=config["e6"]["controls"],
            settings=e6_settings(),
        ),
    message:
        "Figure e6_boundary_profile: mean ESS against the offset from the delimiter"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_hierarchy:
    input:
        notebook=notebook_path("e6_hierarchy"),
        hierarchy=E6_AGGREGATE["hierarchy"],
        hierarchy_manifest=manifest(E6_AGGREGATE["hierarchy"]),
        by_model=E6_AGGREGATE["by_model"],
        by_model_manifest=manifest(E6_AGGREGATE["by_model"]),
        correlation=E6_AGGREGATE["correlation"],
        correlation_manifest=manifest(E6_AGGREGATE["correlation"]),
    output:
        csv=report(
            "results/tables/e6_hierarchy.csv",
            caption="../report/e6_hierarchy.rst",
            category="E6 state modulation",
        ),
        md="results/tables/e6_hierarchy.md",
        tex="results/tables/e6_hierarchy.tex",
        manifests=multiext(
            "results/tables/e6_hierarchy",
            ".csv.manifest.json",
            ".md.manifest.json",
            ".tex.manifest.json",
        ),
        notebook="results/notebooks/e6_hierarchy.ipynb",
    log:
        "results/logs/notebooks/e6_hierarchy.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_hierarchy", "mem_mb", 2000),
        runtime=resources_for("e6_hierarchy", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["hierarchy", "by_model", "correlation", "notebook"],
            ["csv", "md", "tex"],
            hierarchy_models=config["e6"]["hierarchy"],
            settings=e6_settings(),
        ),
    message:
        "Table e6_hierarchy: the paper's order of modulation SA > GLA > WLA > LA as Kendall's tau"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_drop_by_tau:
    input:
        notebook=notebook_path("e6_drop_by_tau"),
        by_model=E6_AGGREGATE["by_model"],
        by_model_manifest=manifest(E6_AGGREGATE["by_model"]),
    output:
        csv=report(
            "results/tables/e6_drop_by_tau.csv",
            caption="../report/e6_drop_by_tau.rst",
            category="E6 state modulation",
        ),
        md="results/tables/e6_drop_by_tau.md",
        tex="results/tables/e6_drop_by_tau.tex",
        manifests=multiext(
            "results/tables/e6_drop_by_tau",
            ".csv.manifest.json",
            ".md.manifest.json",
            ".tex.manifest.json",
        ),
        notebook="results/notebooks/e6_drop_by_tau.ipynb",
    log:
        "results/logs/notebooks/e6_drop_by_tau.log",
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=resources_for("e6_drop_by_tau", "mem_mb", 2000),
        runtime=resources_for("e6_drop_by_tau", "runtime", 10),
    params:
        parameters=notebook_parameters(
            ["by_model", "notebook"],
            ["csv", "md", "tex"],
            control=config["e6"]["controls"][0],
            settings=e6_settings(),
        ),
    message:
        "Table e6_drop_by_tau: the drop at every tau of tolerance-ESS and at entropy-ESS"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"
