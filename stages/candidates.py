"""candidates: {prepare.out}/{mentions,kb}.parquet -> {candidates.out}/candidates.parquet (the top-K KB
entities of every mention, with scores and sources), kb_embeddings.parquet (the dense source's KB
vectors, reused while the KB and encoder are unchanged), report.json (fitted weights, recall@1/5/K per split,
overall and per source: equal inputs, equal bytes, since train reads it) and cost.json (time and memory)."""
from __future__ import annotations

import json
import sys

from gemel import stack
from gemel.atomic import write_text_atomic
from gemel.config import CandidatesParams, section
from gemel.data.tables import write_parquet_atomic
from gemel.paths import Artifacts
from gemel.search.candidates import CANDIDATES, generate_for
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    a = Artifacts.of(params)
    table, report = generate_for(a, section(params, "candidates", CandidatesParams), params["text_encoders"])
    write_parquet_atomic(table, a.candidates, CANDIDATES)
    text = json.dumps({**report, "stack": stack.record("cpu")}, indent=2)
    write_text_atomic(text + "\n", a.candidates_report)
    cost = json.dumps({"cost": _cli.cost()}, indent=2)
    write_text_atomic(cost + "\n", a.candidates_cost)
    print(text)
    print(cost)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("candidates", main))
