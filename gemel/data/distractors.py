"""Distractor entities: a KB grown to Wikipedia size (prepare.distractors) to measure how every
stage scales with the KB, on the dataset's own mentions.

A distractor's name is drawn word by word from the KB's own names of two words or more, keeping
where a word stands (first, middle, last) and how often it is used there, with a length drawn
from those names' lengths: "Anna Schmidt", "River of Leeds". Frequent words stay frequent, so the
name index meets the skew a real KB has (a common first name held by a million names). Names are
distinct from each other and from every KB name, ignoring case, so a gold name never gains a
double; a distractor has no description. Seeded: the same KB, N and seed give the same table.

Names are drawn and told apart as tuples of word ids packed into two integers, and joined into
strings by Arrow only once kept: millions of Python strings would cost a minute and gigabytes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gemel.data.raw import DataError

PREFIX = "distractor:"  # entity ids: distractor:0 ... distractor:N-1
MAX_WORDS = 6           # longer KB names count as this long: their middles add nothing but length
_HALF = 3               # words per packed integer: two integers hold MAX_WORDS


@dataclass(frozen=True)
class Position:
    """The words seen at one position (surface word ids), and how often."""
    ids: np.ndarray
    p: np.ndarray

    @classmethod
    def of(cls, counts: Counter[int]) -> Position:
        ids = np.array(sorted(counts), dtype=np.int64)  # sorted: no hash order in the draws
        freq = np.array([counts[i] for i in ids], dtype=np.float64)
        return cls(ids, freq / freq.sum() if len(freq) else freq)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.ids[rng.choice(len(self.ids), size=n, p=self.p)]


@dataclass(frozen=True)
class Words:
    """The KB's words: surface forms, each one's case-folded id (from 1; 0 is no word), the
    lengths of its names of two words or more and the words at each position."""
    surface: pa.Array
    folded: np.ndarray
    lengths: np.ndarray
    shares: np.ndarray
    first: Position
    middle: Position
    last: Position
    taken: tuple[np.ndarray, np.ndarray]  # the packed keys of the KB's own names
    bits: int

    @classmethod
    def of(cls, names: pd.Series) -> Words:
        surface: dict[str, int] = {}
        fold: dict[str, int] = {}
        folded: list[int] = []

        def sid(w: str) -> int:
            if w not in surface:
                surface[w] = len(surface)
                folded.append(fold.setdefault(w.casefold(), len(fold) + 1))
            return surface[w]

        split = [[sid(w) for w in n.split()] for n in names.astype(str)]
        multi = [s for s in split if len(s) >= 2]
        if not multi:
            raise DataError("prepare.distractors: the KB has no name of two words or more to draw words from")
        bits = max(len(fold).bit_length(), 1)
        if bits * _HALF > 63:
            raise DataError(f"prepare.distractors: the KB's names hold {len(fold)} distinct words, more than "
                            f"2**21 (a name's word ids no longer pack into two integers)")
        lengths = Counter(min(len(s), MAX_WORDS) for s in multi)
        ls = np.array(sorted(lengths), dtype=np.int64)
        shares = np.array([lengths[k] for k in ls], dtype=np.float64)
        fold_of = np.array(folded, dtype=np.int64)
        short = [s for s in multi if len(s) <= MAX_WORDS]  # only these can equal a distractor's name
        cols = np.full((len(short), MAX_WORDS), -1, dtype=np.int64)
        for i, s in enumerate(short):
            cols[i, :len(s)] = s
        return cls(pa.array(list(surface), pa.string()), fold_of, ls, shares / shares.sum(),
                   Position.of(Counter(s[0] for s in multi)),
                   Position.of(Counter(w for s in multi for w in s[1:-1])),
                   Position.of(Counter(s[-1] for s in multi)),
                   pack(cols, fold_of, bits), bits)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n, MAX_WORDS] surface word ids of n names (repeats possible), -1 past a name's end."""
        size = rng.choice(self.lengths, size=n, p=self.shares)
        if not len(self.middle.ids):
            size[:] = 2  # the KB's names are all of two words: there are no middle words to draw
        cols = np.full((n, MAX_WORDS), -1, dtype=np.int64)
        for k in np.unique(size):
            at = np.flatnonzero(size == k)
            cols[at, 0] = self.first.draw(rng, len(at))
            for j in range(1, int(k) - 1):
                cols[at, j] = self.middle.draw(rng, len(at))
            cols[at, int(k) - 1] = self.last.draw(rng, len(at))
        return cols

    def join(self, cols: np.ndarray) -> pa.Array:
        """Surface word ids -> the names, words joined by single spaces."""
        parts = [self.surface.take(pa.array(cols[:, j], mask=cols[:, j] < 0)) for j in range(MAX_WORDS)]
        return pc.binary_join_element_wise(*parts, " ", null_handling="skip")


