"""Benchmark the entity-name trie: build time, memory and query latency.

    python -m benchmarks.trie [--n 1000000]

Two tries: `--n` synthetic token sequences (lengths 2-12, Zipf-ish ids over a 50k vocabulary,
the scale of a Wikipedia KB) and RichpediaMEL's real entity names tokenized by SmolLM2.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gemel.config import load_params  # noqa: E402
from gemel.generation.kb_trie import build_entity_trie  # noqa: E402
from gemel.generation.llm import get_spec, load_tokenizer  # noqa: E402
from gemel.generation.trie import Trie  # noqa: E402

VOCAB = 50_000
RICHPEDIA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "richpedia-mel" / "qid2ne.json"


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens and lengths of n sequences; ids drawn Zipf-like (a few very common tokens, as
    in names: 'The', 'of', common surname pieces) and clipped to the vocabulary."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 13, size=n)
    tokens = (rng.zipf(1.3, size=int(lengths.sum())) - 1) % VOCAB
    return tokens, lengths


def latency(trie: Trie, prefixes: list[list[int]], vocab: int, beams: int = 5) -> dict[str, float]:
    """µs per call of allowed_next (one prefix walk) and allowed_mask (a batch of `beams` nodes)."""
    t0 = time.perf_counter()
    for p in prefixes:
        trie.allowed_next(p)
    next_us = (time.perf_counter() - t0) / len(prefixes) * 1e6
    nodes = np.array([trie.node_of(p) for p in prefixes])
    batches = [nodes[i:i + beams] for i in range(0, len(nodes) - beams + 1, beams)]
    t0 = time.perf_counter()
    for b in batches:
        trie.allowed_mask(b, vocab)
    mask_us = (time.perf_counter() - t0) / len(batches) * 1e6
    return {"allowed_next_us": round(next_us, 1), f"allowed_mask_{beams}_beams_us": round(mask_us, 1)}


def sample_prefixes(seqs: list[list[int]], k: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(seqs), size=k)
    return [seqs[i][:rng.integers(0, len(seqs[i]) + 1)] for i in picks]


def disk_bytes(save: Any) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trie.npz"
        save(path)
        return path.stat().st_size


def bench_synthetic(n: int) -> dict[str, Any]:
    tokens, lengths = synthetic(n)
    t0 = time.perf_counter()
    trie = Trie.from_flat(tokens, lengths)
    build = time.perf_counter() - t0
    # The list-of-lists entry point (Trie.build), as a caller holding Python sequences uses it.
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = tokens.tolist()
    lists = [flat[s:s + ln] for s, ln in zip(starts.tolist(), lengths.tolist())]
    t0 = time.perf_counter()
    Trie.build(lists)
    build_lists = time.perf_counter() - t0
    del flat, lists
    tracemalloc.start()  # a second, traced build: numpy reports its buffers to tracemalloc
    Trie.from_flat(tokens, lengths)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    seqs = [tokens[s:s + ln].tolist() for s, ln in zip(starts[:2000], lengths[:2000])]
    return {"sequences": n, "tokens": int(lengths.sum()), "nodes": trie.num_nodes,
            "duplicates": n - trie.num_values, "build_s": round(build, 2),
            "build_from_lists_s": round(build_lists, 2),
            "build_peak_mb": round(peak / 2**20, 1), "input_mb": round((tokens.nbytes + lengths.nbytes) / 2**20, 1),
            "memory_mb": round(trie.nbytes / 2**20, 1), "disk_mb": round(disk_bytes(trie.save) / 2**20, 1),
            **latency(trie, sample_prefixes(seqs, 2000), VOCAB)}


def bench_richpedia() -> dict[str, Any]:
    qid2ne = json.loads(RICHPEDIA.read_text(encoding="utf-8"))
    tok = load_tokenizer(get_spec(load_params()["llms"], "smollm2-135m"))
    ids, names = list(qid2ne), list(qid2ne.values())
    t0 = time.perf_counter()
    et = build_entity_trie(names, ids, tok, "smollm2-135m")
    build = time.perf_counter() - t0
    seqs = [s + [tok.eos_token_id] for s in tok(names[:2000], add_special_tokens=False).input_ids]
    return {"names": len(names), "nodes": et.trie.num_nodes, "duplicate_names": et.duplicates,
            "max_depth": et.trie.max_depth(), "tokenize_and_build_s": round(build, 2),
            "memory_kb": round((et.trie.nbytes + et.names.data.nbytes + et.entity_ids.data.nbytes) / 2**10, 1),
            "disk_kb": round(disk_bytes(et.save) / 2**10, 1),
            **latency(et.trie, sample_prefixes(seqs, 2000), len(tok))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic sequences (default 1,000,000)")
    args = ap.parse_args()
    print(json.dumps({"synthetic": bench_synthetic(args.n)}, indent=2), flush=True)
    if RICHPEDIA.is_file():
        print(json.dumps({"richpedia_smollm2": bench_richpedia()}, indent=2))
    else:
        print(f"(RichpediaMEL not found at {RICHPEDIA}: real-name benchmark skipped)")


if __name__ == "__main__":
    main()
