"""The trie of a KB's entity names for one LLM (`EntityTrie`): every name's tokens then EOS in a
gemel.generation.trie.Trie, with the names and entity ids the values map to, in one .npz. Built
by the trie stage (`build_kb_trie`) from Arrow columns, with a forked tokenizer per core at scale,
so 7.4M names take about a minute and no Python string per name, and without torch in the process
(the tokenizer comes from a child interpreter): 1.7 GiB at 7.4M names (docs/scale.md).
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gemel.generation.trie import FORMAT, Trie, TrieError, load_npz, save_npz_atomic


@dataclass(frozen=True)
class Strings:
    """Many strings as one UTF-8 buffer and offsets: compact, and no pickle in the .npz
    (a numpy unicode array pads every string to the longest, 4 bytes a character)."""
    data: np.ndarray      # uint8
    offsets: np.ndarray   # int64, len + 1

    @classmethod
    def pack(cls, strings: Sequence[str]) -> Strings:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    @classmethod
    def from_arrow(cls, strings: pa.Array) -> Strings:
        """An Arrow string array's own buffers (no Python string per row): 7.4M names in 0.1 s."""
        arr = pc.cast(strings, pa.large_string()).combine_chunks() if isinstance(strings, pa.ChunkedArray) \
            else pc.cast(strings, pa.large_string())
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        if offsets[0] == 0:  # views of Arrow's buffers, which they keep alive
            return cls(data[:offsets[-1]], offsets)
        return cls(data[offsets[0]:offsets[-1]].copy(), offsets - offsets[0])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


@dataclass(frozen=True)
class EntityTrie:
    """The trie of a KB's names tokenized for one LLM: value i is KB row i."""
    trie: Trie
    entity_ids: Strings
    names: Strings
    llm: str
    eos_id: int

    @property
    def duplicates(self) -> int:
        """KB rows whose token sequence repeats an earlier row's (same name): they map to the first."""
        return len(self.names) - self.trie.num_values

    def save(self, path: str | Path) -> None:
        save_npz_atomic(path, {
            "format": np.array(FORMAT), **self.trie.arrays(),
            "entity_ids_utf8": self.entity_ids.data, "entity_ids_offsets": self.entity_ids.offsets,
            "names_utf8": self.names.data, "names_offsets": self.names.offsets,
            "llm": np.array(self.llm), "eos_id": np.array(self.eos_id, dtype=np.int64)})

    @classmethod
    def load(cls, path: str | Path) -> EntityTrie:
        data = load_npz(path)
        need = ("entity_ids_utf8", "entity_ids_offsets", "names_utf8", "names_offsets", "llm", "eos_id")
        missing = [k for k in need if k not in data]
        if missing:
            raise TrieError(f"{path}: not an entity trie (missing: {', '.join(missing)})")
        trie = Trie.from_npz(data, path)
        ids = Strings(data["entity_ids_utf8"], data["entity_ids_offsets"])
        names = Strings(data["names_utf8"], data["names_offsets"])
        if len(ids) != len(names) or (trie.num_nodes and trie.values.max() >= len(names)):
            raise TrieError(f"{path}: {len(names)} names, {len(ids)} entity ids, values up to {trie.values.max()}")
        return cls(trie, ids, names, str(data["llm"]), int(data["eos_id"]))


def build_entity_trie(names: Sequence[str] | pa.Array | pa.ChunkedArray,
                      entity_ids: Sequence[str] | pa.Array | pa.ChunkedArray, tokenizer: Any, llm_name: str,
                      batch_size: int = 10_000, workers: int | None = None) -> EntityTrie:
    """KB names -> the trie of their answer sequences (tokens, then EOS, as gemel.generation.llm.answer_ids),
    tokenized in batches and kept as flat arrays so millions of names stay small. Names and ids may
    be Arrow arrays (the trie stage reads the KB so): no Python string is then made but a batch's.
    `workers` processes tokenize (None: one per core from PARALLEL_FROM names on); the result does
    not depend on their number."""
    names, entity_ids = _strings(names, "name"), _strings(entity_ids, "entity_id")
    if len(names) != len(entity_ids):
        raise TrieError(f"{len(names)} names but {len(entity_ids)} entity ids")
    trie, eos = names_trie(names, tokenizer, llm_name, lambda i: entity_ids[i].as_py(), batch_size, workers)
    return EntityTrie(trie, Strings.from_arrow(entity_ids), Strings.from_arrow(names), llm_name, eos)


