"""retrieve: {prepare.out}/mentions.parquet -> {retrieve.out}/demos.parquet (demonstration ids per mention)
and pool.parquet (the pool's ids, query texts and simcse embeddings: what `gemel link` retrieves from)."""
from __future__ import annotations

import json
import sys

from gemel.config import RetrieveParams, section
from gemel.data.tables import read_mentions, write_parquet_atomic
from gemel.paths import Artifacts
from gemel.search.retrieval import DEMOS, retrieve_stage, write_pool
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    a = Artifacts.of(params)
    demos, pool, report = retrieve_stage(read_mentions(a.mentions), section(params, "retrieve", RetrieveParams),
                                         params["text_encoders"])
    write_parquet_atomic(demos, a.demos, DEMOS)
    write_pool(pool, a.pool)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("retrieve", main))
