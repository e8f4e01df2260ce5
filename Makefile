# The README's commands. `make run` and `make test` each set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: run test demo drill lint typecheck bench bench-quick clean

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

# query-exporter, the benchmark's anchor, in its own venv: not a dependency of the exporter.
$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet 'query-exporter>=5,<6' psycopg2-binary
	touch $(BENCH_STAMP)

## bench: beside query-exporter: scrapes, RSS, DB transactions, refreshes at 1M / 10M / storm
## (about 30 minutes on 2 cores); then the webhook's answer time
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/compare.py --query-exporter $(BENCH_VENV)/bin/query-exporter
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/worker_and_idle.py

## bench-quick: the same comparison on 100k / 1M rows with shorter scrapes (a few minutes)
bench-quick: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/compare.py --query-exporter $(BENCH_VENV)/bin/query-exporter --quick

clean:
	rm -rf $(VENV) $(BENCH_VENV) .data
