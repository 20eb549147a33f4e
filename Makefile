# hookledger: `make run` serves the example config on SQLite; `make test` runs the whole suite.
PORT ?= 8000
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint format sysdeps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	mkdir -p data
	$(VENV)/bin/hookledger serve --config examples/hookledger.toml --port $(PORT)

# Debian packages the tests need: a PostgreSQL server (initdb, pg_ctl) and Chromium for the
# console's browser tests (driven by Playwright with executable_path=/usr/bin/chromium), and
# node with npm for the providers' JavaScript libraries (tests/test_provider_libraries.py).
sysdeps:
	@pkgs=""; \
	if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		pkgs="$$pkgs postgresql"; \
	fi; \
	if [ ! -x /usr/bin/chromium ]; then pkgs="$$pkgs chromium"; fi; \
	if ! command -v npm >/dev/null 2>&1; then pkgs="$$pkgs nodejs npm"; fi; \
	if [ -n "$$pkgs" ]; then \
		echo "installing$$pkgs from Debian"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$pkgs; \
	fi

test: sysdeps $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every benchmark in one run (about 25 minutes; docs/performance.md): ingest with wrk against
# hookledger, a bare Starlette ceiling and the tutorial receivers (writes the generated part of
# the doc and its chart), then rebuild against a hand loop and a set-based SQL ceiling on SQLite
# and on a throwaway PostgreSQL, then the catch-up and point-read latencies (their tables print
# to the terminal), then ingest latency during a rebuild of a 1M-event projection, then the read
# requests at 100k, 1M and 3M imported events (about 20 more minutes), then the destinations:
# events handed over against a bare httpx client, and ingest-to-receiver latency.
bench: $(VENV)/.installed
	@command -v wrk >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	$(PY) -m bench ingest --duration 10 --connections 64 --output docs/performance.md
	$(PY) -m bench rebuild --events 1000000
	$(PY) -m bench rebuild --events 300000 --postgres
	$(PY) -m bench latency --count 2000
	$(PY) -m bench rebuild-ingest --events 1000000
	$(PY) -m bench scale --sizes 100k,1M,3M
	$(PY) -m bench deliver --events 20000
	$(PY) -m bench deliver --events 20000 --postgres

clean:
	rm -rf $(VENV) data build *.egg-info

# The chaos test of tests/chaos for ~5 minutes of load (`make test` runs it for 20 seconds):
# servers and workers SIGKILLed, PostgreSQL restarted, then every promise checked.
.PHONY: chaos
chaos: sysdeps $(VENV)/.installed
	HOOKLEDGER_CHAOS_SECONDS=$${HOOKLEDGER_CHAOS_SECONDS:-300} $(PY) -m pytest -q -s -p no:cacheprovider tests/chaos
