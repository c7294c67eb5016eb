# bearing-fl — user commands. Each installs what it needs into .venv (idempotent: re-installs only when
# pyproject.toml or requirements.lock change).
#   make run    demo data (if data/raw has none) -> the pipeline -> prints where the outputs are
#   make test   the whole test suite (what CI runs)
#   make test-fast  the unit tests only (no Prefect server, pipeline, federated simulation or subprocess),
#                   on every core (pytest-xdist)
#   make lint   formatting, lint rules and the layer contracts (pyproject.toml [tool.ruff], [tool.importlinter])
#   make bench  benchmarks, written to BENCHMARKS.md

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RAW_DIR ?= data/raw/demo

# Offline, project-local runtime: the same values bearing_core/env.py sets for direct CLI use (tests/test_env.py
# checks they agree). Task cache records: plain JSON in $(PREFECT_HOME)/storage.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_UI_ENABLED := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_RESULTS_DEFAULT_SERIALIZER := json
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_LOCAL_STORAGE_PATH := $(PREFECT_HOME)/storage
export PREFECT_SERVER_API_HOST := 127.0.0.1
export FLWR_HOME := $(CURDIR)/.flwr

.PHONY: run test test-fast lint bench install serve stop clean-data help

help:
	@echo "make run    # demo data -> pipeline; prints where outputs are"
	@echo "make test   # test suite"
	@echo "make test-fast  # unit tests only (markers e2e/integration/slow/browser left out)"
	@echo "make lint   # ruff format --check, ruff check, lint-imports (layer contracts)"
	@echo "make bench  # benchmarks -> BENCHMARKS.md"
	@echo "make serve  # local Prefect server + deployments + worker on 127.0.0.1:4200"
	@echo "make serve DB=postgres  # the same on a project-local PostgreSQL (127.0.0.1:54329)"
	@echo "make stop   # stop the worker, then the server"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# a pip without known vulnerabilities first (23.3 fixes CVE-2023-5752; a new venv may bring an older one)
	$(BIN)/python -m pip install --quiet "pip>=23.3"
	# every dependency at requirements.lock's version and SHA-256 (torch's: the local CPU wheel, so a CUDA build
	# cannot slip in); regenerate the hashes with scripts/hash_lock.py after changing a pin
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	# the project itself, editable (pip's hash-checking mode refuses editable installs): its dependencies are above
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

run: install
	@if [ -z "$$(find data/raw -mindepth 1 -not -name '.gitkeep' -not -name 'README.md' -print -quit)" ]; then \
		echo "data/raw is empty: generating synthetic IMS demo data in $(RAW_DIR)"; \
		$(BIN)/bearing demo-data --out $(RAW_DIR); \
	fi
	$(BIN)/bearing run --raw-dir $(RAW_DIR)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -n auto -m "not (e2e or integration or slow or browser)"

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check . && $(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.ingest --files 1000
	$(BIN)/python -m bench.federated
	$(BIN)/python -m bench.detection

DB ?= sqlite
serve: install
	BEARING_DB=$(DB) scripts/serve.sh

stop:
	scripts/stop.sh

clean-data:
	rm -rf data/processed/* data/models/* reports .prefect
	touch data/processed/.gitkeep data/models/.gitkeep
