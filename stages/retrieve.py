"""retrieve: {prepare.out}/mentions.parquet -> {retrieve.out}/demos.parquet (demonstration ids per mention)
and pool.parquet (the pool's ids, query texts and simcse embeddings: what `gemel link` retrieves from)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gemel.config import RetrieveParams, section
from gemel.data.importers import DataError
from gemel.data.tables import read_mentions, write_parquet_atomic
from gemel.retrieval import DEMOS, DemoPool, RetrievalError, load_text_encoder, retrieve, write_pool
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = section(params, "retrieve", RetrieveParams)
    mentions_path = Path(params["prepare"]["out"]) / "mentions.parquet"
    if not mentions_path.is_file():
        raise DataError(f"{mentions_path}: no such file (run the prepare stage first)")
    mentions = read_mentions(mentions_path)
    # Only simcse needs the encoder: random/bm25 runs must not fail on an absent model.
    encoder = load_text_encoder(p.encoder, params["text_encoders"]) if p.method == "simcse" else None
    t0 = time.perf_counter()
    demos, stats = retrieve(mentions, p.method, p.top_k, query=p.query, encoder=encoder,
                            batch_size=p.batch_size, seed=p.seed)
    seconds = time.perf_counter() - t0
    write_parquet_atomic(demos, Path(p.out) / "demos.parquet", DEMOS)
    pool = DemoPool.of(mentions, p.method, p.query, p.encoder if encoder is not None else None, p.seed,
                       stats.pool_vectors)
    write_pool(pool, Path(p.out) / "pool.parquet")
    report = {
        "method": p.method,
        "encoder": p.encoder if encoder is not None else None,
        "query": p.query,
        "queries": stats.queries,
        "pool": stats.pool,
        "top_k": p.top_k,
        "seconds": round(seconds, 2),
    }
    if stats.encoded is not None:
        report["texts_encoded"] = stats.encoded  # distinct query texts
        report["encoded_per_s"] = round(stats.encoded / max(stats.encode_seconds or 0.0, 1e-9), 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("retrieve", main, errors=(RetrievalError, DataError)))
