# E6, state modulation in LLMs (the paper's Figure 7): ESS traced along real text whose passages
# are joined by a context delimiter, against controls without one. Per model, delimiter and
# seed: one token sequence (make_sequence); every task (delimiters and controls) is captured and
# extracted by the rules of operators.smk; aggregate_e6 turns ESS per position into drops at the
# delimiters with bootstrap CIs; rules e6_figure and e6_table (notebooks.smk) run each figure's
# or table's notebook.

from ess.paper.results import E6_AGGREGATE


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
