# The two commands of the quick start: `make reproduce` and `make test`.
# Both create .venv with the pinned dependencies first (torch==2.13.0, CPU build where offered).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# Rules call tools of the venv (papermill) by name, as they would in an activated venv.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install reproduce report status test lint benchmark rehearsal clean

$(BIN)/ess: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[workflow,dev]"
	touch $@

install: $(BIN)/ess

# Every figure and table of the embedded default (config/config.yaml). After an interruption,
# run it again: it resumes (profiles/default sets rerun-incomplete).
reproduce: install
	$(BIN)/snakemake --cores $(CORES) all

# The HTML report of a finished run: every figure and table of `all` with its caption, the
# rule graph, runtimes and package versions, in one file (open it in a browser). WORKDIR is
# the workflow's working directory (the one holding results/).
WORKDIR ?= .
report: install
	$(BIN)/snakemake --directory $(WORKDIR) --report results/report.html all

# What a run has done and has left to do, and the last log line of each job in progress.
status: install
	$(BIN)/ess status $(WORKDIR)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests workflow benchmarks notebooks
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

# Linters, then every test (the SLURM tests run when tests/slurm/start-cluster.sh is up).
test: lint
	$(BIN)/pytest

# config/paper.yaml's whole DAG at its shapes, thinned in counts, under the local SLURM
# (tests/slurm/start-cluster.sh first): every job's MaxRSS and Elapsed against the plan.
rehearsal: install
	ESS_REHEARSAL=1 $(BIN)/pytest tests/test_rehearsal.py -s

benchmark: install
	$(BIN)/python benchmarks/bench_ess.py

clean:
	rm -rf results .snakemake
