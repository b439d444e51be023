"""Candidate entities per mention: what candidate-aware decoding lets the LLM choose among.

Five parts, each small:

- `NameIndex` (gemel.search.name_index): KB names by word, the names sharing most idf-weighted words
  with a mention; reads only the first names of a widely held word's list, so a Wikipedia-sized
  KB (millions of names) indexes in seconds and answers thousands of mentions a second
  (`benchmarks/candidates.py`).
- `CharIndex` (gemel.search.char_index): KB names as idf-weighted character trigram vectors: the
  names closest to a mention by cosine, for what shares no whole word with its entity's name
  (misspellings, inflections: "Germans" and "Germany"). The `fuzzy` source; the cosine is a ranker
  feature too.
- `AliasTable`: the training split's mention -> entity counts (a prior p(entity | mention)).
- `DenseIndex` (gemel.search.dense): KB entities and mentions in context as sentence embeddings: the
  `dense` source (the entities nearest by cosine) and the `dense_sim` feature.
- `Ranker`: a score over a few features of (mention, text, candidate) -- the alias prior, how
  much of the mention and of the name overlap, how much of the name the text contains, the
  entity's frequency in training, the text against the candidate's KB description
  (gemel.search.descriptions) -- linear plus a small hidden layer, fitted on the training split with the alias counts
  left one out, so each dataset learns what its own features are worth (in RichpediaMEL no test
  entity occurs in training; in WikiDiverse many do).

Keys are folded (`fold`: case, accents and compatibility forms) `\\w+` runs, so "Müller",
"MULLER" and "Muller" are one word; `candidates.fold: false` keeps case folding only. The
`alias_prior` baseline (gemel.evaluate.metrics) keeps case folding only whatever the setting, so that its
number stays comparable across versions.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from gemel.config import CandidatesParams
from gemel.data.tables import linked_training
from gemel.paths import Artifacts
from gemel.search import listwise
from gemel.search.acronyms import AcronymIndex
from gemel.search.char_index import CharIndex
from gemel.search.dense import DenseIndex
from gemel.search.descriptions import Descriptions
from gemel.search.name_index import CandidateError, NameIndex, fold, key, words  # noqa: F401 (fold: re-exported)

CANDIDATES = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("cand_ids", pa.list_(pa.string())),
    ("cand_names", pa.list_(pa.string())),
    ("cand_scores", pa.list_(pa.float32())),  # log p(candidate | mention), softmax over the K kept
    ("cand_sources", pa.list_(pa.string())),  # the SOURCES that found it, joined by "+": alias+name+fuzzy+dense
])

SOURCES = ("alias", "name", "fuzzy", "dense", "acronym")

# The switchable groups of context features (candidates.<name>: true), each a CandidatesParams flag.
CONTEXT = ("overlap", "years", "pronouns")

FEATURES = ("alias_prior", "alias_seen", "mention_in_name", "name_in_mention", "name_in_text",
            "exact", "entity_freq", "name_words", "char_sim",
            # the text against the candidate's KB description (0 without one): `Descriptions`
            "desc_overlap", "year_before", "year_within", "year_after", "pronoun_sex",
            # the mention in context against the entity's name and description, embedded (gemel.search.dense)
            "dense_sim",
            # the candidate's initials are the mention's capitals ("NYC": gemel.search.acronyms)
            "acronym")



def norm(mention: str, folded: bool = True) -> str:
    """The alias table's key: the folded mention with its spacing normalised."""
    return " ".join(key(mention, folded).split())


