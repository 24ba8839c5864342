# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint fast venv clean kind-e2e

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/install_helm.py $(BIN)
	touch $@

demo: venv
	$(BIN)/pomona demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

fast: venv
	$(BIN)/pytest -m "not slow"

# The whole platform on a kind cluster (needs Docker, kind, kubectl, helm); --dry-run prints the steps.
kind-e2e:
	scripts/kind-e2e.sh

clean:
	rm -rf $(VENV) pomona-out .pytest_cache .mypy_cache .ruff_cache
