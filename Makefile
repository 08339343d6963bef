# The two set-up commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
QSTAR_HOME ?= $(CURDIR)/.qstar
export QSTAR_HOME
export DAGSTER_HOME := $(QSTAR_HOME)/dagster
STAMP  := $(VENV)/.installed

.PHONY: install browser postgres demo test ui lint clean

install: $(STAMP)

# torch==2.13.0 goes in first and alone: with no torch installed, pip resolves a bare
# "torch" requirement to the newest CUDA build (several GB); 2.13.0 resolves to the local
# CPU build here and satisfies the project's range afterwards, so nothing more is pulled.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/qstar demo

# Debian's Chromium for the browser test (tests/e2e/test_browser.py), when this machine can
# install it (root and apt); without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "Chromium could not be installed here: the browser test will skip"

# Debian's PostgreSQL server binaries for the shared-store tests (tests/lineage/): the tests
# start their own throwaway server; without the binaries they skip and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q postgresql >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; }; }; } || \
	  echo "PostgreSQL could not be installed here: the shared-store tests will skip"

test: install browser postgres
	$(BIN)/python -m pytest -q

# Dagster UI and daemon (schedules, sensors) on 127.0.0.1:3000, instance under $(DAGSTER_HOME).
ui: install
	$(BIN)/qstar init
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check qstar_dagster tests bench

clean:
	rm -rf $(VENV) $(QSTAR_HOME)
