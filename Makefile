# Exosphere developer commands. `make run` and `make test` bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install proto proto-check format lint typecheck browser test test-quick check run bench bench-peers clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,cli,dev,postgres,otel]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the package, dev tools and the PostgreSQL driver

proto: $(STAMP) ## regenerate exosphere/v1 from protos/
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. \
	    --mypy_out=. --mypy_grpc_out=. protos/exosphere/v1/*.proto
	touch exosphere/v1/__init__.py

proto-check: proto ## fails when the committed generated code drifts from protos/
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "proto-check: not a git checkout"; exit 1; }
	@drift="$$(git status --porcelain -- exosphere/v1)"; test -z "$$drift" || { \
	    echo "$$drift"; echo "proto-check: exosphere/v1 differs from what protos/ generates; run make proto, commit"; \
	    exit 1; }

format: $(STAMP)
	$(VENV)/bin/ruff format exosphere server tests examples benchmarks exospherehost
	$(VENV)/bin/ruff check --fix exosphere server tests examples benchmarks exospherehost

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check exosphere server tests examples benchmarks exospherehost

typecheck: $(STAMP) ## mypy --strict on exosphere/, server/ and tests/
	$(VENV)/bin/mypy

browser: ## Debian's chromium for the dashboard's browser tests (apt-get, when it is missing and we are root)
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$EXOSPHERE_CHROMIUM" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	    echo "browser: no chromium and cannot apt-get it (not root); the browser tests will skip"; \
	fi

test: lint typecheck proto-check browser ## the checks, then the whole suite (what CI runs)
	$(PY) -m pytest

test-quick: $(STAMP) ## the suite without the tests marked slow (faults, fuzzing, > ~2 s)
	$(PY) -m pytest -m "not slow"

check: test

run: $(STAMP) ## scheduler + example runtime + example graph, prints the run
	$(PY) examples/run_demo.py

bench: $(STAMP) ## benchmarks against a real scheduler process; results in benchmarks/results/
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) -m benchmarks

bench-peers: $(STAMP) ## the same workloads on Celery, Dask and Temporal, in the same run
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) -m benchmarks --peers

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
