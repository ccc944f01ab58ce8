# From a fresh clone: `make serve` runs the API, `make test` runs the whole test suite.
# Both create the virtual environment in .venv on first use.
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install lock serve test test-fast lint schema bench

install: $(INSTALLED)

# The dependencies come from the lock file, each checked against its hash; then the project
# itself, whose own dependencies the lock already holds.
$(INSTALLED): pyproject.toml setup.py requirements/dev-lock.txt
	@echo "Creating the virtual environment in $(VENV) and installing the dependencies (first time only, a minute or two)..."
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(INSTALLED)

# Rewrite the lock files from pyproject.toml, keeping every pin that still fits; `make lock
# UPGRADE=1` takes the newest releases allowed. The runtime lock (the Docker image's) constrains
# the dev lock, so both pin the same versions.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock: $(INSTALLED)
	$(LOCK) -o requirements/lock.txt
	$(LOCK) --extra dev -c requirements/lock.txt -o requirements/dev-lock.txt

# Another port: make serve PORT=8001
serve: $(INSTALLED)
	$(BIN)/ticketing serve $(if $(PORT),--port $(PORT))

test: $(INSTALLED)
	$(BIN)/pytest

# The in-process tests only (no server processes, private PostgreSQL servers or external tools),
# and a few examples of each Hypothesis property, spread over one worker per core (each with a
# PostgreSQL of its own); compiled modules are kept between runs even where the environment
# says not to write them (recompiling the tests and the package costs seconds per worker). The
# inner loop while working; `make test` is what CI runs.
test-fast: $(INSTALLED)
	HYPOTHESIS_PROFILE=fast PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -m "not slow" -n auto

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schema: $(INSTALLED)
	$(BIN)/ticketing export-schema schema.graphql

bench: $(INSTALLED)
	$(BIN)/python -m bench.run $(ARGS)
