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
# dev.txt (everything, for this machine) first; each image's file is then resolved within it, so the tests run its
# versions, for that image's base: its glibc as a manylinux platform and its Python, wheels only (no base has a
# compiler). The Lambda bases are Amazon Linux 2023 (glibc 2.34, Python 3.13); the Spark base is Ubuntu 22.04
# (glibc 2.35) with uv's CPython 3.11, and pyspark comes from the base (spark-base.txt). tests/platform/
# test_image_locks.py checks these against the FROM lines.
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --custom-compile-command "make lock"
UV_COMPILE_DEV := $(UV_COMPILE) --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
UV_COMPILE_LAMBDA := $(UV_COMPILE) --python-version 3.13 --python-platform x86_64-manylinux_2_34 --only-binary :all:
UV_COMPILE_SPARK := $(UV_COMPILE) --python-version 3.11 --python-platform x86_64-manylinux_2_35 --only-binary :all:
lock: venv
	echo "pyspark==$(SPARK_VERSION)" > constraints/spark-version.txt
	$(UV_COMPILE_DEV) --extra dev --constraint constraints/spark-version.txt --upgrade --output-file constraints/dev.txt
	$(UV_COMPILE_LAMBDA) --extra lambda --constraint constraints/dev.txt --output-file constraints/lambda.txt
	$(UV_COMPILE_LAMBDA) --extra classify --constraint constraints/dev.txt --output-file constraints/classify.txt
	$(UV_COMPILE_SPARK) --extra spark --extra convert --extra cli --constraint constraints/dev.txt \
	  --excludes constraints/spark-base.txt \
	  --output-file constraints/spark.txt
	rm constraints/spark-version.txt

clean:
	rm -rf $(VENV) pomona-out .pytest_cache .mypy_cache .ruff_cache
