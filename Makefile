# The two fresh-clone commands: `make demo` (the main job) and `make test` (lint + tests).
# PY: the Python that creates the venv; VENV: where (a second Python gets its own, e.g.
# `make test PY=python3.12 VENV=.venv312`); PYTEST_ARGS: more pytest arguments (a file, -k, -m).
PY ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# DEV_EXTRAS: the extras `make test` installs; hf-load (torch, transformers) lets tests/test_export.py load
# an export in transformers; without it those tests skip (CI's Python 3.12 pass, see .ci/run).
DEV_EXTRAS ?= dev,hf-load
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: install install-dev demo test lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(DEV_EXTRAS)]'

demo: install
	$(BIN)/glam demo --run-dir $(RUN_DIR)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments

test: install-dev lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

format: install-dev
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
