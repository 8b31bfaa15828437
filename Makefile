# Every install step lives here: a clean clone needs only python3 (3.11), a JDK 17 and mvn.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HASH := $(shell cksum pyproject.toml | cut -d' ' -f1)
# Two stamps: `make run` installs what the service needs, `make test` adds the test tools (the
# `dev` extra). A changed pyproject.toml gives new stamp names, so both install again.
RUN_STAMP := $(VENV)/.installed-run-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

.PHONY: run demo lint test bench soak reset clean browser

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	rm -f $(VENV)/.installed-run-*
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-dev-*
	touch $@

## run: broker (KAFKA_BROKERS, else an embedded KRaft broker keeping its data in .run/kafka) + the service on :8080 (store in .run/state)
run: $(RUN_STAMP)
	$(PY) -m contacts_dev.run

## demo: write a few hundred Airy conversations (and some duplicate people) to what `make run` runs
demo: $(RUN_STAMP)
	$(VENV)/bin/contacts demo

# The console's browser tests drive Debian's chromium (Playwright never downloads a browser here):
# installed once with apt-get when missing (CI runs as root; elsewhere through sudo).
# CONSOLE_CHROMIUM names another Chromium and skips the install.
browser:
	@if [ -z "$$CONSOLE_CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the console's browser tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	fi

## lint: ruff (lint and format) and mypy on contacts_streams/ and api/, as pyproject.toml sets
## them; make test runs it first, so CI fails on a finding. All three run, then it fails if any did.
lint: $(DEV_STAMP)
	status=0; \
	$(PY) -m ruff check || status=1; \
	$(PY) -m ruff format --check || status=1; \
	$(PY) -m mypy || status=1; \
	exit $$status

## test: the whole suite on a real broker (and the console in headless chromium), in two
## processes with a broker each: most tests wait on Kafka, not the CPU (16 min -> 9 on 2 cores)
test: lint $(DEV_STAMP) browser
	$(PY) -m pytest -n 2

## bench: 10k and 1M contacts on a real broker -> bench/results.json, bench/RESULTS.md
bench: $(DEV_STAMP)
	$(PY) -m bench --size full

## soak: the long fault and fuzz runs
soak: $(DEV_STAMP)
	SOAK=1 FUZZ_REQUESTS=12000 $(PY) -m pytest tests/faults tests/api/test_openapi.py -s

## reset: wipe what `make run` kept (.run/: the broker's topics and the store) and start over
reset:
	@$(PYTHON) -m contacts_dev.run --reset

clean: reset
	rm -rf $(VENV) state .pytest_cache .hypothesis .mypy_cache .ruff_cache
