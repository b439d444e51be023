"""trie: {prepare.out}/kb.parquet -> {trie.out}/{model.llm}.npz, the prefix trie of every KB entity
name tokenized for the LLM (tokens, then EOS) that constrains decoding. One per LLM and KB: every
run of that LLM shares it."""
from __future__ import annotations

import json
import sys

from gemel.config import ModelParams, section
from gemel.generation.trie import build_kb_trie
from gemel.paths import Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    a = Artifacts.of(params)
    entity_trie, report = build_kb_trie(a.kb, params["llms"], section(params, "model", ModelParams).llm)
    entity_trie.save(a.trie)
    print(json.dumps({**report, "file_bytes": a.trie.stat().st_size, "out": str(a.trie)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("trie", main))
