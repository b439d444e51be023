"""The dense candidate source: KB entities and mentions in context as sentence embeddings.

Each KB entity is embedded once as its name, then its description (when it has one), cut to
ENTITY_CHARS; each mention as "mention: the text around it", cut to CONTEXT_CHARS. The `dense`
nearest entities by cosine join a mention's pool, and the cosine of every pool row is the ranker
feature `dense_sim`. Nearest neighbours are brute-force normalised matrix products in chunks: at
~100k entities a matmul is fast enough that an ANN index (faiss) would only add a dependency.

The KB's embeddings are a cached output of the candidates stage (`kb_embeddings.parquet`), keyed
by the encoder's weights and the exact entity texts, so a changed KB or encoder recomputes them,
and `gemel link` embeds only its new mentions, against the stage's very vectors.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gemel.errors import GemelError
from gemel.hashing import file_sha256

# How entity and mention texts are made; part of the cache key, so changing it recomputes.
TEXT_FORMAT = "gemel-dense/1"
# Characters of "name: description" embedded per entity: MiniLM reads 256 word pieces, and the
# first few hundred characters (the name, the kind of entity) say most; shorter texts embed faster.
ENTITY_CHARS = 400
# Characters of the text around the mention: the sentence it sits in, about, not a whole document.
CONTEXT_CHARS = 300
BATCH = 64
# Score-matrix cells per chunk of queries (float32: 2**22 cells = 16 MiB; the product, its rounding
# and the partition each hold one: 2**24 added 0.26 GiB to WikiMEL's peak, 2**22 about a quarter).
MAX_CELLS = 2**22
# Cosines are ranked and featurised at this many decimals: wider than the float noise of batch
# padding (~1e-6; `gemel link` embeds a mention in another batch than the stage), finer than any
# difference that should matter.
DECIMALS = 4

PRECISIONS = ("fp32", "bf16")
SCHEMA = pa.schema([("entity_id", pa.string()), ("vector", pa.list_(pa.float32()))])
META_KEY = b"gemel.kb_embeddings"


class DenseError(GemelError, ValueError):
    """Missing or stale KB embeddings, or an encoder that cannot be loaded; says what to rerun."""


def entity_text(name: str, description: str | None) -> str:
    """An entity as the encoder reads it: its name, then its description, cut to ENTITY_CHARS."""
    if isinstance(description, str) and description.strip():
        return f"{name}: {' '.join(description.split())}"[:ENTITY_CHARS]
    return name


def mention_text(mention: str, text: str) -> str:
    """A mention in context: "mention: " and the CONTEXT_CHARS of the text around its first
    occurrence (the text's start when it does not occur), cut at whole words."""
    text = " ".join(str(text or "").split())
    if len(text) > CONTEXT_CHARS:
        at = text.find(mention) if mention else -1
        lo = max(0, min(at - CONTEXT_CHARS // 3, len(text) - CONTEXT_CHARS)) if at >= 0 else 0
        cut = text[lo:lo + CONTEXT_CHARS]
        # Drop the partial words at the cut edges.
        if lo > 0 and text[lo - 1] != " ":
            cut = cut.partition(" ")[2]
        if lo + CONTEXT_CHARS < len(text) and text[lo + CONTEXT_CHARS] != " ":
            cut = cut.rpartition(" ")[0]
        text = cut
    return f"{mention}: {text}" if text else mention


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 natively: a GPU, or a CPU with AVX512-BF16 or AMX (elsewhere
    bf16 is emulated, slower than fp32)."""
    import torch

    if device.startswith("cuda"):
        return True
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in probes if f is not None)


def resolve_precision(precision: str, device: str) -> str:
    """`candidates.precision` as run here: auto is bf16 where the device computes it natively
    (2.2x faster on this project's AVX512-BF16 CPU, embeddings within cosine 0.9999 of fp32)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise DenseError(f"candidates.precision must be one of auto, {', '.join(PRECISIONS)}, not '{precision}'")
    return precision


@dataclass
class TextEncoder:
    """A sentence encoder and what identifies it: the registry name, a sha256 of its weights and
    the precision it computes in (part of the KB embeddings' key: bf16 vectors differ in the last bits)."""
    name: str
    model: Any  # sentence_transformers.SentenceTransformer
    weights_sha256: str
    precision: str = "fp32"  # fp32 | bf16 (autocast)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 embeddings; identical texts share one (and are encoded once)."""
        import torch

        from gemel.search.retrieval import encode_unique

        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        device = str(self.model.device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            emb, row = encode_unique(self.model, list(texts), BATCH)
        return emb.numpy()[row]

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())


def load_encoder(name: str, registry: dict[str, dict[str, Any]], precision: str = "fp32") -> TextEncoder:
    """The sentence encoder of `candidates.encoder` (a name in text_encoders, or a folder), computing
    in `precision` (auto | fp32 | bf16, see `resolve_precision`)."""
    from gemel.search.retrieval import load_text_encoder, resolve_text_encoder

    folder = resolve_text_encoder(name, registry)
    weights = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    digest = hashlib.sha256()
    for p in weights:  # the weights decide the vectors; the folder's path does not
        digest.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\0".encode())
    model = load_text_encoder(name, registry)
    return TextEncoder(name, model, digest.hexdigest(), resolve_precision(precision, str(model.device)))


def kb_texts(kb: pd.DataFrame) -> list[str]:
    described = kb["description"].tolist() if "description" in kb else [None] * len(kb)
    return [entity_text(str(n), d) for n, d in zip(kb["name"], described)]


def kb_key(kb: pd.DataFrame, encoder: TextEncoder) -> str:
    """What the KB's embeddings are a function of: the text format, the encoder's weights and
    precision, and every entity's id and text, in KB order."""
    digest = hashlib.sha256(f"{TEXT_FORMAT}\0{encoder.weights_sha256}\0{encoder.precision}\0".encode())
    for e, t in zip(kb["entity_id"].astype(str), kb_texts(kb)):
        digest.update(f"{e}\0{t}\0".encode())
    return digest.hexdigest()


def read_kb_embeddings(path: str | Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """(metadata, vectors [N, d]) of an embeddings file, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(META_KEY)
    if meta is None:
        return None
    column = table.column("vector")
    flat = pc.list_flatten(column.combine_chunks()).to_numpy(zero_copy_only=False).astype(np.float32)
    return json.loads(meta), flat.reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


def write_kb_embeddings(path: str | Path, ids: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]) -> None:
    from gemel.data.tables import write_parquet_atomic

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    values = pa.array(vectors.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(len(ids) + 1, dtype=np.int32) * dim, pa.int32())
    table = pa.Table.from_arrays([pa.array(list(ids), pa.string()), pa.ListArray.from_arrays(offsets, values)],
                                 schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()}))
    write_parquet_atomic(table, path)


def write_off(path: str | Path) -> None:
    """The stage's embeddings output when the dense part is off: no rows (DVC wants the file)."""
    write_kb_embeddings(path, [], np.zeros((0, 0), np.float32), {"key": None})


def kb_embeddings(kb: pd.DataFrame, encoder: TextEncoder, path: str | Path | None) -> tuple[np.ndarray, bool]:
    """The KB's normalised embeddings and whether they were reused: read from `path` when its key
    matches (same KB texts, same encoder), else computed and written there (None: no cache)."""
    key = kb_key(kb, encoder)
    cached = read_kb_embeddings(path) if path is not None else None
    if cached is not None and cached[0].get("key") == key and len(cached[1]) == len(kb):
        return cached[1], True
    vectors = encoder.encode(kb_texts(kb))
    if path is not None:
        write_kb_embeddings(path, kb["entity_id"].astype(str).tolist(), vectors,
                            {"key": key, "encoder": encoder.name, "precision": encoder.precision,
                             "text_format": TEXT_FORMAT})
    return vectors, False


def kb_embeddings_precision(path: str | Path) -> str:
    """The precision the stage's KB embeddings were computed in (`gemel link` embeds its mentions
    the same way, whatever this machine's `auto` would pick); fp32 when unrecorded."""
    cached = read_kb_embeddings(path)
    return str((cached[0] if cached else {}).get("precision") or "fp32")


def cached_kb_embeddings(kb: pd.DataFrame, encoder: TextEncoder, path: str | Path) -> np.ndarray:
    """The stage's KB embeddings for `gemel link`: never recomputed; DenseError when they are
    missing or were made from another KB or encoder."""
    cached = read_kb_embeddings(path)
    if cached is None or cached[0].get("key") != kb_key(kb, encoder) or len(cached[1]) != len(kb):
        raise DenseError(f"{path}: no KB embeddings of this KB and encoder {encoder.name} (the candidates stage "
                         "writes them): rerun the candidates stage")
    return cached[1]


@dataclass
class DenseIndex:
    """The KB's normalised embeddings and the encoder that embeds mentions against them. Mention
    embeddings are kept by text, so the stage's fitting pass and its proposing pass share them.
    `seconds` adds up the time spent (benchmarks/candidates_recall.py reports it)."""
    vectors: np.ndarray  # [N, d] float32, unit rows
    encoder: TextEncoder
    reused: bool = False  # the KB's embeddings came from the cache
    seconds: dict[str, float] = field(default_factory=lambda: {"kb": 0.0, "mentions": 0.0, "search": 0.0})
    embedded: dict[str, np.ndarray] = field(default_factory=dict)  # mention text -> its embedding

    @classmethod
    def of(cls, kb: pd.DataFrame, encoder: TextEncoder, path: str | Path | None) -> DenseIndex:
        t0 = time.perf_counter()
        vectors, reused = kb_embeddings(kb, encoder, path)
        index = cls(np.ascontiguousarray(vectors, dtype=np.float32), encoder, reused)
        index.seconds["kb"] = time.perf_counter() - t0
        return index

    def embed(self, mentions: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Each mention in its context, [n, d]."""
        t0 = time.perf_counter()
        queries = [mention_text(m, t) for m, t in zip(mentions, texts)]
        new = sorted(set(queries) - self.embedded.keys())
        if new:
            self.embedded.update(zip(new, self.encoder.encode(new)))
        out = (np.stack([self.embedded[q] for q in queries]) if queries
               else np.zeros((0, self.vectors.shape[1]), np.float32))
        self.seconds["mentions"] += time.perf_counter() - t0
        return out

    def search(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query, the k KB rows of highest cosine (rounded to DECIMALS; ties: KB order)."""
        t0 = time.perf_counter()
        n = len(self.vectors)
        k = min(k, n)
        out: list[np.ndarray] = []
        chunk = max(1, MAX_CELLS // max(n, 1))
        for lo in range(0, len(queries), chunk):
            s = np.round(queries[lo:lo + chunk] @ self.vectors.T, DECIMALS)
            # The k-th best per row, then every row at least as good (ties at the cut included).
            kth = np.partition(s, n - k, axis=1)[:, n - k] if k else np.full(len(s), np.inf)
            for row, t in zip(s, kth):
                cand = np.flatnonzero(row >= t)
                out.append(cand[np.lexsort((cand, -row[cand]))][:k].astype(np.int64))
        self.seconds["search"] += time.perf_counter() - t0
        return out

    def cosine(self, queries: np.ndarray, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The cosine of each query with each of its rows' entities, rounded to DECIMALS."""
        return [np.round(self.vectors[np.asarray(r, dtype=np.int64)] @ q, DECIMALS).astype(np.float32)
                for q, r in zip(queries, rows)]