@dataclass
class AliasTable:
    """Training mention (its `norm` key) -> entity id -> count; and each entity's count."""
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    entity: Counter = field(default_factory=Counter)
    folded: bool = True  # the keys' folding (`norm`); the alias_prior baseline uses case folding only

    @classmethod
    def from_mentions(cls, mentions: pd.DataFrame, folded: bool = True) -> AliasTable:
        table = cls(folded=folded)
        linked = linked_training(mentions)
        for m, e in zip(linked["mention"], linked["entity_id"]):
            table.counts[norm(m, folded)][e] += 1
            table.entity[e] += 1
        return table

    def lookup(self, mention: str, leave_out: str | None = None) -> dict[str, int]:
        """Entity -> count for this mention; `leave_out` removes one occurrence of that entity (a
        training mention must not see itself when the ranker is fitted)."""
        c = dict(self.counts.get(norm(mention, self.folded), {}))
        if leave_out is not None and c.get(leave_out, 0) > 0:
            c[leave_out] -= 1
        return {e: n for e, n in c.items() if n > 0}

    def most_frequent(self, mention: str) -> str | None:
        c = self.counts.get(norm(mention, self.folded))
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
    """KB + alias table -> each mention's pool of candidates with features. Five sources: the
    alias table (every entity a training mention with the same key named), the name index (the
    `pool_size` names sharing most words), with `fuzzy` > 0 the char index (its `fuzzy` names
    nearest by trigram cosine), with `dense` > 0 the dense index (its `dense` entities nearest
    to the mention in context) and with `acronyms` > 0 the acronym index (up to `acronyms` names
    whose initials the mention's capitals spell). The alias table's folding is the generator's. `context` names the
    switched-on CONTEXT features (the text against each candidate's description); the others stay 0,
    as dense_sim does unless `dense_sim`. `dense_index` is needed when dense > 0 or dense_sim."""

    def __init__(self, kb: pd.DataFrame, alias: AliasTable, pool_size: int, fuzzy: int = 0,
                 context: Iterable[str] = (), dense: int = 0, dense_sim: bool = False,
                 dense_index: DenseIndex | None = None, acronyms: int = 0):
        self.ids = kb["entity_id"].astype(str).tolist()
        self.names = kb["name"].astype(str).tolist()
        self.row_of = {e: i for i, e in reversed(list(enumerate(self.ids)))}
        self.folded = alias.folded
        self.index = NameIndex(self.names, self.folded)
        self.chars = CharIndex(self.names, self.folded) if fuzzy > 0 else None
        self.alias = alias
        self.acronyms = acronyms
        self.initials = None
        if acronyms > 0:  # groups ordered by how often training names each entity
            seen = np.fromiter((alias.entity.get(e, 0) for e in self.ids), dtype=np.int64, count=len(self.ids))
            self.initials = AcronymIndex(self.names, seen)
        self.pool_size = pool_size
        self.fuzzy = fuzzy
        self.context = frozenset(context)
        unknown = self.context - set(CONTEXT)
        if unknown:
            raise CandidateError(f"unknown context features {sorted(unknown)}; known: {', '.join(CONTEXT)}")
        described = kb["description"].tolist() if "description" in kb else [None] * len(self.names)
        self.descriptions = Descriptions(described, self.folded) if self.context else None
        self._name_words = [None] * len(self.names)
        if (dense > 0 or dense_sim) and dense_index is None:
            raise CandidateError("candidates.dense and candidates.dense_sim need the KB's embeddings and the "
                                 "sentence encoder (a gemel.search.dense.DenseIndex)")
        if dense_index is not None and len(dense_index.vectors) != len(self.ids):
            raise CandidateError(f"the dense index holds {len(dense_index.vectors)} entities, the KB {len(self.ids)}")
        self.dense = dense
        self.dense_sim = dense_sim
        self.dense_index = dense_index if (dense > 0 or dense_sim) else None

    @classmethod
    def build(cls, kb: pd.DataFrame, mentions: pd.DataFrame, p: CandidatesParams,
              dense_index: DenseIndex | None = None) -> Generator:
        """The generator of the candidates stage's settings, its alias table from `mentions`' train split."""
        return cls(kb, AliasTable.from_mentions(mentions, p.fold), p.pool, p.fuzzy, context_of(p), p.dense,
                   p.dense_sim, dense_index, p.acronyms)

    def name_words(self, row: int) -> set[str]:
        ws = self._name_words[row]
        if ws is None:
            ws = self._name_words[row] = set(words(self.names[row], self.folded))
        return ws

    def pools(self, mentions: Sequence[str], texts: Sequence[str],
              leave_out: Sequence[str | None] | None = None, chunk: int = 4096) -> list[Pool]:
        """Each mention's pool, `chunk` mentions at a time (what bounds the char index's products)."""
        out: list[Pool] = []
        for lo in range(0, len(mentions), chunk):
            out.extend(self._pools(mentions[lo:lo + chunk], texts[lo:lo + chunk],
                                   leave_out[lo:lo + chunk] if leave_out is not None else None))
        return out

    def _pools(self, mentions: Sequence[str], texts: Sequence[str],
               leave_out: Sequence[str | None] | None) -> list[Pool]:
        named = self.index.search([self.index.keys(m) for m in mentions], self.pool_size)
        none = [np.zeros(0, np.int64)] * len(mentions)
        near = self.chars.search(mentions, self.fuzzy) if self.chars is not None else none
        embedded = self.dense_index.embed(mentions, texts) if self.dense_index is not None else None
        dense = self.dense_index.search(embedded, self.dense) if embedded is not None and self.dense > 0 else none
        abbreviated = self.initials.search(mentions, self.acronyms) if self.initials is not None else none
        found, counts = [], []
        for i, mention in enumerate(mentions):
            c = self.alias.lookup(mention, leave_out[i] if leave_out is not None else None)
            aliased = [self.row_of[e] for e in sorted(c) if e in self.row_of]
            lists = (aliased, named[i].tolist(), near[i].tolist(), dense[i].tolist(), abbreviated[i].tolist())
            by = dict(zip(SOURCES, map(set, lists)))
            rows = list(dict.fromkeys(r for found_by in lists for r in found_by))
            found.append((np.asarray(rows, dtype=np.int64), ["+".join(s for s in SOURCES if r in by[s]) for r in rows]))
            counts.append(c)
        zeros = [np.zeros(len(r), np.float32) for r, _ in found]
        sims = self.chars.cosine(mentions, [r for r, _ in found]) if self.chars is not None else zeros
        dsims = (self.dense_index.cosine(embedded, [r for r, _ in found]) if embedded is not None and self.dense_sim
                 else zeros)
        out = []
        for i, ((rows, sources), c, sim, dsim) in enumerate(zip(found, counts, sims, dsims)):
            left_out = leave_out[i] if leave_out is not None else None
            out.append(Pool(rows, self.featurize(mentions[i], texts[i], rows, c, left_out, sim, dsim), sources))
        return out

    def featurize(self, mention: str, text: str, rows: Sequence[int], counts: dict[str, int],
                  leave_out: str | None, char_sim: np.ndarray | None = None,
                  dense_sim: np.ndarray | None = None) -> np.ndarray:
        """FEATURES of each row; `char_sim` is the mention's trigram cosine with each row's name
        (0 without a char index), `dense_sim` the embedded mention's cosine with each row's entity
        (0 when switched off)."""
        mw, tw, key_ = set(words(mention, self.folded)), set(words(text, self.folded)), norm(mention, self.folded)
        total = sum(counts.values())
        f = np.zeros((len(rows), len(FEATURES)), dtype=np.float32)
        d = self.descriptions
        ctx = d.context(mention, text) if d is not None else None
        abbreviates = self.initials.matches(mention, rows) if self.initials is not None else None
        for j, r in enumerate(rows):
            e, nw = self.ids[r], self.name_words(r)
            shared = len(mw & nw)
            freq = self.alias.entity.get(e, 0) - (1 if e == leave_out else 0)
            f[j] = (counts.get(e, 0) / total if total else 0.0,
                    1.0 if counts.get(e, 0) else 0.0,
                    shared / max(len(mw), 1),
                    shared / max(len(nw), 1),
                    len(nw & tw) / max(len(nw), 1),
                    1.0 if norm(self.names[r], self.folded) == key_ else 0.0,
                    math.log1p(max(freq, 0)),
                    math.log1p(len(nw)),
                    float(char_sim[j]) if char_sim is not None else 0.0,
                    d.overlap(ctx, r) if "overlap" in self.context else 0.0,
                    *(d.year_shares(ctx, r) if "years" in self.context else (0.0, 0.0, 0.0)),
                    d.pronoun_sex(ctx, r) if "pronouns" in self.context else 0.0,
                    float(dense_sim[j]) if dense_sim is not None else 0.0,
                    float(abbreviates[j]) if abbreviates is not None else 0.0)
        return f


