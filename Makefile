# thinkmesh — the two commands a new user runs are `make devnet` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines take the CPU build that lies on disk; on a GPU box: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: install install-test chromium devnet selfcheck test test-contracts test-python contracts bench clean

install: $(VENV)/.installed contracts/node_modules/.installed

install-test: install $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11+ is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -e '.[test]'
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory chromium
	@touch $@

# The dashboard's browser test drives Debian's chromium (Playwright's own download fails offline).
chromium:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	  || { echo "error: could not install chromium (apt-get install chromium)"; exit 1; }

contracts/node_modules/.installed: contracts/package.json contracts/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20+ (apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix contracts --no-audit --no-fund --loglevel=error
	@touch $@

# The main job: anvil, the ledger, a coordinator, 4 nodes and the dashboard on this machine.
# DEVNET_ARGS="--rounds 3 --cheater random-gradient" passes options through.
DEVNET_ARGS ?=
devnet: install
	$(BIN)/thinkmesh devnet up $(DEVNET_ARGS)

selfcheck: install
	$(BIN)/thinkmesh selfcheck

# Only after editing contracts/src: the built ABI and bytecode are committed under protocol/chain/abi/.
contracts: contracts/node_modules/.installed
	npm run --silent build --prefix contracts

test-contracts: contracts/node_modules/.installed
	FOUNDRY_PROFILE=ci npm test --prefix contracts

test-python: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: install-test test-contracts test-python

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) contracts/node_modules contracts/out contracts/cache .pytest_cache .hypothesis