def names_trie(names: pa.LargeStringArray, tokenizer: Any, llm_name: str, entity_id: Callable[[int], str],
               batch_size: int = 10_000, workers: int | None = None) -> tuple[Trie, int]:
    """(the trie of the names' answer sequences, the EOS id): build_entity_trie without the ids, which
    the trie stage reads only afterwards (`entity_id(i)` names row i in an error)."""
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(names)), 0), True)
    if pc.any(blank).as_py():
        i = int(np.flatnonzero(blank.to_numpy(zero_copy_only=False))[0])
        raise TrieError(f"KB row {i} (entity_id {entity_id(i)!r}): field 'name' is empty or not text: "
                        f"{names[i].as_py()!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrieError(f"LLM {llm_name}: the tokenizer has no EOS token, so names cannot end")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if len(names) >= PARALLEL_FROM else 1
    flat, lengths = tokenize(names, tokenizer, eos, batch_size, workers)
    return Trie.from_flat(flat, lengths), int(eos)


# From this many names the trie stage tokenizes in a process per core: a fast tokenizer costs
# 15-25 µs a name in a loop that holds the GIL, minutes at 7.4M names.
PARALLEL_FROM = 200_000
# A forked worker's names, tokenizer and batch size, inherited rather than sent.
_JOB: tuple[pa.LargeStringArray, Any, int, int] | None = None


def tokenize(names: pa.LargeStringArray, tokenizer: Any, eos: int, batch_size: int, workers: int = 1
             ) -> tuple[np.ndarray, np.ndarray]:
    """(every name's tokens then EOS, concatenated, int32; each one's length). With workers > 1,
    forked processes take spans of names in order."""
    global _JOB
    if workers <= 1 or len(names) <= batch_size:
        return _tokenize_span(names, tokenizer, eos, batch_size)
    span = max(batch_size, -(-len(names) // (workers * 8)))  # several spans a worker: even ends
    spans = [(lo, min(lo + span, len(names))) for lo in range(0, len(names), span)]
    _JOB = (names, tokenizer, eos, batch_size)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_tokenize_job, spans, chunksize=1)
    finally:
        _JOB = None
    return _concatenate(parts)


def _tokenize_job(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    names, tokenizer, eos, batch_size = _JOB
    return _tokenize_span(names.slice(span[0], span[1] - span[0]), tokenizer, eos, batch_size)


def _tokenize_span(names: pa.LargeStringArray, tokenizer: Any, eos: int, batch_size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for lo in range(0, len(names), batch_size):
        ids = token_ids(tokenizer, names.slice(lo, batch_size).to_pylist())
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
        parts.append((np.fromiter(itertools.chain.from_iterable(x + [eos] for x in ids), dtype=np.int32,
                                  count=int(lens.sum())), lens))
    return _concatenate(parts)


def _concatenate(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Parts' tokens and lengths, each into one array, freeing the parts as it goes."""
    lengths = np.concatenate([n for _, n in parts]) if parts else np.zeros(0, np.int64)
    flat = np.empty(int(sum(len(t) for t, _ in parts)), dtype=np.int32)
    at = 0
    for i, (t, _) in enumerate(parts):
        flat[at:at + len(t)] = t
        at += len(t)
        parts[i] = None  # type: ignore[call-overload]
    return flat, lengths


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's tokens without special tokens, as `tokenizer(texts, add_special_tokens=False)`
    gives them. A fast tokenizer's Rust backend is asked directly (encode_batch_fast skips the
    offsets): the Python wrapper's BatchEncoding costs three times the tokenization."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False).input_ids
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray, field: str) -> pa.LargeStringArray:
    """Names or ids as one Arrow large-string array; a value that is not text is an error naming its row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise TrieError(f"KB field '{field}': expected text, found Arrow type {values.type}")
        return pc.cast(values, pa.large_string())
    values = list(values)
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, str):
            raise TrieError(f"KB row {i}: field '{field}' is not text: {v!r}")
    return pa.array(values, pa.large_string())


@dataclass(frozen=True)
class BackendTokenizer:
    """An LLM tokenizer's Rust backend and EOS id: all the trie needs (see token_ids), with neither
    transformers nor torch in the process."""
    backend_tokenizer: Any  # tokenizers.Tokenizer
    eos_token_id: int | None


def load_backend_tokenizer(llms: dict[str, Any], llm: str) -> Any:
    """The LLM's tokenizer as gemel.generation.llm.load_tokenizer gives it, loaded in a child
    interpreter and handed back as its backend's JSON: the same tokens by construction, while this
    process never imports torch (0.75 GiB of the trie stage's 2 GB budget at 7.4M names). A plain
    subprocess, not multiprocessing's spawn, which would run the caller's main script again. A
    tokenizer without a Rust backend (a slow one) is loaded here instead."""
    with tempfile.TemporaryDirectory(prefix="gemel-tokenizer-") as tmp:
        out = Path(tmp) / "tokenizer.json"
        done = subprocess.run([sys.executable, "-c", _EXPORT, llm, str(out)], input=json.dumps(llms),
                              capture_output=True, text=True)
        if done.returncode == 2:  # a GemelError: its message is the error (an unknown LLM, missing weights)
            raise TrieError(done.stderr.strip().splitlines()[-1])
        if done.returncode != 0:
            raise RuntimeError(f"loading the tokenizer of LLM {llm} failed:\n{done.stderr[-4000:]}")
        state = json.loads(out.read_text(encoding="utf-8"))
    if state["backend"] is None:
        from gemel.generation.llm import get_spec, load_tokenizer
        return load_tokenizer(get_spec(llms, llm))
    import tokenizers
    return BackendTokenizer(tokenizers.Tokenizer.from_str(state["backend"]), state["eos_token_id"])


_EXPORT = "import sys; from gemel.generation.kb_trie import _export_backend; sys.exit(_export_backend(*sys.argv[1:]))"


def _export_backend(llm: str, out: str) -> int:
    """The child of load_backend_tokenizer: the registry on stdin, the tokenizer's state to `out`."""
    from gemel.errors import GemelError
    from gemel.generation.llm import get_spec, load_tokenizer

    try:
        tokenizer = load_tokenizer(get_spec(json.load(sys.stdin), llm))
    except GemelError as e:
        print(e, file=sys.stderr)
        return 2
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = {"backend": None if backend is None else backend.to_str(), "eos_token_id": tokenizer.eos_token_id}
    Path(out).write_text(json.dumps(state), encoding="utf-8")
    return 0


def build_kb_trie(kb_path: str | Path, llms: dict[str, Any], llm: str) -> tuple[EntityTrie, dict[str, Any]]:
    """The trie stage: the prepared KB's names for one LLM of the registry, and a report. Memory at
    7.4M names is the budget: the tokenizer is loaded first in a child of its own, and the ids are
    read only once the trie is built."""
    import time

    from gemel.data.tables import read_arrow

    tokenizer = load_backend_tokenizer(llms, llm)
    t0 = time.perf_counter()

    def column(name: str) -> pa.LargeStringArray:
        # Arrow columns, not a DataFrame: a Python string per name would cost gigabytes at 7.4M names.
        return _strings(read_arrow(kb_path, "prepare", columns=[name]).column(name), name)

    names = column("name")
    trie, eos = names_trie(names, tokenizer, llm, lambda i: column("entity_id")[i].as_py())
    ids = column("entity_id")
    if len(ids) != len(names):  # the same file read twice: only a file replaced meanwhile differs
        raise TrieError(f"{kb_path}: {len(names)} names but {len(ids)} entity ids")
    entity_trie = EntityTrie(trie, Strings.from_arrow(ids), Strings.from_arrow(names), llm, eos)
    report = {"llm": llm, "names": len(entity_trie.names), "nodes": entity_trie.trie.num_nodes,
              # same name (token sequence) as an earlier entity: maps to the first
              "duplicate_names": entity_trie.duplicates,
              "max_depth": entity_trie.trie.max_depth(),  # tokens of the longest name, EOS included
              "build_seconds": round(time.perf_counter() - t0, 3)}
    return entity_trie, report
