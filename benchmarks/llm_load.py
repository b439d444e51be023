"""Benchmark loading the GGUF LLMs: directly, on a cold LLM cache, and from its entry (warm).

    python -m benchmarks.llm_load [--llms smollm2-135m gemma3-270m]

Each load runs in a fresh process, as a stage does: tokenizer + model through gemel.generation.llm, then one
forward pass over a short prompt (reading the weights from a memory-mapped entry is part of it).
`direct` is GEMEL_LLM_CACHE=0 (transformers de-quantizes the GGUF); `cold` is the first load with
an empty cache (the same, plus writing the entry); `warm` reads the entry. The cache is a
temporary folder, so the user's cache is neither used nor changed. Times exclude importing torch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "Freddie Mercury was the lead singer of"


def child(name: str) -> None:
    """One load in this process; prints its timings as JSON."""
    import torch

    from gemel.config import load_params
    from gemel.generation.llm import get_spec, load_llm, load_tokenizer

    spec = get_spec(load_params()["llms"], name)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec)
    t1 = time.perf_counter()
    model = load_llm(spec)
    t2 = time.perf_counter()
    with torch.no_grad():
        logits = model(tokenizer(PROMPT, return_tensors="pt").input_ids).logits
    t3 = time.perf_counter()
    print(json.dumps({"tokenizer_s": round(t1 - t0, 2), "model_s": round(t2 - t1, 2),
                      "first_forward_s": round(t3 - t2, 2), "load_s": round(t2 - t0, 2),
                      "logits_sum": float(logits.double().sum())}))


def run(name: str, cache: Path, enabled: bool) -> dict[str, Any]:
    env = os.environ | {"GEMEL_CACHE": str(cache), "GEMEL_LLM_CACHE": "1" if enabled else "0",
                        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.llm_load", "--child", name], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gemel-llm-cache-") as d:
        cache = Path(d)
        result = {"direct": run(name, cache, enabled=False), "cold": run(name, cache, enabled=True),
                  "warm": run(name, cache, enabled=True)}
        entry, = (cache / "llm").glob("[!.]*")
        result["entry"] = entry.name
        result["entry_mb"] = round(sum(p.stat().st_size for p in entry.iterdir()) / 2**20, 1)
    sums = {k: result[k].pop("logits_sum") for k in ("direct", "cold", "warm")}
    result["same_logits"] = len(set(sums.values())) == 1
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llms", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    for name in args.llms:
        print(json.dumps({name: bench(name)}, indent=2), flush=True)


if __name__ == "__main__":
    main()
