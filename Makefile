# From a fresh clone: `make serve` runs the API, `make test` runs the whole test suite.
# Both create the virtual environment in .venv on first use.
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install serve test lint schema bench

install: $(INSTALLED)

$(INSTALLED): pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

serve: $(INSTALLED)
	$(BIN)/ticketing serve

test: $(INSTALLED)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schema: $(INSTALLED)
	$(BIN)/ticketing export-schema schema.graphql

bench: $(INSTALLED)
	$(BIN)/python -m bench.run
