"""The `acronym` candidate source: KB names by their initials, for a mention that abbreviates its
entity's name ("USAF", "NYC", "U.S. DoD"). Such a mention shares no word with the name and few
character trigrams, so neither the name index nor the char index finds it. The ranker's `acronym`
feature says whether a candidate's initials are the mention's capitals.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gemel.search.name_index import WORD, fold


def initials(name: str) -> str:
    """The first letters of a name's capitalised words, folded: "United States Air Force" -> "usaf",
    "Five-hundred-meter Aperture Spherical Telescope" -> "fast", "Optical Mechanics, Inc." -> "omi".
    Words that start in lower case ("of", "the", "hundred") are skipped, as acronyms skip them."""
    return fold("".join(w[0] for w in WORD.findall(name) if w[0].isupper()))


def acronym_key(mention: str) -> str | None:
    """The initials a mention abbreviates, folded: its capitals when it reads as an abbreviation, at
    least two of them and at least half its letters ("U.S. DoD" -> "usdd", "NYC" -> "nyc"); else
    None ("Team USA" has 4 capitals in 7 letters and is kept; "Paris" is not)."""
    letters = [c for c in mention if c.isalpha()]
    capitals = [c for c in letters if c.isupper()]
    if len(capitals) < 2 or 2 * len(capitals) < len(letters):
        return None
    return fold("".join(capitals))


class AcronymIndex:
    """The KB's rows grouped by their names' initials (two letters or more). Within a group, rows
    are ordered by how often training mentions name the entity (most first), then by the name's
    length and KB order, so a group larger than what is asked for gives its likeliest names."""

    def __init__(self, names: Sequence[str], seen: np.ndarray):
        keys = [initials(n) for n in names]
        codes, uniques = pd.factorize(pd.Series(keys, dtype=object), sort=False)
        codes = np.asarray(codes, dtype=np.int64)
        short = np.fromiter((len(k) < 2 for k in keys), dtype=bool, count=len(keys))
        codes[short] = -1  # one capital or none: no acronym stands for it
        self.code_of = {str(k): i for i, k in enumerate(uniques) if len(k) >= 2}
        self.codes = codes
        lengths = np.fromiter((len(n) for n in names), dtype=np.int64, count=len(names))
        rows = np.arange(len(names), dtype=np.int64)
        order = np.lexsort((rows, lengths, -np.asarray(seen, dtype=np.int64), codes))
        order = order[codes[order] >= 0]
        self.order = order
        self.starts = np.searchsorted(codes[order], np.arange(len(uniques) + 1))

    def search(self, mentions: Sequence[str], k: int) -> list[np.ndarray]:
        """Per mention, up to k rows whose initials are its acronym key (none when it has none)."""
        out = []
        for m in mentions:
            code = self.code_of.get(acronym_key(m) or "", -1)
            out.append(self.order[self.starts[code]:min(self.starts[code + 1], self.starts[code] + k)]
                       if code >= 0 else np.zeros(0, np.int64))
        return out

    def matches(self, mention: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """1.0 where a row's initials are the mention's acronym key, else 0 (float32, the feature)."""
        code = self.code_of.get(acronym_key(mention) or "", -1)
        if code < 0:
            return np.zeros(len(rows), np.float32)
        return (self.codes[np.asarray(rows, dtype=np.int64)] == code).astype(np.float32)
