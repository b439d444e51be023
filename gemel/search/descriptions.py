"""The mention's text against each candidate's KB description: the ranker's `desc_overlap`
(idf-weighted word overlap), `year_before/within/after` (the text's years against the span the
description names) and `pronoun_sex` (he/she in the text against the sex it states); 0 for a
candidate without a description."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gemel.search.name_index import words

# A year as texts and descriptions write it: four digits, 1000-2099, not part of a longer number.
YEAR = re.compile(r"(?<!\d)(1\d{3}|20\d{2})(?!\d)")
# The span a description with a single year (a birth, a founding) is taken to cover: a long life.
LIFESPAN = 100
# Third-person pronouns by the sex they imply: +1 male, -1 female.
PRONOUNS = {"he": 1, "him": 1, "his": 1, "himself": 1, "she": -1, "her": -1, "hers": -1, "herself": -1}


def years(text: str) -> list[int]:
    return [int(y) for y in YEAR.findall(text)]


def stated_sex(description_words: set[str]) -> int:
    """+1 or -1 where the description states the sex as the word "male" or "female" (how the KBs
    with descriptions state it: "Sex: male."); 0 where it states neither, or both."""
    male, female = "male" in description_words, "female" in description_words
    return 0 if male == female else (1 if male else -1)


@dataclass(frozen=True)
class Context:
    """What a mention's text says beyond the mention itself: its words (idf-weighted, as a unit
    vector over the descriptions' words), the years it names, and its pronouns' balance."""
    weights: dict[str, float]
    years: tuple[int, ...]
    pronoun: float  # (male - female pronouns) / all of them; 0 without any

    @classmethod
    def of(cls, mention: str, text: str, idf: dict[str, float], folded: bool) -> Context:
        # The mention's own words and years say nothing about which entity it is beyond the mention.
        rest = text.replace(mention, " ") if mention else text
        # Sorted: floats summed in a set's order would change in their last bits with PYTHONHASHSEED.
        ws = sorted(set(words(rest, folded)) - set(words(mention, folded)))
        w = {t: idf[t] for t in ws if idf.get(t, 0.0) > 0}
        n = math.sqrt(sum(v * v for v in w.values()))
        signs = [PRONOUNS[t] for t in words(rest, folded) if t in PRONOUNS]
        return cls({t: v / n for t, v in w.items()} if n > 0 else {}, tuple(years(rest)),
                   sum(signs) / len(signs) if signs else 0.0)


class Descriptions:
    """The KB's descriptions as the features compare them with a text: each one's words (idf over
    the descriptions, so the field labels every description repeats weigh nothing), the span of
    the years it names and the sex it states. Rows without a description give 0 features."""

    def __init__(self, descriptions: Sequence[str | None], folded: bool = True):
        self.folded = folded
        # A missing description reads as None or NaN (pandas), whichever the column holds.
        descriptions = [d if isinstance(d, str) and d.strip() else None for d in descriptions]
        self.words: list[frozenset[str]] = []
        df: Counter = Counter()
        for d in descriptions:
            ws = frozenset(words(d, folded)) if d else frozenset()
            self.words.append(ws)
            df.update(ws)
        n = sum(1 for ws in self.words if ws)
        self.idf = {w: math.log((1.0 + n) / (1.0 + c)) for w, c in df.items()}
        self.norm = np.asarray([math.sqrt(sum(self.idf[w] ** 2 for w in sorted(ws))) for ws in self.words], np.float32)
        spans = []
        for d in descriptions:
            ys = years(d) if d else []
            # Two or more years: first to last (birth to death); one: that year and a lifespan after.
            spans.append((min(ys), max(ys) if len(set(ys)) > 1 else min(ys) + LIFESPAN) if ys else (0, 0))
        self.spans = np.asarray(spans, dtype=np.int32).reshape(-1, 2)
        self.sex = np.asarray([stated_sex(ws) for ws in self.words], dtype=np.int8)

    def context(self, mention: str, text: str) -> Context:
        return Context.of(mention, text, self.idf, self.folded)

    def overlap(self, ctx: Context, row: int) -> float:
        """Cosine of the text's and the description's idf-weighted word sets."""
        if not ctx.weights or self.norm[row] == 0:
            return 0.0
        return sum(v * self.idf[w] for w, v in ctx.weights.items() if w in self.words[row]) / float(self.norm[row])

    def year_shares(self, ctx: Context, row: int) -> tuple[float, float, float]:
        """The shares of the text's years before, within and after the description's span."""
        lo, hi = self.spans[row]
        if not ctx.years or lo == 0:
            return 0.0, 0.0, 0.0
        n = len(ctx.years)
        before = sum(y < lo for y in ctx.years) / n
        after = sum(y > hi for y in ctx.years) / n
        return before, 1.0 - before - after, after

    def pronoun_sex(self, ctx: Context, row: int) -> float:
        """+1 where the text's pronouns all fit the stated sex, -1 where all contradict it."""
        return ctx.pronoun * float(self.sex[row])
