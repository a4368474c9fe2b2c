# results/summary.md: the verdict on each claim of the paper (E1-E8, the records the results'
# manifests keep), the key E6 table and what the run cost (jobs and their time, from the
# manifests behind the results), all read from the files the workflow wrote (ess.paper.summary).

from ess.paper.results import E6_KEY_TABLE

SUMMARY = "results/summary.md"
# Every figure and table of both groups: their manifests hold the verdicts, and lead to every
# job behind them.
PUBLISHED = published_targets(PUBLISHED_NAMES)


rule summary:
    input:
        published=PUBLISHED,
        e6_table=E6_KEY_TABLE,
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
