# voicebridge: `make run` installs everything and starts the bridge; `make test` installs and tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WHEEL_CACHE ?= $(HOME)/.cache/voicebridge/wheels
STAMP := $(VENV)/.voicebridge-installed
WEB := bridge/web

.PHONY: install system python web run test bench lint clean

install: system $(STAMP) web

system:
	@bash scripts/install-system.sh

$(STAMP): pyproject.toml scripts/install-python.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) WHEEL_CACHE=$(WHEEL_CACHE) bash scripts/install-python.sh
	@touch $(STAMP)

python: $(STAMP)

web:
	@if [ -f $(WEB)/package.json ]; then bash scripts/build-web.sh; fi

run: install
	$(BIN)/voicebridge serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/media.py
	$(BIN)/python bench/backends.py

lint: $(STAMP)
	$(BIN)/ruff check bridge sip media tests bench
	$(BIN)/ruff format --check bridge sip media tests bench
	$(BIN)/mypy
	$(BIN)/mypy tests bench

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(WEB)/dist .pytest_cache .mypy_cache .ruff_cache
