# Two commands do all set-up on a fresh machine:
#   make serve   serve the example embeddings model on http://127.0.0.1:8000
#   make test    lint, type-check, build the docs site and run the whole test suite
# and, once set up:
#   make unit    the fast tests only (no servers, no example model)
#   make docs    build the docs site into site/ (`make docs-serve` serves it with live reload)
#   make lock    regenerate constraints.txt, the versions every install here uses
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is enough for the example and the tests.
TORCH ?= torch==2.13.0
# Every install takes its versions from the lock, so a fresh machine gets the versions of the
# last green run. The extras installed for development, and locked together:
LOCK := constraints.txt
EXTRAS := examples,dev,docs
export HF_HUB_OFFLINE := 1

.PHONY: install system-deps serve test lint typecheck unit docs docs-serve lock bench

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) "$(TORCH)" -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

# nginx and Caddy are the real edges the custom-domain tests put in front of the server;
# Node.js runs the generated Cloudflare Worker; Prometheus scrapes the served example;
# headless Chromium uploads to a served service from a page on another origin (CORS);
# jq reads the job ids in the curl sessions of README.md and docs/jobs.md.
system-deps:
	@command -v nginx >/dev/null && command -v caddy >/dev/null && command -v node >/dev/null \
	  && command -v prometheus >/dev/null && command -v chromium >/dev/null \
	  && command -v jq >/dev/null && command -v curl >/dev/null && command -v openssl >/dev/null \
	  || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    nginx caddy prometheus chromium openssl curl jq $$(command -v node >/dev/null || echo nodejs) \
	    >/dev/null; }

serve: install
	$(BIN)/mfk serve examples/embeddings.py --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check modal_fastapi_kit tests examples benchmarks
	$(BIN)/ruff format --check modal_fastapi_kit tests examples benchmarks

typecheck: install
	$(BIN)/mypy

# mkdocs.yml: the pages of docs/ and an API reference from the docstrings. --strict fails the
# build on a broken link, a missing page or an unresolved reference.
docs docs-serve: export NO_MKDOCS_2_WARNING := 1
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: install
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8080

test: install system-deps lint typecheck docs
	$(BIN)/python -m pytest

# Tests marked e2e start real servers or run the example models; the rest take a few minutes.
unit: install
	$(BIN)/python -m pytest -m "not e2e"

# Resolve the extras afresh in a throwaway venv and freeze it into $(LOCK), so nothing installed
# by hand (the benchmark's tools, say) gets in. The versions already locked are kept where
# pyproject.toml still allows them: new requirements are added, dropped ones removed.
# `make lock UPGRADE=1` resolves without the old lock: the newest versions pyproject.toml allows.
# torch is recorded without its local label (2.13.0, not 2.13.0+cpu), which the CPU build
# satisfies too.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	pins=$$( [ -n "$(UPGRADE)" ] || [ ! -f $(LOCK) ] || echo "-c $(LOCK)" ); \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet $$pins --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet $$pins "$(TORCH)" -e '.[$(EXTRAS)]'; \
	{ echo "# The versions of a fresh \`pip install \"$(TORCH)\" -e '.[$(EXTRAS)]'\`, used as pip constraints"; \
	  echo "# by \`make install\` (and so by \`make test\` and CI). Regenerate with \`make lock\` after changing"; \
	  echo "# the requirements in pyproject.toml, or \`make lock UPGRADE=1\` to move to the newest versions."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | sed 's/+cpu$$//'; \
	} > "$$tmp/lock.txt"; \
	mv "$$tmp/lock.txt" $(LOCK); \
	echo "wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) packages)"

# The serving benchmark (a few minutes; not part of `make test`): four servers side by side,
# written to docs/performance.md and docs/performance.png. Benchmark-only installs: wrk, litserve,
# matplotlib and py-spy (see benchmarks/requirements.txt), kept out of the lock; the lock still holds
# every package they share with the project.
bench: install
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/python -m pip install --quiet -c $(LOCK) -r benchmarks/requirements.txt
	$(BIN)/python -m benchmarks.serving
