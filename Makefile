# ModelCloud: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE := examples/imagenet-classifier
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help install run test lint fmt typecheck pytest bench up down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml sdk/pyproject.toml proto/pyproject.toml $(EXAMPLE)/requirements.txt
	@# Model code runs in a bubblewrap sandbox (docs/SECURITY.md): Debian's package, when we may.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && apt-get install -y -qq bubblewrap; }; } || \
	  echo "bubblewrap is missing: install it (apt-get install bubblewrap), or set BUILDER_SANDBOX=none"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade "pip>=24" "setuptools>=69" wheel
	# torch first and pinned: anything resolving a newer torch would pull the CUDA build.
	$(BIN)/python -m pip install -qq "torch==2.13.0"
	$(BIN)/python -m pip install -qq -e proto -e sdk -e ".[dev]" -r $(EXAMPLE)/requirements.txt
	touch $(STAMP)

install: $(STAMP) ## create .venv/ with the SDK, the platform packages and the dev tools

run: $(STAMP) ## start the platform, deploy the example, classify real photos through the gateway
	@PORT=$(PORT) BIN=$(BIN) EXAMPLE=$(EXAMPLE) bash deploy/run-example.sh

lint: $(STAMP) ## ruff (lint + format check) and the import rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: $(STAMP) ## format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy strict on every package
	$(BIN)/mypy proto/modelcloud_proto sdk/modelcloud sdk/bolt4ds services testing/modelcloud_testing

# In parallel (pytest-xdist), one test process per core: tests that share a Docker engine,
# a RabbitMQ broker or a module's fixture keep to one process (testing/modelcloud_testing/
# workers.py). PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= auto

pytest: $(STAMP) ## the test suite alone
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint typecheck pytest ## everything: lint, types, tests

$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -qq -e ".[bench]"
	touch $@

bench: $(STAMP) $(VENV)/.bench-installed ## benchmarks (results go to bench/RESULTS.md by hand, with the machine and date)
	$(BIN)/python bench/model_server.py
	$(BIN)/python bench/filestore.py
	$(BIN)/python bench/gateway.py   # needs nginx and wrk: apt-get install nginx-light wrk
	$(BIN)/python bench/tracking.py  # makes bench/out/mlflow-venv with mlflow the first time
	$(BIN)/python bench/soak.py      # finds the highest steady rate, then 10 min of it (locust)

up: ## the full stack with docker compose
	docker compose -f deploy/docker-compose.yml up -d

down: ## stop the compose stack
	docker compose -f deploy/docker-compose.yml down

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
