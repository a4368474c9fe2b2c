# The two commands of the quick start: `make reproduce` and `make test`.
# Both create .venv with the pinned dependencies first (torch==2.13.0, CPU build where offered).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# Rules call tools of the venv (papermill) by name, as they would in an activated venv.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install reproduce test lint benchmark clean

$(BIN)/ess: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[workflow,dev]"
	touch $@

install: $(BIN)/ess

# Every figure and table of the embedded default (config/config.yaml).
reproduce: install
	$(BIN)/snakemake --cores $(CORES) all

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

# Linters, then every test (the SLURM tests run when tests/slurm/start-cluster.sh is up).
test: lint
	$(BIN)/pytest

benchmark: install
	$(BIN)/python benchmarks/bench_ess.py

clean:
	rm -rf results .snakemake
