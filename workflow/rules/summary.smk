# results/summary.md: the verdict on each claim of the paper (E1-E8, the records the results'
# manifests keep), the key E6 table and what the run cost (jobs and their time, from the
# manifests behind the results), all read from the files the workflow wrote (ess.summary).

SUMMARY = "results/summary.md"
# Every figure and table of both groups: their manifests hold the verdicts, and lead to every
# job behind them.
PUBLISHED = published_targets(
    E6_FIGURES + SYNTHETIC_FIGURES, E6_TABLES + SYNTHETIC_TABLES
)


rule summary:
    input:
        published=PUBLISHED,
        e6_table="results/tables/e6_delimiter_drop.csv",
    output:
        summary=report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Summary",
        ),
        manifest=manifest(SUMMARY),
    log:
        "results/logs/summary.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=planned("summary", "mem_mb"),
        runtime=planned("summary", "runtime"),
    message:
        "Summary: verdicts, the key E6 table and the run's cost -> {output.summary}"
    script:
        "../scripts/summary.py"
