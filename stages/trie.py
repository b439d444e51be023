"""trie: {prepare.out}/kb.parquet -> {train.out}/{model.llm}/trie.npz, the prefix trie of every KB
entity name tokenized for the LLM (tokens, then EOS) that constrains decoding."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gemel.config import ModelParams, TrainParams, section
from gemel.data.importers import DataError
from gemel.data.tables import read_kb
from gemel.llm import LLMError, get_spec, load_tokenizer
from gemel.trie import TrieError, build_entity_trie
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    llm = section(params, "model", ModelParams).llm
    out = Path(section(params, "train", TrainParams).out) / llm / "trie.npz"
    kb_path = Path(params["prepare"]["out"]) / "kb.parquet"
    if not kb_path.is_file():
        raise DataError(f"{kb_path}: no such file (run the prepare stage first)")
    kb = read_kb(kb_path)
    tokenizer = load_tokenizer(get_spec(params["llms"], llm))
    t0 = time.perf_counter()
    entity_trie = build_entity_trie(kb["name"].tolist(), kb["entity_id"].tolist(), tokenizer, llm)
    seconds = time.perf_counter() - t0
    entity_trie.save(out)
    report = {
        "llm": llm,
        "names": len(entity_trie.names),
        "nodes": entity_trie.trie.num_nodes,
        "duplicate_names": entity_trie.duplicates,  # same name (token sequence) as an earlier entity: maps to the first
        "max_depth": entity_trie.trie.max_depth(),  # tokens of the longest name, EOS included
        "build_seconds": round(seconds, 3),         # tokenizing and building
        "file_bytes": out.stat().st_size,
        "out": str(out),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("trie", main, errors=(LLMError, DataError, TrieError)))
