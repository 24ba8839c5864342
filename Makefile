# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint fast venv clean kind-e2e lock

venv: $(VENV)/.installed

# The versions in constraints/dev.txt, as the images install theirs from constraints/{lambda,classify,spark}.txt.
$(VENV)/.installed: pyproject.toml constraints/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[dev]' --constraint constraints/dev.txt
	$(BIN)/python scripts/install_helm.py $(BIN)
	touch $@

demo: venv
	$(BIN)/pomona demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

fast: venv
	$(BIN)/pytest -m "not slow"

# The whole platform on a kind cluster (needs Docker, kind, kubectl, helm); --dry-run prints the steps.
kind-e2e:
	scripts/kind-e2e.sh

# Re-resolve the pinned versions (after a pyproject.toml change, or to take upgrades): one file per install;
SPARK_VERSION := $(shell sed -n 's/^ARG SPARK_VERSION=//p' Dockerfile.spark)
# dev.txt (everything) first; the images' files are then resolved within it, so the tests run their versions.
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --python-version 3.11 \
  --python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock"
lock: venv
	echo "pyspark==$(SPARK_VERSION)" > constraints/spark-version.txt
	$(UV_COMPILE) --extra dev --constraint constraints/spark-version.txt --upgrade --output-file constraints/dev.txt
	$(UV_COMPILE) --extra lambda --constraint constraints/dev.txt --output-file constraints/lambda.txt
	$(UV_COMPILE) --extra classify --constraint constraints/dev.txt --output-file constraints/classify.txt
	$(UV_COMPILE) --extra spark --extra cli --constraint constraints/dev.txt --output-file constraints/spark.txt
	rm constraints/spark-version.txt

clean:
	rm -rf $(VENV) pomona-out .pytest_cache .mypy_cache .ruff_cache