@dataclass
class Hidden:
    """The ranker's hidden layer: tanh(features @ w1 + b1) @ w2 (candidates.ranker_hidden units)."""
    w1: np.ndarray  # [len(FEATURES), units]
    b1: np.ndarray  # [units]
    w2: np.ndarray  # [units]

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.tanh(features @ self.w1 + self.b1) @ self.w2


class Ranker:
    """score = features @ weights (+ a hidden layer's output); fitted by softmax cross-entropy over
    each mention's pool."""

    def __init__(self, weights: np.ndarray, hidden: Hidden | None = None):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.hidden = hidden

    def score(self, features: np.ndarray) -> np.ndarray:
        s = features @ self.weights
        return s + self.hidden.score(features) if self.hidden is not None else s

    @classmethod
    def fit(cls, pools: Sequence[Pool], gold_rows: Sequence[int], l2: float = 1e-3, steps: int = 200,
            hidden: int = 0) -> Ranker:
        """Weights that put each gold first, over the pools that hold their gold (the others teach
        nothing about ranking); with `hidden` units, a hidden layer beside them (listwise.fit_mlp)."""
        gold = [int(np.flatnonzero(p.rows == g)[0]) if (p.rows == g).any() else -1 for p, g in zip(pools, gold_rows)]
        features = [p.features for p in pools]
        if not hidden:
            return cls(listwise.fit(features, gold, len(FEATURES), l2, steps))
        m = listwise.fit_mlp(features, gold, len(FEATURES), hidden, l2, steps)
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        return cls(f32(m["linear"]), Hidden(f32(m["W1"]), f32(m["b1"]), f32(m["w2"])))

    def record(self) -> dict[str, Any]:
        """The report's `weights` and `hidden` (exact: float32 round-trips through JSON), what
        `from_record` rebuilds the ranker of `gemel link` from."""
        hidden = None
        if self.hidden is not None:
            hidden = {"w1": {n: [float(v) for v in row] for n, row in zip(FEATURES, self.hidden.w1)},
                      "b1": [float(v) for v in self.hidden.b1], "w2": [float(v) for v in self.hidden.w2]}
        return {"weights": {n: float(w) for n, w in zip(FEATURES, self.weights)}, "hidden": hidden}

    @classmethod
    def from_record(cls, report: dict[str, Any]) -> Ranker:
        """The ranker of a candidates report (or run.json's `candidates`); CandidateError if it lacks weights."""
        hidden = report.get("hidden")
        if hidden is not None:
            missing = [f for f in FEATURES if f not in hidden.get("w1", {})]
            if missing or "b1" not in hidden or "w2" not in hidden:
                lacks = ", ".join(missing) or "b1/w2"
                raise CandidateError(f"candidates report: the ranker's hidden layer lacks {lacks} "
                                     "(rerun the candidates stage, then train)")
            f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
            hidden = Hidden(f32([hidden["w1"][f] for f in FEATURES]), f32(hidden["b1"]), f32(hidden["w2"]))
        return cls(ranker_weights(report), hidden)


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
        raise CandidateError(f"candidates report: no ranker weight for {', '.join(missing)} (written by an older "
                             "version: rerun the candidates stage, then train)")
    return np.asarray([weights[f] for f in FEATURES], dtype=np.float32)


