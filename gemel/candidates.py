"""Candidate entities per mention: what candidate-aware decoding lets the LLM choose among.

Three parts, each small:

- `NameIndex`: KB names as a sparse name x word matrix. A batch of mentions is one sparse
  product with idf-weighted query vectors, so a Wikipedia-sized KB (millions of names) indexes
  in seconds and answers thousands of mentions at once (`benchmarks/candidates.py`).
- `AliasTable`: the training split's mention -> entity counts (a prior p(entity | mention)).
- `Ranker`: a linear score over a few features of (mention, text, candidate) -- the alias prior,
  how much of the mention and of the name overlap, how much of the name the text contains,
  the entity's frequency in training -- fitted on the training split with the alias counts
  left one out, so each dataset learns what its own features are worth (in RichpediaMEL no test
  entity occurs in training; in WikiDiverse many do).

Words are case-folded `\\w+` runs; the `alias_prior` baseline (gemel.metrics) uses the same ones.
"""
from __future__ import annotations

import functools
import math
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from gemel.config import CandidatesParams
from gemel.errors import GemelError
from gemel.paths import Artifacts

WORD = re.compile(r"\w+")

CANDIDATES = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("cand_ids", pa.list_(pa.string())),
    ("cand_names", pa.list_(pa.string())),
    ("cand_scores", pa.list_(pa.float32())),  # log p(candidate | mention), softmax over the K kept
    ("cand_sources", pa.list_(pa.string())),  # alias, name, or alias+name
])

FEATURES = ("alias_prior", "alias_seen", "mention_in_name", "name_in_mention", "name_in_text",
            "exact", "entity_freq", "name_words")


class CandidateError(GemelError, ValueError):
    """Bad candidate input (an empty KB, a malformed candidates table); names the file or field."""


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


def norm(mention: str) -> str:
    """The alias table's key: the case-folded mention with its spacing normalised."""
    return " ".join(mention.casefold().split())


class NameIndex:
    """Every KB name's distinct words, as a sparse word x name matrix (CSR: the names holding each
    word are one slice), plus idf per word. Built in one pass with compact arrays, so millions of
    names fit in a few hundred MB."""

    def __init__(self, names: Sequence[str]):
        if len(names) == 0:
            raise CandidateError("the KB has no names: nothing to index")
        vocab: dict[str, int] = {}
        add = vocab.setdefault
        cols = array("i")
        lengths = np.zeros(len(names), dtype=np.int32)
        for i, name in enumerate(names):
            ws = set(WORD.findall(name.casefold()))
            lengths[i] = len(ws)
            cols.extend([add(w, len(vocab)) for w in ws])
        ptr = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum(lengths, out=ptr[1:])
        by_name = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), np.frombuffer(cols, dtype=np.int32), ptr),
                                shape=(len(names), len(vocab)))
        self.by_word = by_name.T.tocsr()  # word x name: a query multiplies it, containing_all slices it
        self.by_word.sort_indices()
        self.vocab = vocab
        df = np.diff(self.by_word.indptr)
        self.idf = np.log(1.0 + len(names) / np.maximum(df, 1)).astype(np.float32)
        self.name_words = lengths
        self.char_len = np.fromiter((len(n) for n in names), dtype=np.int32, count=len(names))

    def query_matrix(self, queries: Sequence[Iterable[str]]) -> sp.csr_matrix:
        rows, cols = [], []
        for r, ws in enumerate(queries):
            for c in {self.vocab[w] for w in ws if w in self.vocab}:
                rows.append(r)
                cols.append(c)
        data = self.idf[np.asarray(cols, dtype=np.int64)] if cols else np.zeros(0, np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(queries), len(self.vocab)), dtype=np.float32)

    def search(self, queries: Sequence[Iterable[str]], k: int, batch: int = 2048,
               max_postings: int = 20_000_000) -> list[np.ndarray]:
        """Per query, up to k name rows sharing a word with it: most idf-weighted overlap first,
        then fewer words, then shorter names (the alias rule's "shortest name"), then KB order.
        Queries are multiplied in batches of at most `batch` queries and `max_postings` matched
        (word, name) pairs, so words shared by millions of names cannot blow up one product."""
        queries = [list(q) for q in queries]
        df = np.diff(self.by_word.indptr)
        cost = [int(sum(df[self.vocab[w]] for w in set(q) if w in self.vocab)) for q in queries]
        out: list[np.ndarray] = []
        lo = 0
        while lo < len(queries):
            hi, total = lo + 1, cost[lo]
            while hi < len(queries) and hi - lo < batch and total + cost[hi] <= max_postings:
                total += cost[hi]
                hi += 1
            scores = (self.query_matrix(queries[lo:hi]) @ self.by_word).tocsr()
            lo = hi
            for r in range(scores.shape[0]):
                cand = scores.indices[scores.indptr[r]:scores.indptr[r + 1]]
                s = scores.data[scores.indptr[r]:scores.indptr[r + 1]]
                if len(cand) > k:  # cut before sorting, keeping every name that ties with the k-th score
                    keep = s >= np.partition(s, len(s) - k)[len(s) - k]
                    cand, s = cand[keep], s[keep]
                order = np.lexsort((cand, self.char_len[cand], self.name_words[cand], -np.round(s, 4)))
                out.append(cand[order[:k]].astype(np.int64))
        return out

    def containing_all(self, query: Sequence[str]) -> np.ndarray:
        """Name rows that contain every word of `query`, shortest name first."""
        cols = [self.vocab.get(w) for w in dict.fromkeys(query)]
        if not cols or any(c is None for c in cols):
            return np.zeros(0, dtype=np.int64)
        ptr, idx = self.by_word.indptr, self.by_word.indices
        rows = functools.reduce(np.intersect1d, (idx[ptr[c]:ptr[c + 1]] for c in cols)).astype(np.int64)
        return rows[np.lexsort((rows, self.char_len[rows]))]


