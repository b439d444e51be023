"""The prefix trie of KB entity names that constrains decoding to valid names.

A dict-of-dicts trie (GENRE's) costs hundreds of bytes per node, GBs for Wikipedia. Here the trie
is four flat arrays (CSR), about 20 bytes per node, built level by level with numpy:

- nodes are numbered breadth-first, root = 0, and within a level by (parent, token);
- the children of node n are positions child_ptr[n]:child_ptr[n+1] of `child_tok` (sorted) and
  `child_node` (their node ids);
- value[n] is the index of the sequence that ends at n (for entity names: the node after EOS), else -1.

`Trie` knows only token sequences; `EntityTrie` adds the thin KB mapping value -> (entity id, name)
and the LLM it was tokenized for. Both save to a plain .npz (no pickle).
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from gemel.atomic import atomic_path
from gemel.errors import GemelError

FORMAT = "gemel-trie/1"
ROOT = 0
_ARRAYS = ("child_ptr", "child_tok", "child_node", "value")


class TrieError(GemelError, ValueError):
    """Bad input to the trie (an empty name, a malformed file); the message names the record or file."""


class Trie:
    """A read-only prefix trie over token sequences; sequence i has value i."""

    def __init__(self, child_ptr: np.ndarray, child_tok: np.ndarray, child_node: np.ndarray, value: np.ndarray):
        self.child_ptr = child_ptr
        self.child_tok = child_tok
        self.child_node = child_node
        self.values = value
        # The largest token: allowed_mask checks it once against the vocabulary, not per call.
        self.max_token = int(child_tok.max()) if len(child_tok) else -1

    # ----- building

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> Trie:
        """Sequence i gets value i; of identical sequences the first index is kept."""
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        tokens = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        return cls.from_flat(tokens, lengths)

    @classmethod
    def from_flat(cls, tokens: np.ndarray, lengths: np.ndarray) -> Trie:
        """The sequences concatenated in `tokens`, sequence i being the next lengths[i] tokens."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(tokens) != lengths.sum():
            raise TrieError(f"lengths sum to {lengths.sum()} but there are {len(tokens)} tokens")
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= 2**31):
            raise TrieError("token ids must be in [0, 2**31)")
        # int32 where it fits: at 7.4M names every array of the build is tens of millions long.
        tokens = tokens.astype(np.int32, copy=False)
        level = np.int32 if len(tokens) < 2**31 - 1 else np.int64  # node ids are below tokens + 1
        n = len(lengths)
        if n >= 2**31:
            raise TrieError(f"{n} sequences: values are int32")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # Longest first: the sequences still going at depth d are then a prefix of `order`.
        order = np.argsort(-lengths, kind="stable")
        neg_len = -lengths[order]
        span = int(tokens.max()) + 1 if len(tokens) else 1
        node = np.zeros(n, dtype=np.int64)  # per sequence (in `order`): the node reached so far
        # Per level, each of its nodes' number of children (the next level's nodes per parent),
        # and the next level's tokens: child_ptr and child_tok, with no parent array of all nodes.
        counts, toks = [], []
        n_nodes, level_start, level_size = 1, 0, 1  # the root alone is level 0
        for depth in range(int(lengths.max()) if n else 0):
            k = int(np.searchsorted(neg_len, -depth, side="left"))  # sequences longer than depth
            tok = tokens[starts[order[:k]] + depth]
            # New nodes of this level = distinct (parent, token) pairs, numbered in sorted order,
            # so each parent's children are contiguous and sorted by token.
            keys, inverse = np.unique(node[:k] * span + tok, return_inverse=True)
            node[:k] = n_nodes + inverse.reshape(-1)
            counts.append(np.bincount(keys // span - level_start, minlength=level_size).astype(level))
            toks.append((keys % span).astype(np.int32))
            level_start, level_size = n_nodes, len(keys)
            n_nodes += len(keys)
        counts.append(np.zeros(level_size, dtype=level))  # the deepest level: leaves
        child_tok = np.concatenate(toks) if toks else np.zeros(0, np.int32)
        del toks
        # Breadth-first numbering: the children of n follow those of n-1.
        child_ptr = np.zeros(n_nodes + 1, dtype=_node_dtype(n_nodes))
        np.cumsum(np.concatenate(counts), out=child_ptr[1:])
        del counts
        # In this layout child j is node j + 1; stored anyway so readers need not assume it.
        child_node = np.arange(1, n_nodes, dtype=_node_dtype(n_nodes))
        # Each sequence's last node gets the smallest index among the sequences ending there.
        value = np.full(n_nodes, n, dtype=np.int32)  # n < 2**31, checked above
        np.minimum.at(value, node, order.astype(np.int32))
        value[value == n] = -1
        return cls(child_ptr, child_tok, child_node, value)

    # ----- size

    @property
    def num_nodes(self) -> int:
        return len(self.values)

    @property
    def num_values(self) -> int:
        """Distinct sequences stored (fewer than those given when some were identical)."""
        return int(np.count_nonzero(self.values >= 0))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def max_depth(self) -> int:
        """The length of the longest sequence: levels below the root, walked breadth-first."""
        depth, frontier = 0, np.array([ROOT])
        while True:
            frontier = self.child_node[self._child_positions(frontier)[1]]
            if not len(frontier):
                return depth
            depth += 1

    # ----- single-node queries

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, nodes) of the children of `node`, tokens sorted; empty for -1 or a leaf."""
        if node < 0:
            return self.child_tok[:0], self.child_node[:0]
        lo, hi = self.child_ptr[node], self.child_ptr[node + 1]
        return self.child_tok[lo:hi], self.child_node[lo:hi]

    def step(self, node: int, token: int) -> int:
        """The child of `node` along `token`, or -1 (also from -1)."""
        if node < 0:
            return -1
        lo, hi = int(self.child_ptr[node]), int(self.child_ptr[node + 1])
        i = lo + int(np.searchsorted(self.child_tok[lo:hi], token))
        return int(self.child_node[i]) if i < hi and self.child_tok[i] == token else -1

    def value(self, node: int) -> int:
        """The index of the sequence ending at `node`, or -1."""
        return int(self.values[node]) if node >= 0 else -1

    def node_of(self, prefix: Sequence[int]) -> int:
        """The node reached by `prefix` from the root, or -1 when it is not in the trie."""
        node = ROOT
        for token in prefix:
            node = self.step(node, int(token))
            if node < 0:
                break
        return node

    def allowed_next(self, prefix: Sequence[int]) -> np.ndarray:
        """Sorted tokens that may follow `prefix`; empty when it is not in the trie or is complete."""
        return self.children(self.node_of(prefix))[0].copy()

    # ----- batched queries for the decoder (one node per beam)

    def allowed_mask(self, nodes: np.ndarray | torch.Tensor, vocab_size: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """[len(nodes), vocab_size] bool, True where the token may follow that node (all False
        for -1): one scatter over the concatenated children of the given nodes."""
        if self.max_token >= vocab_size:
            raise TrieError(f"the trie holds token {self.max_token} but the LLM's vocabulary has {vocab_size} tokens: "
                            "it was built with another tokenizer; rerun the trie stage for this LLM")
        nd = _np(nodes).reshape(-1)
        if device is None:
            device = nodes.device if isinstance(nodes, torch.Tensor) else "cpu"
        rows, positions = self._child_positions(nd)
        cols = self.child_tok[positions]
        if torch.device(device).type == "cpu":
            # numpy, not torch, on CPU: torch's multi-threaded fill stalls for milliseconds on a
            # busy machine, numpy's single-threaded scatter takes ~0.1 ms for 5 x 50k.
            mask = np.zeros((len(nd), vocab_size), dtype=bool)
            mask[rows, cols] = True
            return torch.from_numpy(mask)
        mask = torch.zeros((len(nd), vocab_size), dtype=torch.bool, device=device)
        mask[torch.from_numpy(rows).to(device), torch.from_numpy(cols.astype(np.int64)).to(device)] = True
        return mask

    def _child_positions(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `nodes`, position in child_tok/child_node) of every child of the given nodes,
        concatenated without a loop: each range's start minus where it begins in the
        concatenation, plus a running index. Nodes of -1 have none."""
        valid = nodes >= 0
        safe = np.where(valid, nodes, 0)
        starts = self.child_ptr[safe]
        counts = np.where(valid, self.child_ptr[safe + 1] - starts, 0)
        offsets = np.cumsum(counts) - counts
        positions = np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))
        return np.repeat(np.arange(len(nodes)), counts), positions

    # ----- files

    def arrays(self) -> dict[str, np.ndarray]:
        return {"child_ptr": self.child_ptr, "child_tok": self.child_tok,
                "child_node": self.child_node, "value": self.values}

    def save(self, path: str | Path) -> None:
        save_npz_atomic(path, {"format": np.array(FORMAT), **self.arrays()})

    @classmethod
    def load(cls, path: str | Path) -> Trie:
        return cls._from_npz(_load_npz(path), path)

    @classmethod
    def _from_npz(cls, data: dict[str, np.ndarray], path: str | Path) -> Trie:
        missing = [k for k in _ARRAYS if k not in data]
        if missing:
            raise TrieError(f"{path}: not a gemel trie (missing arrays: {', '.join(missing)})")
        ptr, tok, node, value = (data[k] for k in _ARRAYS)
        n = len(value)
        if len(ptr) != n + 1 or len(tok) != len(node) or (n and ptr[-1] != len(tok)):
            raise TrieError(f"{path}: inconsistent trie arrays (nodes {n}, child_ptr {len(ptr)}, "
                            f"child_tok {len(tok)}, child_node {len(node)})")
        return cls(ptr, tok, node, value)


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
        data = _load_npz(path)
        need = ("entity_ids_utf8", "entity_ids_offsets", "names_utf8", "names_offsets", "llm", "eos_id")
        missing = [k for k in need if k not in data]
        if missing:
            raise TrieError(f"{path}: not an entity trie (missing: {', '.join(missing)})")
        trie = Trie._from_npz(data, path)
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
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(names)), 0), True)
    if pc.any(blank).as_py():
        i = int(np.flatnonzero(blank.to_numpy(zero_copy_only=False))[0])
        raise TrieError(f"KB row {i} (entity_id {entity_ids[i].as_py()!r}): field 'name' is empty or not text: "
                        f"{names[i].as_py()!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrieError(f"LLM {llm_name}: the tokenizer has no EOS token, so names cannot end")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if len(names) >= PARALLEL_FROM else 1
    flat, lengths = tokenize(names, tokenizer, eos, batch_size, workers)
    trie = Trie.from_flat(flat, lengths)
    del flat
    return EntityTrie(trie, Strings.from_arrow(entity_ids), Strings.from_arrow(names), llm_name, int(eos))


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


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez through gemel.atomic (a normal file's mode, never a half-written trie). Writing
    through a file object keeps np.savez from appending '.npz' to the temporary name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise TrieError(f"{path}: no such file (run the trie stage first)") from None
    except (ValueError, OSError) as e:
        raise TrieError(f"{path}: not a readable .npz trie ({e})") from None
    fmt = str(data.get("format", ""))
    if fmt != FORMAT:
        raise TrieError(f"{path}: format {fmt!r}, expected {FORMAT!r} (rebuild it with the trie stage)")
    return data


def _node_dtype(n_nodes: int) -> type:
    return np.int32 if n_nodes < 2**31 else np.int64


def _np(x: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(x, dtype=np.int64)


def build_kb_trie(kb_path: str | Path, llms: dict[str, Any], llm: str) -> tuple[EntityTrie, dict[str, Any]]:
    """The trie stage: the prepared KB's names for one LLM of the registry, and a report."""
    import time

    from gemel.data.tables import read_arrow
    from gemel.generation.llm import get_spec, load_tokenizer

    # Arrow columns, not a DataFrame: a Python string per name would cost gigabytes at 7.4M names.
    kb = read_arrow(kb_path, "prepare", columns=["entity_id", "name"])
    names, ids = _strings(kb.column("name"), "name"), _strings(kb.column("entity_id"), "entity_id")
    del kb  # the columns' large-string copies are all that is kept
    tokenizer = load_tokenizer(get_spec(llms, llm))
    t0 = time.perf_counter()
    entity_trie = build_entity_trie(names, ids, tokenizer, llm)
    report = {"llm": llm, "names": len(entity_trie.names), "nodes": entity_trie.trie.num_nodes,
              # same name (token sequence) as an earlier entity: maps to the first
              "duplicate_names": entity_trie.duplicates,
              "max_depth": entity_trie.trie.max_depth(),  # tokens of the longest name, EOS included
              "build_seconds": round(time.perf_counter() - t0, 3)}
    return entity_trie, report
