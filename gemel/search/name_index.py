"""The KB's names by word: the `name` candidate source, and the text keys every part of candidate
generation shares (`fold`, `key`, `words`).

`NameIndex.search` ranks the names sharing a word with a mention by idf-weighted overlap. A name's
score depends only on WHICH of the mention's words it holds, and every name holding a word gets the
same share of it, so a posting list needs no impact order of its own: each word's names are kept
sorted by the ranking's tie-break (fewer words, shorter name, KB order), and the first few of a list
are the best names of every score they can have. A mention's words are split by how many names hold
them: the names of its rare words are scored one by one (every one of them), and for each set of
its common words only the first k names holding exactly that set are read, set by set in falling
score, stopping once k names score more than the rest could. A word held by a million names costs
k names read, not a million (`benchmarks/candidates.py`), and the result is the one the exact
product over every name gives (`search_product`, kept as the reference), ties included.
"""
from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from gemel.errors import GemelError

WORD = re.compile(r"\w+")
# The English possessive ending ("Premier League's", "Voth’s"): folded away, so that a possessive
# mention keys as its name does (exact match, alias key, no stray word "s").
POSSESSIVE = re.compile(r"(?<=\w)['’]s\b")


class CandidateError(GemelError, ValueError):
    """Bad candidate input (an empty KB, a malformed candidates table); names the file or field."""


def fold(text: str) -> str:
    """Case and accent folding: NFKD splits "ü" into "u" and a combining mark (and "ﬁ" into "fi"),
    the marks go, casefold does the rest ("ß" -> "ss"). ASCII, most names, skips the first two."""
    if text.isascii():
        return text.casefold()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def key(text: str, folded: bool = True) -> str:
    """The text every name and alias key is made of: folded, possessive endings dropped, or
    (folded=False) case-folded only."""
    if not folded:
        return text.casefold()
    text = fold(text)
    return POSSESSIVE.sub("", text) if ("'" in text or "’" in text) else text


def words(text: str, folded: bool = True) -> list[str]:
    return WORD.findall(key(text, folded))


def token_columns(rows: Iterable[Iterable[str]], n: int) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """The n rows' distinct tokens (each row given in a fixed order) as column ids of one vocabulary,
    ids in order of first sight: the vocabulary, the column ids (int32) and the row offsets (int64)
    of a CSR matrix. One streamed pass with compact arrays, so millions of names fit in a few hundred MB."""
    vocab: dict[str, int] = {}
    add = vocab.setdefault
    cols = array("i")
    ptr = np.zeros(n + 1, dtype=np.int64)
    for i, tokens in enumerate(rows):
        cols.extend([add(t, len(vocab)) for t in tokens])
        ptr[i + 1] = len(cols)
    return vocab, np.frombuffer(cols, dtype=np.int32), ptr


def member(x: np.ndarray, sorted_: np.ndarray, bitmap: np.ndarray | None = None) -> np.ndarray:
    """Whether each of x is in the sorted array, or (when given) the same set as a bitmap."""
    if bitmap is not None:
        return (bitmap[x >> 3] >> (x & 7).astype(np.uint8)) & 1 == 1
    if len(sorted_) == 0:
        return np.zeros(len(x), dtype=bool)
    i = np.searchsorted(sorted_, x)
    return sorted_[np.minimum(i, len(sorted_) - 1)] == x


