# pymosix: `make demo` runs the seed's walk-through, `make test` runs every check.
# Both begin with `make setup`, which installs whatever is missing and is quick when nothing is.
SHELL := /bin/bash
# The system's Python where there is one: its venv is usable by every user (the tests run the
# tools as unprivileged users), unlike an interpreter under root's home.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CRIU_STAMP := $(VENV)/.criu

.PHONY: setup demo test lint typecheck unit kernel bench clean

setup: $(STAMP) $(CRIU_STAMP)
	@$(BIN)/pymosix doctor --brief || { echo "setup: 'pymosix doctor' found a problem (above)"; exit 1; }

$(STAMP): pyproject.toml scripts/setup-system.sh
	@bash scripts/setup-system.sh
	@$(BIN)/python -c 'import sys; sys.exit(sys.base_prefix.startswith("/root"))' 2>/dev/null || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(CRIU_STAMP): src/pymosix/data/provision-criu.sh
	@bash src/pymosix/data/provision-criu.sh >/dev/null
	@touch $@

demo: setup
	$(BIN)/pymosix demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m bench

clean:
	-$(BIN)/pymosix testbed down 2>/dev/null
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