def pack(cols: np.ndarray, fold_of: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Each name's case-folded word ids as two integers (words 1-3, words 4-6): equal keys are
    the same name, ignoring case."""
    f = np.where(cols >= 0, fold_of[np.maximum(cols, 0)], 0)
    keys = []
    for half in (f[:, :_HALF], f[:, _HALF:]):
        key = np.zeros(len(f), dtype=np.int64)
        for j in range(_HALF):
            key = (key << bits) | half[:, j]
        keys.append(key)
    return keys[0], keys[1]


def first_new(taken: tuple[np.ndarray, np.ndarray], drawn: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Positions in `drawn` of keys neither taken nor drawn before, in draw order."""
    hi = np.concatenate([taken[0], drawn[0]])
    lo = np.concatenate([taken[1], drawn[1]])
    order = np.lexsort((lo, hi))  # stable: of equal keys the earliest comes first
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (hi[order][1:] != hi[order][:-1]) | (lo[order][1:] != lo[order][:-1])
    first = np.zeros(len(order), dtype=bool)
    first[order[starts]] = True
    return np.flatnonzero(first[len(taken[0]):])


def distractors(kb: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n distractor entities for `kb` (columns of the KB table), ids distractor:0..n-1."""
    if n < 0:
        raise DataError(f"prepare.distractors: expected an integer >= 0; found {n}")
    clash = kb["entity_id"].astype(str).str.startswith(PREFIX)
    if clash.any():
        raise DataError(f"prepare.distractors: KB entity {kb.loc[clash, 'entity_id'].iloc[0]!r} already uses "
                        f"the distractor id prefix {PREFIX!r}")
    rng = np.random.default_rng(seed)
    words = Words.of(kb["name"])
    taken = words.taken
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(20):
        if have >= n:
            break
        # Drawn with a margin for the repeats that get dropped; the first new ones are kept.
        cols = words.draw(rng, int((n - have) * 1.3) + 64)
        keys = pack(cols, words.folded, words.bits)
        new = first_new(taken, keys)[:n - have]
        taken = (np.concatenate([taken[0], keys[0][new]]), np.concatenate([taken[1], keys[1][new]]))
        kept.append(cols[new])
        have += len(new)
    if have < n:
        raise DataError(f"prepare.distractors: only {have} distinct names can be drawn from this KB's words, "
                        f"{n} asked for (its names hold too few distinct words)")
    names = words.join(np.concatenate(kept)) if kept else pa.array([], pa.string())
    ids = pc.binary_join_element_wise(PREFIX, pa.array(np.arange(n)).cast(pa.string()), "")
    return pa.table({"entity_id": ids, "name": names, "description": pa.nulls(n, pa.string())}).to_pandas()


def grow(kb: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The KB, then its n distractors (the KB's own rows keep their positions)."""
    if n == 0:
        return kb
    return pd.concat([kb, distractors(kb, n, seed)], ignore_index=True)