def gold_ranks(cands: pd.DataFrame, gold: pd.Series) -> np.ndarray:
    """Per mention, the 1-based position of its gold id among its candidates; 0 when absent."""
    return np.asarray([list(c).index(g) + 1 if g in list(c) else 0 for c, g in zip(cands["cand_ids"], gold)],
                      dtype=np.int64)


def _share(hit: np.ndarray) -> float | None:
    return round(float(hit.mean()), 4) if len(hit) else None


def recall_at(cands: pd.DataFrame, gold: pd.Series, ks: Sequence[int]) -> dict[str, float | None]:
    """Share of mentions whose gold id is among their first k candidates."""
    r = gold_ranks(cands, gold)
    return {f"recall@{k}": _share((r >= 1) & (r <= k)) for k in ks}


def recall_by_source(cands: pd.DataFrame, gold: pd.Series, ks: Sequence[int]) -> dict[str, dict[str, float | None]]:
    """Per source, the share of mentions whose gold id is among their first k candidates and was
    found by that source (whatever else found it too), and `only`: the share found by that source
    and no other, anywhere in the candidates (what the source alone adds)."""
    r = gold_ranks(cands, gold)
    tag = np.asarray([list(s)[i - 1] if i else "" for s, i in zip(cands["cand_sources"], r)], dtype=object)
    out: dict[str, dict[str, float | None]] = {}
    for src in SOURCES:
        has = np.asarray([src in t.split("+") for t in tag], dtype=bool)
        out[src] = {**{f"recall@{k}": _share(has & (r >= 1) & (r <= k)) for k in ks},
                    "only": _share(tag == src)}
    return out


