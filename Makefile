# From a fresh clone: `make serve` runs the API, `make test` runs the whole test suite.
# Both create the virtual environment in .venv on first use.
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install serve test lint schema bench

install: $(INSTALLED)

$(INSTALLED): pyproject.toml setup.py
	@echo "Creating the virtual environment in $(VENV) and installing the dependencies (first time only, a minute or two)..."
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

# Another port: make serve PORT=8001
serve: $(INSTALLED)
	$(BIN)/ticketing serve $(if $(PORT),--port $(PORT))

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
