# Two commands set up a fresh machine: `make demo` (the local end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install checkov engine test lint demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# checkov (the Kubernetes manifest scan in tests/stacks/test_gcp.py) pins dependencies that clash with
# the project's, so it gets a venv of its own; the tests find it at $(CHECKOV_VENV)/bin/checkov.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

checkov: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# llama-server for the local baseline: built once from the pinned llama-cpp-python sdist (~6 min on 2 cores)
# into ~/.cache/llm-inference (LLM_INFERENCE_CACHE moves it), then reused by every clone.
engine: install
	$(PY) -m local.engine

test: install checkov engine
	$(PY) -m pytest

# The local end-to-end run: llama-server + emulator + gateway, benchmarked directly and through the gateway.
demo: engine
	$(PY) -m local.demo $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache results
