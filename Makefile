# StreamFlow — every entry point people, CI and the cluster use. `make demo` and `make test` bootstrap the
# environment (a venv with the locked dependencies) when it is missing, so a fresh clone needs only those two.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
UV_VERSION ?= 0.13.9
export STREAMFLOW_HOME ?= .streamflow

.PHONY: setup demo serve monitor test test-fast bench dashboards pictures lint clean help
.PHONY: lock kind-up images base-image deploy bootstrap upload-month port-forward e2e kind-down

help:
	@echo "make demo   - run the loop on the embedded default (state in $$STREAMFLOW_HOME)"
	@echo "make serve  - predictor + transformer on loopback (after make demo); Ctrl-C stops them"
	@echo "make monitor - Prometheus + Pushgateway on loopback scraping make serve's servers, with the alert rules"
	@echo "make test   - the whole test suite (unit, integration with real Postgres, real servers)"
	@echo "make bench  - benchmarks; results in bench/results/*.json"
	@echo "make dashboards - regenerate the Grafana dashboards (charts/streamflow/dashboards/*.json) from build.py"
	@echo "make pictures - redraw docs/img/dashboards/*.png from a real Prometheus after a scenario run (~3 min)"
	@echo "make setup  - only create $(VENV) with the locked dependencies"
	@echo "Kubernetes (kind; versions pinned in manifests/versions.env):"
	@echo "make kind-up        - kind cluster $(KIND_CLUSTER) + cert-manager, KServe, Argo Workflows, Prometheus/Grafana"
	@echo "make images         - build streamflow:<appVersion of charts/streamflow> and load it into kind"
	@echo "make base-image     - a Debian bookworm base for images where python:3.11-slim-bookworm cannot be pulled"
	@echo "make deploy         - helm upgrade --install $(RELEASE) charts/streamflow -n $(NAMESPACE) (no wait)"
	@echo "make bootstrap      - run the streamflow-bootstrap workflow (first model) and wait for it"
	@echo "make upload-month DIR=path/to/month_NNN - copy a month folder into the data PVC"
	@echo "make port-forward   - the InferenceGraph on localhost:8080"
	@echo "make e2e            - the whole loop on the kind cluster"
	@echo "make kind-down      - delete the kind cluster"

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

# Debian's prometheus and prometheus-pushgateway (tests/system-deps.sh installs them as root)
monitor: $(STAMP)
	@bash tests/system-deps.sh
	$(VENV)/bin/streamflow monitor

# system-deps: PostgreSQL, Prometheus, Pushgateway, Docker engine, debootstrap, Chromium from Debian when root (else named)
test: $(STAMP)
	@bash tests/system-deps.sh
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not containers"

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(PY) bench/run.py

# The Grafana dashboards the chart ships: edit charts/streamflow/dashboards/build.py, then regenerate their JSON.
dashboards: $(STAMP)
	$(PY) charts/streamflow/dashboards/build.py

# The README's dashboard pictures: the monitoring scenario (three months, both servers, traffic) under a real
# Prometheus in a temporary STREAMFLOW_HOME, each dashboard's panels drawn from it (no Grafana server needed).
pictures: $(STAMP)
	@bash tests/system-deps.sh
	$(PY) -m tests.monitoring.pictures --out docs/img/dashboards

lint: $(STAMP)
	$(PY) -m ruff check pipelines model_server tests bench

# Regenerate the lock files after changing dependencies in pyproject.toml: requirements.lock (everything, dev tools
# included: the venv) and requirements-runtime.lock (what the image installs: the same pins without the dev extra).
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
	$(PYTHON) -m uv pip compile pyproject.toml --python-version 3.11 -c requirements.lock -o requirements-runtime.lock

clean:
	rm -rf $(STREAMFLOW_HOME) .pytest_cache

# --- Kubernetes (kind) ---------------------------------------------------------------------------------------------
# Every target goes through manifests/install.sh: it checks the tools it needs first (saying what is missing and
# how to install it), takes every version from manifests/versions.env, and names the kind cluster's context in
# every helm/kubectl call. `manifests/install.sh --dry-run up` (or deploy, bootstrap, ...) prints the commands
# instead of running them.
KIND_CLUSTER ?= streamflow
NAMESPACE ?= streamflow
RELEASE ?= streamflow
# the project image tag; empty = appVersion in charts/streamflow/Chart.yaml
APP_VERSION ?=
K8S = KIND_CLUSTER=$(KIND_CLUSTER) NAMESPACE=$(NAMESPACE) RELEASE=$(RELEASE) APP_VERSION=$(APP_VERSION) \
	manifests/install.sh

kind-up:
	$(K8S) up

images:
	$(K8S) images

# The Debian bookworm base `make images` builds FROM when python:3.11-slim-bookworm cannot be pulled (root, debootstrap)
base-image:
	$(K8S) base-image

deploy:
	$(K8S) deploy

bootstrap:
	$(K8S) bootstrap

upload-month:
	$(K8S) upload-month "$(DIR)"

port-forward:
	$(K8S) port-forward

# after kind-up, images, deploy; it talks to kubectl's current context (kind-up made it kind-$(KIND_CLUSTER))
e2e: $(STAMP)
	$(K8S) need kubectl
	$(PY) tests/e2e/kind_e2e.py --namespace $(NAMESPACE) --release $(RELEASE)

kind-down:
	$(K8S) need kind
	kind delete cluster --name $(KIND_CLUSTER)
