"""Benchmark demonstration retrieval on RichpediaMEL: batched vs one-at-a-time encoding, full run.

    python -m benchmarks.retrieve [--n 2100] [--batch-size 64] [--data ../shared/data/richpedia-mel]

The original research code encodes mentions one at a time (55 s for 2,100 items); gemel encodes
in batches and ranks with one matrix product per chunk of queries.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from gemel.config import PrepareParams, load_params  # noqa: E402
from gemel.data.prepare import prepare  # noqa: E402
from gemel.search.retrieval import load_text_encoder, retrieve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RICHPEDIA = ROOT.parent / "shared" / "data" / "richpedia-mel"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(RICHPEDIA))
    ap.add_argument("--n", type=int, default=2100, help="mentions encoded both ways")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    args = ap.parse_args()

    mentions = prepare(PrepareParams(format="melbench", dataset="richpedia", input=args.data,
                                     invalid_records="skip")).mentions
    registry = load_params(ROOT / "params.yaml")["text_encoders"]
    encoder = load_text_encoder(args.encoder, registry)
    texts = mentions["mention"].tolist()[: args.n]
    encoder.encode(texts[:8], batch_size=8)  # warm-up: first-call allocations are not the method's cost

    t0 = time.perf_counter()
    batched = encoder.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    single = np.stack([encoder.encode(t, normalize_embeddings=True, show_progress_bar=False) for t in texts])
    t_single = time.perf_counter() - t0

    t0 = time.perf_counter()
    demos, stats = retrieve(mentions, "simcse", 16, encoder=encoder, batch_size=args.batch_size)
    t_full = time.perf_counter() - t0

    print(json.dumps({
        "encoder": args.encoder,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "encode_n": len(texts),
        "batched": {"seconds": round(t_batched, 2), "items_per_s": round(len(texts) / t_batched, 1),
                    "batch_size": args.batch_size},
        "one_at_a_time": {"seconds": round(t_single, 2), "items_per_s": round(len(texts) / t_single, 1)},
        "speedup": round(t_single / t_batched, 1),
        "max_abs_embedding_diff": float(np.abs(batched - single).max()),
        "full_simcse_retrieval": {
            "queries": stats.queries, "pool": stats.pool, "top_k": 16,
            "distinct_texts_encoded": stats.encoded,
            "encode_seconds": round(stats.encode_seconds, 2),
            "rank_seconds": round(t_full - stats.encode_seconds, 2),
            "seconds": round(t_full, 2),
            "queries_per_s": round(len(demos) / t_full, 1),
            "encoded_per_s": round(stats.encoded / stats.encode_seconds, 1),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
