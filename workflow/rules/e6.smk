# E6, state modulation in LLMs (the paper's Figure 7): ESS traced along real text whose passages
# are joined by a context delimiter, against controls without one. Per model, delimiter and
# seed: one token sequence (make_sequence); every task (delimiters and controls) is captured and
# extracted by the rules of operators.smk; aggregate_e6 turns ESS per position into drops at the
# delimiters with bootstrap CIs; rules e6_figure and e6_table run each figure's or table's
# notebook.

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
# What the notebooks read: the parquet tables (each CSV above is a copy of one of them)
E6_NOTEBOOK_INPUTS = {
    name: path for name, path in E6_AGGREGATE.items() if path.endswith(".parquet")
}


rule make_sequence:
    input:
        model=hf_dir("{model}"),
        model_manifest=manifest(hf_dir("{model}")),
    output:
        sequences=model_sequences("{model}"),
        manifests=[manifest(path) for path in model_sequences("{model}")],
    log:
        "results/logs/make_sequence/{model}.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        mem_mb=planned("make_sequence", "mem_mb"),
        runtime=planned("make_sequence", "runtime"),
    params:
        delimiters=config["e6"]["delimiters"],
        seeds=e6_seeds(),
        n_tokens=config["e6"]["n_tokens"],
        add_bos=lambda wildcards: e6_add_bos(wildcards.model),
        min_chars=config["e6"]["passages"]["min_chars"],
        max_chars=config["e6"]["passages"]["max_chars"],
        trust_remote_code=lambda wildcards: model_config(wildcards.model)[
            "trust_remote_code"
        ],
    message:
        "Token sequences of passages joined by each delimiter for {wildcards.model} (every seed)"
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
    threads: threads_of(config, "bigram_recall")
    resources:
        mem_mb=planned("bigram_recall", "mem_mb"),
        runtime=planned("bigram_recall", "runtime"),
        gpu=planned("bigram_recall", "gpu"),
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
        mem_mb=planned("aggregate_e6", "mem_mb"),
        runtime=planned("aggregate_e6", "runtime"),
    params:
        delimiters=config["e6"]["delimiters"],
        controls=config["e6"]["controls"],
        before=config["e6"]["drop"]["before"],
        after=config["e6"]["drop"]["after"],
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
# Figures and tables: one notebook each (notebooks/<name>.ipynb), all reading the aggregate's
# tables, executed with papermill; the executed notebook is kept.


# Every E6 notebook gets, besides the paths of the aggregate's tables and of its outputs, the
# config behind its numbers (stated in the captions).
E6_NOTEBOOK_VALUES = dict(
    delimiters=config["e6"]["delimiters"],
    controls=config["e6"]["controls"],
    seed=config["e6"]["seeds"][0],
    settings=e6_settings(),
)


rule e6_figure:
    input:
        **E6_NOTEBOOK_INPUTS,
        notebook=notebook_path("{name}"),
    output:
        png=report(
            "results/figures/{name}.png",
            caption="../report/e6_figure.rst",
            category="E6 state modulation",
        ),
        pdf="results/figures/{name}.pdf",
        manifests=multiext(
            "results/figures/{name}", ".png.manifest.json", ".pdf.manifest.json"
        ),
        notebook="results/notebooks/{name}.ipynb",
    log:
        "results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(E6_FIGURES),
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=planned("e6_figure", "mem_mb"),
        runtime=planned("e6_figure", "runtime"),
    params:
        parameters=notebook_parameters(
            ["notebook", *E6_NOTEBOOK_INPUTS], ["png", "pdf"], **E6_NOTEBOOK_VALUES
        ),
    message:
        "Figure {wildcards.name}"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"


rule e6_table:
    input:
        **E6_NOTEBOOK_INPUTS,
        notebook=notebook_path("{name}"),
    output:
        csv=report(
            "results/tables/{name}.csv",
            caption="../report/e6_table.rst",
            category="E6 state modulation",
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
        name="|".join(E6_TABLES),
    conda:
        "../../envs/notebooks.yaml"
    resources:
        mem_mb=planned("e6_table", "mem_mb"),
        runtime=planned("e6_table", "runtime"),
    params:
        parameters=notebook_parameters(
            ["notebook", *E6_NOTEBOOK_INPUTS],
            ["csv", "md", "tex"],
            **E6_NOTEBOOK_VALUES,
        ),
    message:
        "Table {wildcards.name}"
    shell:
        "papermill -k python3 --log-output -y {params.parameters:q} "
        "{input.notebook} {output.notebook} > {log} 2>&1"
