"""The `fuzzy` candidate source: every KB name as idf-weighted character trigrams, and the names
nearest a mention by cosine, for what shares no whole word with its entity's name (misspellings,
inflections: "Germans" and "Germany"). The cosine is the ranker's `char_sim` feature."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from gemel.search.name_index import CandidateError, token_columns, words


def row_sums(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per CSR row, the sum of its `values` (0 for an empty row, which np.add.reduceat gets wrong)."""
    n = len(indptr) - 1
    return np.bincount(np.repeat(np.arange(n), np.diff(indptr)), weights=values, minlength=n)


def trigrams(text: str, folded: bool = True) -> set[str]:
    """The distinct character trigrams of the text's words, joined by single spaces and padded by
    one, so that word starts and ends are grams of their own (" jo", "an ")."""
    padded = " " + " ".join(words(text, folded)) + " "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


class CharIndex:
    """Every KB name as an L2-normalised vector of idf-weighted character trigrams, stored both
    ways: name x gram (a candidate's vector, for `cosine`) and gram x name (the names holding each
    gram, for `search`). idf makes the grams every name shares ("an ", " th") weigh little."""

    def __init__(self, names: Sequence[str], folded: bool = True):
        if len(names) == 0:
            raise CandidateError("the KB has no names: nothing to index")
        self.folded = folded
        # Sorted: a set's order hangs on PYTHONHASHSEED, and so would the floats.
        vocab, col, ptr = token_columns((sorted(trigrams(name, folded)) for name in names), len(names))
        lengths = np.diff(ptr)
        self.vocab = vocab
        df = np.bincount(col, minlength=len(vocab))
        self.idf = np.log(1.0 + len(names) / np.maximum(df, 1)).astype(np.float32)
        # A gram no name holds still counts in a query's norm: a mention half made of unknown
        # grams is less like a name than one made only of known ones.
        self.unknown_idf = float(np.log(1.0 + len(names)))
        data = self.idf[col]
        sq = row_sums(data.astype(np.float64) ** 2, ptr)
        row_norm = np.repeat(np.sqrt(np.maximum(sq, 1e-12)), lengths).astype(np.float32)
        self.by_name = sp.csr_matrix((data / row_norm, col, ptr), shape=(len(names), len(vocab)))
        self.by_gram = self.by_name.T.tocsr()
        self.char_len = np.fromiter((len(n) for n in names), dtype=np.int32, count=len(names))

    def query_matrix(self, texts: Sequence[str]) -> sp.csr_matrix:
        """One L2-normalised row per text."""
        rows, cols, data = [], [], []
        for r, text in enumerate(texts):
            gs = sorted(trigrams(text, self.folded))
            known = [self.vocab[g] for g in gs if g in self.vocab]
            w = self.idf[np.asarray(known, dtype=np.int64)]
            norm_ = math.sqrt(float((w.astype(np.float64) ** 2).sum()) + (len(gs) - len(known)) * self.unknown_idf ** 2)
            rows.extend([r] * len(known))
            cols.extend(known)
            data.extend((w / norm_).tolist() if norm_ > 0 else [])
        return sp.csr_matrix((np.asarray(data, np.float32), (rows, cols)), shape=(len(texts), len(self.vocab)))

    def search(self, texts: Sequence[str], k: int, batch: int = 1024, max_postings: int = 20_000_000,
               max_df: int = 20_000, rescore: int = 30) -> list[np.ndarray]:
        """Per text, up to k name rows by trigram cosine, highest first (ties: shorter names, then
        KB order). Multiplied in batches of at most `batch` texts and `max_postings` matched (gram,
        name) pairs, as NameIndex.search does.

        Grams held by more than `max_df` names (" jo", "an " in a KB of millions) carry little
        weight but most of a product's cost, so they are left out of the product, unless that
        leaves a text no gram; such a text's `rescore` * k best names by the remaining grams are
        then ranked by their exact cosine. Exact whenever no gram of a text is that common (every
        KB of up to max_df names). On a million names (benchmarks/char_index.py) the default
        searches twice as fast as the exact product and finds a misspelled name 0.2 points less often."""
        df = np.diff(self.by_gram.indptr)
        q = self.query_matrix(texts)
        row = np.repeat(np.arange(len(texts)), np.diff(q.indptr))
        common = df[q.indices] > max_df
        drop = common & (np.bincount(row[~common], minlength=len(texts))[row] > 0)
        pruned = np.bincount(row[drop], minlength=len(texts)) > 0
        qs = q.copy()
        qs.data[drop] = 0.0
        qs.eliminate_zeros()
        cost = row_sums(df[qs.indices], qs.indptr).astype(np.int64)
        out: list[np.ndarray] = []
        lo = 0
        while lo < len(texts):
            hi, total = lo + 1, int(cost[lo])
            while hi < len(texts) and hi - lo < batch and total + cost[hi] <= max_postings:
                total += int(cost[hi])
                hi += 1
            scores = (qs[lo:hi] @ self.by_gram).tocsr()
            for r in range(scores.shape[0]):
                cand = scores.indices[scores.indptr[r]:scores.indptr[r + 1]]
                s = scores.data[scores.indptr[r]:scores.indptr[r + 1]]
                want = k * rescore if pruned[lo + r] else k
                if len(cand) > want:
                    keep = s >= np.partition(s, len(s) - want)[len(s) - want]
                    cand, s = cand[keep], s[keep]
                if pruned[lo + r]:
                    s = np.asarray((self.by_name[cand] @ q[lo + r].T).todense(), dtype=np.float32).ravel()
                order = np.lexsort((cand, self.char_len[cand], -np.round(s, 4)))
                out.append(cand[order[:k]].astype(np.int64))
            lo = hi
        return out

    def cosine(self, texts: Sequence[str], rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The trigram cosine of each text with each of its rows' names."""
        q = self.query_matrix(texts)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        if len(flat) == 0:
            return [np.zeros(0, np.float32) for _ in rows]
        pairs = self.by_name[flat].multiply(q[np.repeat(np.arange(len(rows)), lengths)])
        sims = np.asarray(pairs.sum(axis=1), dtype=np.float32).ravel()
        return np.split(sims, np.cumsum(lengths)[:-1])
