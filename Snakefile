# The ESS workflow: model weights -> per-layer operators -> ESS per position -> statistics ->
# figures and tables. `snakemake all` builds every figure and table of the configured
# experiments; see config/config.yaml (CPU default, minutes) and config/paper.yaml (the paper's
# LLMs on a GPU). Every result gets a `<result>.manifest.json` beside it: `ess audit <result>`
# walks from a figure back to the model weights.

from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Wildcards are path components: names, never slashes.
wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    task=r"[A-Za-z0-9][A-Za-z0-9_]*",
    delimiter=r"[A-Za-z0-9][A-Za-z0-9_]*",
    seed=r"\d+",
    part=r"\d+",
    difficulty=r"[A-Za-z0-9][A-Za-z0-9_]*",
    split=r"train|test",
    run=r"[A-Za-z0-9][A-Za-z0-9_.+/-]*/seed\d+",
    # a run key without its seed: {task}/{difficulty}/{mixer}/{tss}/{variant}
    cell=r"[A-Za-z0-9][A-Za-z0-9_.+-]*(/[A-Za-z0-9][A-Za-z0-9_.+-]*){4}",


# Shared steps: model weights, then operators -> ESS tables.
include: "workflow/rules/models.smk"
include: "workflow/rules/operators.smk"
# One rules file per experiment group: a config section, a rules file, an aggregate rule and
# notebook rules for the figures and tables it publishes (<GROUP>_FIGURES/_TABLES: `all`).
include: "workflow/rules/e6.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/notebooks.smk"
# What the run found and cost, from the tables above: results/summary.md.
include: "workflow/rules/summary.smk"


# Every job within the cluster section's limits, by its cost estimate (ess plan): after every
# rules file has validated its section, once, in the process the user started.
if workflow.is_main_process:
    check_plan(config)


# Cheap bookkeeping: never submitted to a cluster.
localrules:
    all,


rule all:
    default_target: True
    input:
        PUBLISHED,
        SUMMARY,
        manifest(SUMMARY),
