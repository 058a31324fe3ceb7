# Two entry points: `make run` and `make test`. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

CONFIG ?= examples/mcp.json
POLICY ?= examples/meshgate.toml
PYTEST_ARGS ?=

.PHONY: setup run fleet fleet-servers fleet-apt test lint typecheck pytest bench bench-peers \
	redis-server prometheus compose image clean

# The MCP conformance suite needs Node.js >= 22; a pinned build comes from the npm registry.
NODE22_VERSION := 22.23.3
NODE22_ARCH := $(subst aarch64,arm64,$(subst x86_64,x64,$(shell uname -m)))
NODE22_DIR := .tools/node22
NODE22 := $(NODE22_DIR)/node_modules/node-linux-$(NODE22_ARCH)/bin/node
export MESHGATE_NODE22 := $(CURDIR)/$(NODE22)

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "meshgate needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NODE22):
	npm install --prefix $(NODE22_DIR) --no-audit --no-fund --no-save --loglevel=error \
		node-linux-$(NODE22_ARCH)@$(NODE22_VERSION)
	$@ --version

# The Redis registry's tests start their own redis-server (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }

# The monitoring tests run promtool and a real Prometheus (Debian's package); the Consul
# discovery test VictoriaMetrics too (Debian's Prometheus is built without consul_sd_configs).
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null \
		&& command -v victoria-metrics >/dev/null || { \
		echo "installing prometheus and victoria-metrics"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			prometheus victoria-metrics; }

# `docker compose config` for deploy/compose.yaml's test: Docker Compose's CLI, pinned by hash
# in tests/tools/compose.txt (Debian 12 has only Compose 1), in a venv of its own.
COMPOSE_DIR := .tools/compose
COMPOSE := $(COMPOSE_DIR)/bin/docker-compose
export MESHGATE_COMPOSE := $(CURDIR)/$(COMPOSE)

compose: $(COMPOSE)

$(COMPOSE): tests/tools/compose.txt
	test -x $(COMPOSE_DIR)/bin/python || $(PYTHON) -m venv $(COMPOSE_DIR)
	$(COMPOSE_DIR)/bin/pip install --quiet --require-hashes -r tests/tools/compose.txt
	$@ version
	touch $@

run: setup
	$(BIN)/meshgate serve --config $(CONFIG) --policy $(POLICY)

# The older mesh's fleet (examples/sutazai.mcp.json): npm servers pinned in
# examples/fleet/package.json, Python ones in a venv of their own, Debian's Chromium for
# playwright and Debian's PostgreSQL for the postgres server. Nothing is fetched at run time.
FLEET_VENV := .tools/fleet/venv
FLEET_PATH := $(CURDIR)/examples/fleet/node_modules/.bin:$(PATH):$(CURDIR)/$(FLEET_VENV)/bin
FLEET_PG_DIR ?= $(or $(TMPDIR),/tmp)/meshgate-fleet-postgres
FLEET_PG_PORT ?= 55432

# mcp-server-fetch simplifies pages with readabilipy, which runs Readability.js under Node and,
# finding no node_modules beside its script, runs `npm install` at the first fetch. Its modules
# are pinned in examples/fleet/package.json instead, and linked there.
fleet-servers: setup fleet-apt examples/fleet/node_modules/.installed $(FLEET_VENV)/.installed
	ln -sfn $(CURDIR)/examples/fleet/node_modules "$$($(FLEET_VENV)/bin/python -c \
		'import os, readabilipy; print(os.path.dirname(readabilipy.__file__))')/javascript/node_modules"

examples/fleet/node_modules/.installed: examples/fleet/package.json examples/fleet/package-lock.json
	npm ci --prefix examples/fleet --no-audit --no-fund --loglevel=error
	touch $@

$(FLEET_VENV)/.installed: examples/fleet/requirements.txt
	test -x $(FLEET_VENV)/bin/python || $(PYTHON) -m venv $(FLEET_VENV)
	$(FLEET_VENV)/bin/pip install --quiet -r examples/fleet/requirements.txt
	touch $@

fleet-apt:
	@command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing chromium and postgresql"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			chromium postgresql; }

# PostgreSQL runs for as long as the gateway does, in FLEET_PG_DIR on 127.0.0.1:FLEET_PG_PORT.
fleet: fleet-servers
	url=$$(examples/fleet/postgres.sh start $(FLEET_PG_DIR) $(FLEET_PG_PORT)) && \
	trap 'examples/fleet/postgres.sh stop $(FLEET_PG_DIR)' EXIT && trap 'exit 130' INT TERM && \
	FLEET_POSTGRES_URL=$$url PATH=$(FLEET_PATH) \
		$(BIN)/meshgate serve --config examples/sutazai.mcp.json --policy examples/sutazai.toml

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: setup
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: setup $(NODE22) $(COMPOSE) redis-server prometheus fleet-servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/bench_echo.py
	$(BIN)/python bench/bench_mcp.py
	$(BIN)/python bench/bench_proxy.py

# Peer gateways for bench/bench_mcp.py, outside the project's own environment.
bench-peers:
	test -x .tools/peers/venv/bin/python || $(PYTHON) -m venv .tools/peers/venv
	.tools/peers/venv/bin/pip install --quiet mcp-proxy==0.13.0
	npm install --prefix .tools/peers/npm --no-audit --no-fund --no-save --loglevel=error \
		supergateway@4.0.0
	test -x .tools/peers/cf/bin/python || $(PYTHON) -m venv .tools/peers/cf
	.tools/peers/cf/bin/pip install --quiet mcp-contextforge-gateway==1.0.7.post20260921

# The container image (docs/operations.md, "Containers"), tagged IMAGE. Its base is Debian
# bookworm made here with mmdebstrap, or BASE (python:3.11-slim-bookworm, say) from a registry.
IMAGE ?= meshgate:latest
BASE ?=
image:
	IMAGE=$(IMAGE) BASE=$(BASE) deploy/image/build.sh

clean:
	rm -rf $(VENV) node_modules .tools .mypy_cache .ruff_cache .pytest_cache
