# agentmesh: `make demo` runs the mesh on this machine, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GEMINI_CLI_VERSION := 0.61.0
GEMINI_CLI_DIR := .cache/gemini-cli
GEMINI_CLI := $(GEMINI_CLI_DIR)/node_modules/.bin/gemini
LINTED := $(wildcard src tests bench protos)
export XDG_RUNTIME_DIR ?= $(CURDIR)/.cache/runtime
export AGENTMESH_GEMINI_CLI := $(CURDIR)/$(GEMINI_CLI)

.PHONY: all venv gemini-cli sandbox-tools protos lint typecheck test unit mutate demo bench clean

all: test

$(BIN)/agentmesh: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/agentmesh

$(GEMINI_CLI):
	mkdir -p $(GEMINI_CLI_DIR)
	npm install --prefix $(GEMINI_CLI_DIR) --no-audit --no-fund --loglevel=error \
		@google/gemini-cli@$(GEMINI_CLI_VERSION)
	test -x $@

gemini-cli: $(GEMINI_CLI)

# The OS sandbox nodes confine tasks with (Debian's bubblewrap): installed with apt when this
# runs as root. Without it a node refuses shell and gemini tasks (node.sandbox: auto), so the
# tests that run them fail, saying so; tests/node/test_sandbox.py skips.
sandbox-tools:
	@if command -v bwrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null); \
	else echo "bubblewrap is not installed and cannot be installed here (not root):"\
		"nodes will refuse shell and gemini tasks; install it (apt install bubblewrap)"; fi

protos: venv
	$(BIN)/python protos/generate.py

lint: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: venv
	$(BIN)/mypy

test: venv gemini-cli sandbox-tools lint typecheck
	mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(BIN)/pytest

# The fast layer: pure tests (no database, no npm) and the task store's transitions on the
# embedded PostgreSQL. `make test` runs these too, the store's on the system server as well.
unit: venv
	mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	AGENTMESH_TEST_SERVERS=embedded $(BIN)/pytest tests/unit tests/store

# Mutation testing (slow, not part of `make test`): each module's mutants run its own tests.
# MODULES names some of tests/mutation/targets.py (or "all"); default: the stable ones.
mutate: venv
	mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(BIN)/python -m tests.mutation $(MODULES) $(if $(MINUTES),--minutes $(MINUTES))

demo: venv sandbox-tools
	mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(BIN)/agentmesh demo

# Every bench/*.py: node.py, dispatch.py, rpc_server.py, jit.py, scale.py, keys.py,
# faults.py, memory.py, soak.py (bench/support/ holds their helpers; bench/HISTORY.md,
# earlier figures).
bench: venv gemini-cli sandbox-tools
	mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
