# pdm-federation — one command each for a new user: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.tools
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install tools test test-unit test-integration lint format demo bench clean docker images stack stack-down test-stack

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (idempotent, fast when nothing changed)

$(TOOLS_STAMP): scripts/install-tools.sh
	bash scripts/install-tools.sh
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP) ## install the offline validators (promtool, ...) when missing

test: install tools ## run the whole suite: lint, unit, integration (real RabbitMQ + PySyft), e2e
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: install ## unit tier only (fast, no services)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: install tools ## integration and e2e tiers
	$(VENV)/bin/pytest tests/integration tests/e2e tests/deploy $(PYTEST_ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff formatting and autofixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install ## run the main job: 3 local PySyft factories, 4 services, 5 secure rounds
	$(VENV)/bin/pdmfed demo $(DEMO_ARGS)

docker: ## install Docker from Debian (docker.io, docker-compose 1.29) and start dockerd when missing
	bash scripts/docker-up.sh

images: docker ## build the container images; without a registry, from Debian packages and a host wheelhouse
	bash scripts/images.sh

stack: install images ## the whole stack here: secrets, factory partitions, docker-compose up (docs/deploy.md)
	bash scripts/stack.sh up

stack-down: ## stop the stack; remove its containers, networks and volumes (secrets and data stay)
	bash scripts/stack.sh down

test-stack: install images ## the stack test: a 3-round campaign in containers, a crash, Prometheus, down -v
	$(VENV)/bin/pytest tests/stack -m stack -p no:cacheprovider $(PYTEST_ARGS)

bench: install ## run the side-by-side benchmarks; results in bench/results/, summary in BENCHMARKS.md
	$(PY) -m bench $(BENCH_ARGS)

clean: ## remove run folders and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache .pdmfed