@dataclass
class AliasTable:
    """Case-folded training mention -> entity id -> count; and each entity's count."""
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    entity: Counter = field(default_factory=Counter)

    @classmethod
    def from_mentions(cls, mentions: pd.DataFrame) -> AliasTable:
        table = cls()
        linked = mentions[(mentions["split"] == "train") & ~mentions["is_nil"] & mentions["entity_id"].notna()]
        for m, e in zip(linked["mention"], linked["entity_id"]):
            table.counts[norm(m)][e] += 1
            table.entity[e] += 1
        return table

    def lookup(self, mention: str, leave_out: str | None = None) -> dict[str, int]:
        """Entity -> count for this mention; `leave_out` removes one occurrence of that entity (a
        training mention must not see itself when the ranker is fitted)."""
        c = dict(self.counts.get(norm(mention), {}))
        if leave_out is not None and c.get(leave_out, 0) > 0:
            c[leave_out] -= 1
        return {e: n for e, n in c.items() if n > 0}

    def most_frequent(self, mention: str) -> str | None:
        c = self.counts.get(norm(mention))
        if not c:
            return None
        top = max(c.values())
        return min(e for e, n in c.items() if n == top)  # ties: the smallest id, deterministic


@dataclass
class Pool:
    """One mention's candidate rows (KB row indices) and their features [n, len(FEATURES)]."""
    rows: np.ndarray
    features: np.ndarray
    sources: list[str]


class Generator:
    """KB + alias table -> each mention's pool of candidates with features."""

    def __init__(self, kb: pd.DataFrame, alias: AliasTable, pool_size: int):
        self.ids = kb["entity_id"].astype(str).tolist()
        self.names = kb["name"].astype(str).tolist()
        self.row_of = {e: i for i, e in reversed(list(enumerate(self.ids)))}
        self.index = NameIndex(self.names)
        self.alias = alias
        self.pool_size = pool_size
        self._name_words = [None] * len(self.names)

    def name_words(self, row: int) -> set[str]:
        ws = self._name_words[row]
        if ws is None:
            ws = self._name_words[row] = set(words(self.names[row]))
        return ws

    def pools(self, mentions: Sequence[str], texts: Sequence[str],
              leave_out: Sequence[str | None] | None = None) -> list[Pool]:
        hits = self.index.search([words(m) for m in mentions], self.pool_size)
        out = []
        for i, (mention, text, named) in enumerate(zip(mentions, texts, hits)):
            counts = self.alias.lookup(mention, leave_out[i] if leave_out is not None else None)
            aliased = [self.row_of[e] for e in sorted(counts) if e in self.row_of]
            by_name, by_alias = set(named.tolist()), set(aliased)
            rows = list(dict.fromkeys([*aliased, *named.tolist()]))
            sources = ["alias+name" if r in by_name and r in by_alias else "alias" if r in by_alias else "name"
                       for r in rows]
            left_out = leave_out[i] if leave_out is not None else None
            out.append(Pool(np.asarray(rows, dtype=np.int64), self.featurize(mention, text, rows, counts, left_out),
                            sources))
        return out

    def featurize(self, mention: str, text: str, rows: Sequence[int], counts: dict[str, int],
                  leave_out: str | None) -> np.ndarray:
        mw, tw, key = set(words(mention)), set(words(text)), norm(mention)
        total = sum(counts.values())
        f = np.zeros((len(rows), len(FEATURES)), dtype=np.float32)
        for j, r in enumerate(rows):
            e, nw = self.ids[r], self.name_words(r)
            shared = len(mw & nw)
            freq = self.alias.entity.get(e, 0) - (1 if e == leave_out else 0)
            f[j] = (counts.get(e, 0) / total if total else 0.0,
                    1.0 if counts.get(e, 0) else 0.0,
                    shared / max(len(mw), 1),
                    shared / max(len(nw), 1),
                    len(nw & tw) / max(len(nw), 1),
                    1.0 if norm(self.names[r]) == key else 0.0,
                    math.log1p(max(freq, 0)),
                    math.log1p(len(nw)))
        return f


