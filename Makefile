# The README's commands. `make run` and `make test` each set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test demo drill lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

## run: start the exporter (an embedded PostgreSQL when DATABASE_URL is not set)
run: $(STAMP)
	$(BIN)/liquid-abt-exporter serve $(ARGS)

## test: the whole suite (a throwaway PostgreSQL unless DATABASE_URL is set)
test: $(STAMP)
	$(BIN)/ruff check exporter tests bench
	$(BIN)/mypy exporter
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## demo: the whole loop locally; ARGS=--drill runs a scripted Kraken outage and recovery
demo: $(STAMP)
	$(BIN)/liquid-abt-exporter demo $(ARGS)

## drill: the runbooks' incidents on the whole loop with the shipped timers, one timeline each (about an hour)
drill: $(STAMP)
	$(BIN)/liquid-abt-exporter drill $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench

typecheck: $(STAMP)
	$(BIN)/mypy exporter

## bench: refresh and scrape cost against large tables; webhook answer time
bench: $(STAMP)
	$(BIN)/python bench/collector_refresh.py
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/worker_and_idle.py

clean:
	rm -rf $(VENV) .data