class NameIndex:
    """Every KB name's distinct words as posting lists: per word, the names holding it as their
    place in the tie-break order (`rank`: fewer words, then shorter name, then KB row), ascending.
    Built in one pass with compact arrays, so millions of names fit in a few hundred MB. Queries
    must be words of the same folding: `keys`."""

    def __init__(self, names: Sequence[str], folded: bool = True):
        if len(names) == 0:
            raise CandidateError("the KB has no names: nothing to index")
        self.folded = folded
        n = len(names)
        # Distinct words in a fixed order (a set's hangs on PYTHONHASHSEED).
        vocab, cols, ptr = token_columns((dict.fromkeys(words(name, folded)) for name in names), n)
        self.vocab = vocab
        self.name_words = np.diff(ptr).astype(np.int32)
        self.char_len = np.fromiter((len(s) for s in names), dtype=np.int32, count=n)
        # rank -> KB row, in the order search breaks ties by; and back.
        self.row_of_rank = np.lexsort((np.arange(n), self.char_len, self.name_words)).astype(np.int32)
        # The first rank of a name of at least w words, for each w (what a set of w words skips to).
        self.first_of_words = np.searchsorted(self.name_words[self.row_of_rank], np.arange(self.name_words.max() + 2))
        # Each entry's (word, rank), grouped by word with ranks ascending: a counting sort by word
        # of the entries taken in rank order (scipy's CSR -> CSC conversion, linear in the entries).
        by_rank = sp.csr_matrix((np.ones(len(cols), dtype=np.int8), cols, ptr), shape=(n, len(vocab)))[self.row_of_rank]
        del cols
        by_word = by_rank.tocsc()
        del by_rank
        self.indptr = by_word.indptr.astype(np.int64)
        self.postings = by_word.indices.astype(np.int32, copy=False)
        del by_word
        self.df = np.diff(self.indptr)
        self.idf = np.log(1.0 + n / np.maximum(self.df, 1)).astype(np.float32)
        # The words held by at least 1/32 of the names also as bitmaps (n bits, no more bytes than
        # their list): membership in them is one lookup, not a binary search of a long list.
        self.bitmap_of: dict[int, np.ndarray] = {}
        for w in np.flatnonzero(self.df >= max(n // 32, 64)):
            bits = np.zeros(n, dtype=bool)
            bits[self.names_of(int(w))] = True
            self.bitmap_of[int(w)] = np.packbits(bits, bitorder="little")

    def keys(self, text: str) -> list[str]:
        """The words of `text` as this index keys them."""
        return words(text, self.folded)

    def names_of(self, word: int) -> np.ndarray:
        """The ranks of the names holding the word (by vocabulary id), ascending."""
        return self.postings[self.indptr[word]:self.indptr[word + 1]]

    def search(self, queries: Sequence[Iterable[str]], k: int, common: int = 4096,
               max_common: int = 8) -> list[np.ndarray]:
        """Per query, up to k name rows sharing a word with it: most idf-weighted overlap first,
        then fewer words, then shorter names (the alias rule's "shortest name"), then KB order.

        The overlap is the float32 sum of the shared words' idf in vocabulary order, and the names
        kept are those the exact product keeps (`search_product`): the ones scoring at least the
        k-th best score, ranked by score rounded to 4 decimals, then the tie-break. Words held by
        more than `common` names (at most `max_common` of a query's, the most widely held) are
        never read beyond what that needs: see the module's docstring."""
        return [self._search_one(q, k, common, max_common) for q in queries]

    def _search_one(self, query: Iterable[str], k: int, common: int, max_common: int) -> np.ndarray:
        ids = sorted({self.vocab[w] for w in query if w in self.vocab})
        if not ids or k <= 0:
            return np.zeros(0, dtype=np.int64)
        lists = {w: self.names_of(w) for w in ids}
        often = sorted((w for w in ids if self.df[w] > common), key=lambda w: (-self.df[w], w))[:max_common]
        rare = [w for w in ids if w not in set(often)]
        ranks, scores = [], []
        # Every name holding a rare word, scored exactly: the float32 sum in vocabulary order.
        if rare:
            cand = np.unique(np.concatenate([lists[w] for w in rare]))
            acc = np.zeros(len(cand), dtype=np.float32)
            for w in ids:
                hit = member(cand, lists[w], self.bitmap_of.get(w))
                acc[hit] += self.idf[w]
            ranks.append(cand)
            scores.append(acc)
        # The names holding only common words, by the set of them they hold, best set first.
        if often:
            sets = []
            for size in range(1, len(often) + 1):
                for subset in itertools.combinations(sorted(often), size):
                    s = np.float32(0.0)
                    for w in subset:  # ascending vocabulary id, as `ids`
                        s = np.float32(s + self.idf[w])
                    sets.append((s, subset))
            sets.sort(key=lambda t: -t[0])  # stable: equal scores keep a fixed order
            found_r, found_s = self._common_sets(sets, ids, lists, k, scores)
            ranks.extend(found_r)
            scores.extend(found_s)
        if not ranks:
            return np.zeros(0, dtype=np.int64)
        rank = np.concatenate(ranks)
        s = np.concatenate(scores)
        if len(rank) > k:  # cut before sorting, keeping every name that ties with the k-th score
            keep = s >= np.partition(s, len(s) - k)[len(s) - k]
            rank, s = rank[keep], s[keep]
        order = np.lexsort((rank, -np.round(s, 4)))[:k]
        return self.row_of_rank[rank[order]].astype(np.int64)

    def _common_sets(self, sets: list, ids: list[int], lists: dict, k: int,
                     scores: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """For each set of common words in falling score, the first k names (by rank) that hold
        exactly those of the query's words, until k names already score more than the set."""
        known = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        out_r: list[np.ndarray] = []
        out_s: list[np.ndarray] = []
        found: list[tuple[np.float32, int]] = []
        for s, subset in sets:
            better = int((known > s).sum()) + sum(n for t, n in found if t > s)
            if better >= k:
                continue
            inside = sorted(subset, key=lambda w: (self.df[w], w))
            outside = [w for w in ids if w not in subset]
            lead = lists[inside[0]]
            # Names of fewer words than the set hold it not: the list's head is theirs, skip it.
            start = self.first_of_words[min(len(subset), len(self.first_of_words) - 1)]
            lead = lead[np.searchsorted(lead, start):]
            hits = self._first_exactly(lead, [(lists[w], self.bitmap_of.get(w)) for w in inside[1:]],
                                       [(lists[w], self.bitmap_of.get(w)) for w in outside], k)
            if len(hits):
                out_r.append(hits)
                out_s.append(np.full(len(hits), s, dtype=np.float32))
                found.append((s, len(hits)))
        return out_r, out_s

    @staticmethod
    def _first_exactly(lead: np.ndarray, also: list[tuple], none_of: list[tuple], k: int) -> np.ndarray:
        """The first k of `lead` that are in every (list, bitmap) of `also` and in none of
        `none_of`, read in chunks sized by the share kept so far."""
        got: list[np.ndarray] = []
        n, pos, chunk = 0, 0, max(2 * k, 64)
        while n < k and pos < len(lead):
            x = lead[pos:pos + chunk]
            pos += len(x)
            keep = np.ones(len(x), dtype=bool)
            for lst, bits in also:
                keep &= member(x, lst, bits)
            for lst, bits in none_of:
                keep &= ~member(x, lst, bits)
            x = x[keep]
            got.append(x)
            n += len(x)
            # What the rest needs at the share kept so far, twice over; at least 4 times more when none was.
            chunk = int(min(max(2 * (k - n) * pos / n, 2 * k) if n else 4 * chunk, len(lead)))
        return np.concatenate(got)[:k] if got else np.zeros(0, dtype=np.int32)

    @functools.cached_property
    def by_word(self) -> sp.csr_matrix:
        """The word x name matrix (ones), KB rows as columns: what `search_product` multiplies."""
        rows = self.row_of_rank[self.postings]
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), rows, self.indptr),
                          shape=(len(self.vocab), len(self.row_of_rank)))
        m.sort_indices()
        return m

    def query_matrix(self, queries: Sequence[Iterable[str]]) -> sp.csr_matrix:
        rows, cols = [], []
        for r, ws in enumerate(queries):
            for c in {self.vocab[w] for w in ws if w in self.vocab}:
                rows.append(r)
                cols.append(c)
        data = self.idf[np.asarray(cols, dtype=np.int64)] if cols else np.zeros(0, np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(queries), len(self.vocab)), dtype=np.float32)

    def search_product(self, queries: Sequence[Iterable[str]], k: int, batch: int = 2048,
                       max_postings: int = 20_000_000) -> list[np.ndarray]:
        """`search` by the exact product over every name holding a query word (what search was up
        to this version; the reference tests and benchmarks/candidates.py compare it with):
        queries are multiplied in batches of at most `batch` queries and `max_postings` matched
        (word, name) pairs, so words shared by millions of names cannot blow up one product."""
        queries = [list(q) for q in queries]
        by_word = self.by_word
        cost = [int(sum(self.df[self.vocab[w]] for w in set(q) if w in self.vocab)) for q in queries]
        out: list[np.ndarray] = []
        lo = 0
        while lo < len(queries):
            hi, total = lo + 1, cost[lo]
            while hi < len(queries) and hi - lo < batch and total + cost[hi] <= max_postings:
                total += cost[hi]
                hi += 1
            scores = (self.query_matrix(queries[lo:hi]) @ by_word).tocsr()
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
        ranks = functools.reduce(np.intersect1d, sorted((self.names_of(c) for c in cols), key=len))
        rows = self.row_of_rank[ranks].astype(np.int64)
        return rows[np.lexsort((rows, self.char_len[rows]))]