class Ranker:
    """score = features @ weights; fitted by softmax cross-entropy over each mention's pool."""

    def __init__(self, weights: np.ndarray):
        self.weights = np.asarray(weights, dtype=np.float32)

    def score(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights

    @classmethod
    def fit(cls, pools: Sequence[Pool], gold_rows: Sequence[int], l2: float = 1e-3, steps: int = 200) -> Ranker:
        """Weights that put each gold first, over the pools that hold their gold (the others teach
        nothing about ranking). Full-batch L-BFGS: deterministic for the same input."""
        import torch

        usable = [(p, int(np.flatnonzero(p.rows == g)[0])) for p, g in zip(pools, gold_rows)
                  if len(p.rows) > 1 and (p.rows == g).any()]
        w = torch.zeros(len(FEATURES), dtype=torch.float64, requires_grad=True)
        if not usable:
            return cls(w.detach().numpy())
        width = max(len(p.rows) for p, _ in usable)
        x = torch.zeros(len(usable), width, len(FEATURES), dtype=torch.float64)
        valid = torch.zeros(len(usable), width, dtype=torch.bool)
        for i, (p, _) in enumerate(usable):
            x[i, :len(p.rows)] = torch.from_numpy(p.features.astype(np.float64))
            valid[i, :len(p.rows)] = True
        gold = torch.tensor([g for _, g in usable])
        opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = (x @ w).masked_fill(~valid, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, gold) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(w.detach().numpy())


def top_k(gen: Generator, ranker: Ranker, pools: Sequence[Pool], k: int) -> list[dict]:
    """Each pool's k best candidates, with log-softmax scores over those k (the candidate prior)."""
    out = []
    for p in pools:
        s = ranker.score(p.features) if len(p.rows) else np.zeros(0, np.float32)
        order = np.lexsort((p.rows, -s))[:k]  # ties: KB order, deterministic
        kept = s[order].astype(np.float64)
        logp = kept - (np.logaddexp.reduce(kept) if len(kept) else 0.0)
        out.append({"cand_ids": [gen.ids[r] for r in p.rows[order]],
                    "cand_names": [gen.names[r] for r in p.rows[order]],
                    "cand_scores": logp.astype(np.float32).tolist(),
                    "cand_sources": [p.sources[j] for j in order]})
    return out


def propose(gen: Generator, ranker: Ranker, mentions: Sequence[str], texts: Sequence[str], k: int,
            leave_out: Sequence[str | None] | None = None) -> list[dict]:
    """The k best candidates of each (mention, text) pair: the candidates stage's rows for its own
    mentions, and for new inputs (`gemel link`) the same pools, features and ranker."""
    return top_k(gen, ranker, gen.pools(mentions, texts, leave_out), k)


def first(rows: Sequence[dict], k: int) -> list[dict]:
    """Each row cut to its first k candidates, best first (decode.num_candidates of the stage's
    top_k); the scores stay the log-softmax over all that the stage kept."""
    cols = ("cand_ids", "cand_names", "cand_scores", "cand_sources")
    return [{**r, **{c: list(r[c])[:k] for c in cols}} for r in rows]


def ranker_weights(report: dict) -> np.ndarray:
    """The fitted weights of a candidates report.json, in FEATURES order; CandidateError if absent."""
    weights = report.get("weights") or {}
    missing = [f for f in FEATURES if f not in weights]
    if missing:
        raise CandidateError(f"candidates report: no ranker weight for {', '.join(missing)}")
    return np.asarray([weights[f] for f in FEATURES], dtype=np.float32)


def fuse(llm: np.ndarray, prior: np.ndarray, weight: float) -> np.ndarray:
    """Candidate-aware score: the LLM's (length-normalised) log-probability of the name plus
    `weight` times the candidate's log prior. weight 0: the LLM alone chooses among candidates."""
    return np.asarray(llm, dtype=np.float64) + weight * np.asarray(prior, dtype=np.float64)


def choose_weight(llm: Sequence[np.ndarray], priors: Sequence[np.ndarray], cand_names: Sequence[Sequence[str]],
                  gold: Sequence[str], grid: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The grid weight with the best accuracy (on dev); ties go to the smaller weight, which
    leaves the LLM the larger say. Returns it and the accuracy of every weight."""
    acc: dict[str, float] = {}
    for w in grid:
        hits = [len(n) > 0 and n[int(np.argmax(fuse(s, p, w)))] == g
                for s, p, n, g in zip(llm, priors, cand_names, gold)]
        acc[str(w)] = round(float(np.mean(hits)), 4) if hits else 0.0
    best = max(grid, key=lambda w: (acc[str(w)], -w))
    return float(best), acc


def recall_at(cands: pd.DataFrame, gold: pd.Series, ks: Sequence[int]) -> dict[str, float | None]:
    """Share of mentions whose gold id is among their first k candidates."""
    ranks = [list(c).index(g) + 1 if g in list(c) else 0 for c, g in zip(cands["cand_ids"], gold)]
    r = np.asarray(ranks)
    return {f"recall@{k}": (round(float(((r >= 1) & (r <= k)).mean()), 4) if len(r) else None) for k in ks}


def generate(mentions: pd.DataFrame, kb: pd.DataFrame, top: int, pool_size: int, fit_limit: int | None
             ) -> tuple[pd.DataFrame, dict]:
    """The candidates table for every mention and a report: the fitted weights and recall per split."""
    alias = AliasTable.from_mentions(mentions)
    gen = Generator(kb, alias, pool_size)
    # Fit on training mentions (each leaves itself out of the alias counts), the first fit_limit.
    train = mentions[(mentions["split"] == "train") & ~mentions["is_nil"] & mentions["entity_id"].isin(gen.row_of)]
    train = train.head(fit_limit) if fit_limit else train
    fit_pools = gen.pools(train["mention"].tolist(), train["text"].tolist(), train["entity_id"].tolist())
    ranker = Ranker.fit(fit_pools, [gen.row_of[e] for e in train["entity_id"]])
    rows = []
    for split in ("train", "dev", "test"):
        part = mentions[mentions["split"] == split]
        leave = part["entity_id"].where(part["entity_id"].notna(), None).tolist() if split == "train" else None
        cands = propose(gen, ranker, part["mention"].tolist(), part["text"].tolist(), top, leave)
        for mid, c in zip(part["id"], cands):
            rows.append({"id": mid, "split": split, **c})
    table = pd.DataFrame(rows, columns=CANDIDATES.names)
    report = {"top_k": top, "pool": pool_size, "fitted_on": int(len(train)),
              # exact (float32 round-trips through JSON): `gemel link` rebuilds the ranker from them
              "weights": {n: float(w) for n, w in zip(FEATURES, ranker.weights)}, "recall": {}}
    by_id = table.set_index("id")
    for split in ("train", "dev", "test"):
        linked = mentions[(mentions["split"] == split) & ~mentions["is_nil"]]
        if len(linked):
            report["recall"][split] = {"mentions": int(len(linked)),
                                       **recall_at(by_id.loc[linked["id"]], linked["entity_id"],
                                                   sorted({k for k in (1, 4, 5, 16, 64, top) if k <= top}))}
    return table, report


def generate_for(a: Artifacts, p: CandidatesParams) -> tuple[pd.DataFrame, dict]:
    """The candidates stage over the prepared tables of `a`. The report holds no timing: train
    reads it (the ranker's weights), and equal inputs must give equal bytes."""
    from gemel.data.tables import read_kb, read_mentions

    table, report = generate(read_mentions(a.mentions), read_kb(a.kb), p.top_k, p.pool, p.fit_limit)
    return table, {**report, "mentions": int(len(table))}