def context_of(p: CandidatesParams) -> tuple[str, ...]:
    """The CONTEXT features the settings switch on."""
    return tuple(c for c in CONTEXT if getattr(p, c))


def dense_on(p: CandidatesParams) -> bool:
    """Whether the settings use the sentence encoder (the dense source or dense_sim)."""
    return p.dense > 0 or p.dense_sim


def generate(mentions: pd.DataFrame, kb: pd.DataFrame, p: CandidatesParams,
             dense_index: DenseIndex | None = None) -> tuple[pd.DataFrame, dict]:
    """The candidates table and a report: the fitted weights, and recall per split, overall and
    per source. Every dev and test mention gets candidates; of the train split, the mentions the
    ranker is fitted on (no stage reads the others': on WikiMEL, proposing for all 18k cost about
    80 s). `dense_index` (the KB's embeddings) when `dense_on(p)`."""
    gen = Generator.build(kb, mentions, p, dense_index)
    # Fit on training mentions (each leaves itself out of the alias counts), the first fit_limit.
    train = linked_training(mentions, gen.row_of)
    train = train.head(p.fit_limit) if p.fit_limit else train
    fit_pools = gen.pools(train["mention"].tolist(), train["text"].tolist(), train["entity_id"].tolist())
    ranker = Ranker.fit(fit_pools, [gen.row_of[e] for e in train["entity_id"]], hidden=p.ranker_hidden)
    rows = [{"id": mid, "split": "train", **c} for mid, c in zip(train["id"], top_k(gen, ranker, fit_pools, p.top_k))]
    for split in ("dev", "test"):
        part = mentions[mentions["split"] == split]
        cands = propose(gen, ranker, part["mention"].tolist(), part["text"].tolist(), p.top_k)
        rows.extend({"id": mid, "split": split, **c} for mid, c in zip(part["id"], cands))
    table = pd.DataFrame(rows, columns=CANDIDATES.names)
    report = {"top_k": p.top_k, "pool": p.pool, "fold": p.fold, "fuzzy": p.fuzzy, "acronyms": p.acronyms,
              **{c: getattr(p, c) for c in CONTEXT}, "dense": p.dense, "dense_sim": p.dense_sim,
              "encoder": p.encoder if dense_on(p) else None,
              "precision": dense_index.encoder.precision if dense_index is not None and dense_on(p) else None,
              "fitted_on": int(len(train)), "ranker_hidden": p.ranker_hidden,
              **ranker.record(), "recall": {}, "recall_by_source": {}}
    by_id = table.set_index("id")
    ks = sorted({k for k in (1, 4, 5, 16, 64, p.top_k) if k <= p.top_k})
    for split in ("train", "dev", "test"):
        linked = mentions[(mentions["split"] == split) & ~mentions["is_nil"] & mentions["id"].isin(by_id.index)]
        if len(linked):
            cands = by_id.loc[linked["id"]]
            report["recall"][split] = {"mentions": int(len(linked)), **recall_at(cands, linked["entity_id"], ks)}
            report["recall_by_source"][split] = recall_by_source(cands, linked["entity_id"], ks)
    return table, report


def generate_for(a: Artifacts, p: CandidatesParams,
                 text_encoders: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, dict]:
    """The candidates stage over the prepared tables of `a`. The report holds no timing: train
    reads it (the ranker's weights), and equal inputs must give equal bytes. The KB's embeddings
    are reused from `a.kb_embeddings` when their key matches, else computed and written there;
    with the dense part off that file is written empty (a declared output)."""
    from gemel.data.tables import read_kb, read_mentions
    from gemel.search.dense import load_encoder, write_off

    kb = read_kb(a.kb)
    index = None
    if dense_on(p):
        index = DenseIndex.of(kb, load_encoder(p.encoder, text_encoders, p.precision), a.kb_embeddings)
    else:
        write_off(a.kb_embeddings)
    table, report = generate(read_mentions(a.mentions), kb, p, index)
    return table, {**report, "mentions": int(len(table))}
