# StreamFlow — every entry point people, CI and the cluster use. `make demo` and `make test` bootstrap the
# environment (a venv with the locked dependencies) when it is missing, so a fresh clone needs only those two.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
UV_VERSION ?= 0.13.9
export STREAMFLOW_HOME ?= .streamflow

.PHONY: setup demo serve test test-fast bench lint clean help

help:
	@echo "make demo   - run the loop on the embedded default (state in $$STREAMFLOW_HOME)"
	@echo "make serve  - predictor + transformer on loopback (after make demo); Ctrl-C stops them"
	@echo "make test   - the whole test suite (unit, integration with real Postgres, real servers)"
	@echo "make bench  - benchmarks; results in bench/results/*.json"
	@echo "make setup  - only create $(VENV) with the locked dependencies"

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(PYTHON) -m uv venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install -q --compile-bytecode --python $(PY) -r requirements.lock
	$(PYTHON) -m uv pip install -q --python $(PY) --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamflow demo

serve: $(STAMP)
	$(VENV)/bin/streamflow serve

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(PY) bench/run.py

lint: $(STAMP)
	$(PY) -m ruff check pipelines model_server tests bench

# Regenerate the lock file after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(STREAMFLOW_HOME) .pytest_cache
