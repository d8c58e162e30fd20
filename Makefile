# Two commands do all set-up on a fresh machine:
#   make serve   serve the example embeddings model on http://127.0.0.1:8000
#   make test    lint, type-check and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is enough for the example and the tests.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: install system-deps serve test lint typecheck unit bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[examples,dev]'
	touch $@

install: $(VENV)/.installed

# nginx and Caddy are the real edges the custom-domain tests put in front of the server;
# Node.js runs the generated Cloudflare Worker; Prometheus scrapes the served example.
system-deps:
	@command -v nginx >/dev/null && command -v caddy >/dev/null && command -v node >/dev/null \
	  && command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    nginx caddy prometheus openssl curl $$(command -v node >/dev/null || echo nodejs) >/dev/null; }

serve: install
	$(BIN)/mfk serve examples/embeddings.py --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check modal_fastapi_kit tests examples benchmarks
	$(BIN)/ruff format --check modal_fastapi_kit tests examples benchmarks

typecheck: install
	$(BIN)/mypy

test: install system-deps lint typecheck
	$(BIN)/python -m pytest

# The serving benchmark (a few minutes; not part of `make test`): four servers side by side,
# written to docs/performance.md and docs/performance.png. Benchmark-only installs: wrk, litserve
# and matplotlib (see benchmarks/requirements.txt).
bench: install
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python -m benchmarks.serving
