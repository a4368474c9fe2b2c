# Every figure and table: one notebook each (notebooks/<name>.ipynb), executed with papermill on
# its group's aggregate tables (ess.paper.results.NOTEBOOK_INPUTS); the executed notebook is
# kept. One definition for all: a rule per group (e6, synthetic) and kind (a figure: PNG + PDF;
# a table: CSV + Markdown + LaTeX), named <group>_<kind>.

from ess.paper.results import FORMATS, NOTEBOOK_INPUTS, published_names
from ess.paper.synthetic.captions import notebook_settings

PUBLISHED_NAMES = published_names(SYNTHETIC_RUNS)
# What each group's notebooks state in their captions: the config behind their numbers.
NOTEBOOK_VALUES = {
    "e6": dict(
        delimiters=config["e6"]["delimiters"],
        controls=config["e6"]["controls"],
        seed=config["e6"]["seeds"][0],
        settings=e6_settings(),
    ),
    "synthetic": dict(settings=notebook_settings(config)),
}
REPORT_CATEGORY = {
    "e6": "E6 state modulation",
    "synthetic": "Synthetic tasks (E1-E5, E7, E8)",
}

for (group, kind), names in PUBLISHED_NAMES.items():

    rule:
        name:
            f"{group}_{kind}"
        input:
            **NOTEBOOK_INPUTS[group],
            notebook=notebook_path("{name}"),
        output:
            **notebook_outputs(kind, group, REPORT_CATEGORY[group]),
            notebook="results/notebooks/{name}.ipynb",
        log:
            "results/logs/notebooks/{name}.log",
        wildcard_constraints:
            name="|".join(names) or "(?!)",
        # jupyter_client picks a kernel's ports by binding and releasing them, so two notebooks
        # started at once can draw the same port and one kernel dies at start ("ZMQError:
        # Address already in use", seen 2026-12-07 in a local run); a retry gets fresh ports.
        # (A rule's retries replace the profile's, so on a cluster these jobs retry once too.)
        retries: 1
        conda:
            "../../envs/notebooks.yaml"
        resources:
            mem_mb=planned(f"{group}_{kind}", "mem_mb"),
            runtime=planned(f"{group}_{kind}", "runtime"),
        params:
            parameters=notebook_parameters(
                ["notebook", *NOTEBOOK_INPUTS[group]],
                FORMATS[kind],
                **NOTEBOOK_VALUES[group],
            ),
        message:
            kind.capitalize() + " {wildcards.name}"
        shell:
            "papermill -k python3 --log-output -y {params.parameters:q} "
            "{input.notebook} {output.notebook} > {log} 2>&1"
