"""trie: {prepare.out}/kb.parquet -> {trie.out}/{model.llm}.npz, the prefix trie of every KB entity
name tokenized for the LLM (tokens, then EOS) that constrains decoding, and {model.llm}.json, its
report. One per LLM and KB: every run of that LLM shares it."""
from __future__ import annotations

import json
import sys

import pyarrow as pa

from gemel.atomic import write_text_atomic
from gemel.config import ModelParams, section
from gemel.generation.kb_trie import build_kb_trie
from gemel.paths import Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    # The system allocator hands the KB table's memory back once the names are taken from it; Arrow's
    # default pool keeps it (0.5 GB at 7.4M names, a quarter of the stage's peak).
    pa.set_memory_pool(pa.system_memory_pool())
    a = Artifacts.of(params)
    entity_trie, report = build_kb_trie(a.kb, params["llms"], section(params, "model", ModelParams).llm)
    entity_trie.save(a.trie)
    text = json.dumps({**report, "file_bytes": a.trie.stat().st_size, "out": str(a.trie), "cost": _cli.cost()},
                      indent=2)
    write_text_atomic(text + "\n", a.trie_report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("trie", main))
