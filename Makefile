# The README's commands. `make run` and `make test` each set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs (the exporter and the embedded PostgreSQL); what testing needs on top.
RUN_STAMP := $(VENV)/.run-installed
STAMP := $(VENV)/.installed
# The locks: exact versions with hashes, made by uv (`make lock`), installed by plain pip.
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet

BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: help run test test-fast stop-times demo drill lint typecheck bench bench-quick bench-storm lock dashboards slo-rules kubernetes clean

## help: list the targets (the default)
help:
	@awk '/^## [a-z-]+:/ { sub(/^## /, ""); split($$0, part, ": "); printf "  %-13s %s\n", part[1], substr($$0, length(part[1]) + 3); next } /^## / { sub(/^## /, ""); printf "  %-13s %s\n", "", $$0 }' $(MAKEFILE_LIST)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The drill (demo, incident drills, simulator, fake exchanges) is a distribution of its own in drill/:
# the dev venv has it, editable; the exporter's wheel and image do not.
$(RUN_STAMP): requirements/run.txt pyproject.toml drill/pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/run.txt
	$(BIN)/pip install --quiet --no-deps -e . -e drill
	touch $(RUN_STAMP)

$(STAMP): requirements/test.txt pyproject.toml drill/pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps -e . -e drill
	touch $(STAMP) $(RUN_STAMP)

## run: start the exporter (an embedded PostgreSQL when DATABASE_URL is not set)
run: $(RUN_STAMP)
	$(BIN)/liquid-abt-exporter serve $(if $(DATABASE_URL),,--embedded-db) $(ARGS)

# pytest-xdist workers: most tests wait on programs and PostgreSQL more than they compute, so
# more workers than cores pays; tests sharing a module's fixture stay on one worker.
# test-fast's tiers start no program: one more worker keeps the two cores busy.
PYTEST_WORKERS ?= 3
FAST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup
# Bytecode, and pytest's rewritten test modules, cached under the venv even where the environment
# sets PYTHONDONTWRITEBYTECODE: without it every xdist worker (and every exporter a test starts)
# compiles the code and rewrites the tests again, seconds of CPU each.
PYTEST := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache $(BIN)/python -m pytest

## test: the whole suite, tiers unit, db and stack (a throwaway PostgreSQL unless DATABASE_URL is set)
test: $(STAMP)
	$(BIN)/ruff check exporter drill tests bench deploy grafana
	$(BIN)/mypy exporter drill/liquid_abt_drill
	$(BIN)/lint-imports
	$(PYTEST) $(XDIST) $(PYTEST_ARGS)

## test-fast: the unit and db tiers only, no program started, an eighth of the simulator's
## 10,000 generated sequences (under 2 minutes)
test-fast: $(STAMP)
	$(PYTEST) -m "(unit or db) and not thorough" -n $(FAST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## demo: the whole loop locally; ARGS=--drill runs a scripted Kraken outage and recovery
demo: $(RUN_STAMP)
	$(BIN)/liquid-abt-drill demo $(ARGS)

## drill: the runbooks' incidents on the whole loop with the shipped timers, one timeline each (about an hour)
drill: $(RUN_STAMP)
	$(BIN)/liquid-abt-drill drill $(ARGS)

## stop-times: how fast purchases stop with the shipped config, in the incident simulator (a few minutes)
stop-times: $(STAMP)
	$(BIN)/python bench/stop_times.py $(ARGS)

## lint: ruff check and format check
lint: $(STAMP)
	$(BIN)/ruff check exporter drill tests bench deploy grafana
	$(BIN)/ruff format --check exporter drill tests bench deploy grafana

## typecheck: mypy
typecheck: $(STAMP)
	$(BIN)/mypy exporter drill/liquid_abt_drill

# query-exporter, the benchmark's anchor, in its own venv: not a dependency of the exporter.
$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet 'query-exporter>=5,<6' psycopg2-binary
	touch $(BENCH_STAMP)

## bench: beside query-exporter: scrapes, RSS, DB transactions, refreshes at 1M / 10M / storm
## (about 12 minutes on 2 cores); then the webhook's answer time, the worker's drain rate and an idle replica's DB load
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/compare.py --query-exporter $(BENCH_VENV)/bin/query-exporter
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/worker_and_idle.py

## bench-quick: the same comparison on 100k / 1M rows with shorter scrapes (a few minutes)
bench-quick: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/compare.py --query-exporter $(BENCH_VENV)/bin/query-exporter --quick

## bench-storm: only the outage storm (200,000 distinct failure texts) over 1M rows of history
bench-storm: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/compare.py --query-exporter $(BENCH_VENV)/bin/query-exporter --only-storm

## lock: re-resolve requirements/*.txt from pyproject.toml (uv, from PyPI); the subsets follow test.txt
lock: $(STAMP)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --extra embedded --extra test -o requirements/test.txt
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --extra embedded -c requirements/test.txt -o requirements/run.txt
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -c requirements/test.txt -o requirements/image.txt

## dashboards: regenerate the generated dashboards in grafana/dashboards from grafana/*.py
dashboards: $(RUN_STAMP)
	$(BIN)/python grafana/generate.py

## slo-rules: regenerate alerts/slo.rules.yml from the objectives (the defaults; CONFIG=file for yours)
slo-rules: $(RUN_STAMP)
	$(BIN)/liquid-abt-exporter slo-rules $(if $(CONFIG),--config.file=$(CONFIG))

## kubernetes: regenerate deploy/kubernetes/manifests from alerts/, grafana/ and deploy/kubernetes/exporter.yml
## (needs only what `make run` installs)
kubernetes: dashboards
	$(BIN)/python deploy/kubernetes/generate.py

## clean: remove what the project made: the venvs, .data, build output, and the embedded PostgreSQL
## files it put under /var/tmp/liquid-abt-embedded-pg for folders of this checkout (as root)
clean:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m exporter.database.embedded clean $(CURDIR)
	rm -rf $(VENV) $(BENCH_VENV) .data build drill/build *.egg-info drill/*.egg-info
