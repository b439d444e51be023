"""candidates: {prepare.out}/{mentions,kb}.parquet -> {candidates.out}/candidates.parquet (the top-K KB
entities of every mention, with scores and sources) and report.json (fitted weights, recall@1/5/K per split)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gemel.candidates import CANDIDATES, CandidateError, generate
from gemel.config import CandidatesParams, section
from gemel.data.importers import DataError
from gemel.data.tables import read_kb, read_mentions, write_parquet_atomic, write_text_atomic
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = section(params, "candidates", CandidatesParams)
    prepared = Path(params["prepare"]["out"])
    for name in ("mentions.parquet", "kb.parquet"):
        if not (prepared / name).is_file():
            raise DataError(f"{prepared / name}: no such file (run the prepare stage first)")
    t0 = time.perf_counter()
    table, report = generate(read_mentions(prepared / "mentions.parquet"), read_kb(prepared / "kb.parquet"),
                             p.top_k, p.pool, p.fit_limit)
    report = {**report, "mentions": int(len(table)), "seconds": round(time.perf_counter() - t0, 2)}
    write_parquet_atomic(table, Path(p.out) / "candidates.parquet", CANDIDATES)
    text = json.dumps(report, indent=2)
    write_text_atomic(text + "\n", Path(p.out) / "report.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("candidates", main, errors=(CandidateError, DataError)))
