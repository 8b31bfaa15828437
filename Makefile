# Every install step lives here: a clean clone needs only python3 (3.11), a JDK 17 and mvn.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

## run: broker (KAFKA_BROKERS, else testcontainers, else an embedded KRaft broker) + the service on :8080
run: $(STAMP)
	$(PY) -m contacts_dev.embedded_kafka -- $(PY) -m api

## test: the whole suite on a real broker
test: $(STAMP)
	$(PY) -m pytest

## bench: 10k and 1M contacts on a real broker -> bench/results.json, bench/RESULTS.md
bench: $(STAMP)
	$(PY) -m bench --size full

## soak: the long fault and fuzz runs
soak: $(STAMP)
	SOAK=1 FUZZ_REQUESTS=12000 $(PY) -m pytest tests/faults tests/api/test_openapi.py -s

clean:
	rm -rf $(VENV) state .pytest_cache .hypothesis
