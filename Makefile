# The two fresh-clone commands: `make demo` (the main job) and `make test` (lint + tests).
# PY: the Python that creates the venv; VENV: where (a second Python gets its own, e.g.
# `make test PY=python3.12 VENV=.venv312`); PYTEST_ARGS: more pytest arguments (a file, -k, -m).
PY ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# DEV_EXTRAS: the extras `make test` installs; hf-load (torch, transformers) lets tests/test_export.py load
# an export in transformers; without it those tests skip (CI's Python 3.12 pass, see .ci/run).
DEV_EXTRAS ?= dev,hf-load
# TEST_MARKS: which tests `make test` runs. The default leaves out the long ones (`@pytest.mark.slow`:
# multi-process, end-to-end, trained fixtures) so a fresh clone's `make test` stays under 15 min on 2
# cores; `make test-all` (= TEST_MARKS=) runs every test, as CI does (.ci/run).
TEST_MARKS ?= not slow
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: install install-dev demo test test-all lint format clean

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
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(if $(TEST_MARKS),-m "$(TEST_MARKS)") $(PYTEST_ARGS)

test-all:
	$(MAKE) test TEST_MARKS=

format: install-dev
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
