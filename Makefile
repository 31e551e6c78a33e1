# The two commands a new user needs (see README.md):
#   make run    create .venv if needed, migrate, serve http://127.0.0.1:8000 (daphne)
#   make test   create .venv if needed, lint, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# A pip constraints file for the venv (CI's version legs: ci/constraints-oldest.txt).
CONSTRAINTS ?=

.PHONY: run test lint docs venv bench faults

venv: $(BIN)/.installed

$(BIN)/.installed: requirements.txt $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

run: venv
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# The docs site, into site/; strict: a broken link or anchor fails the build.
# (Material prints an end-of-life notice for MkDocs 2, which this does not use.)
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: venv docs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The load benchmark (see docs/benchmarks.md): BENCH_ARGS="--scenarios A --servers uvicorn"
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The fault sequencer (see docs/reliability.md): FAULTS_SECONDS=1800 FAULTS_SEED=7
FAULTS_SECONDS ?= 120
FAULTS_SEED ?= 1
FAULTS_SERVERS ?= daphne,uvicorn
faults: venv
	$(BIN)/python -m faults.run --seconds $(FAULTS_SECONDS) --seed $(FAULTS_SEED) --servers $(FAULTS_SERVERS)
