"""The acronym candidate source: initials and acronym keys by hand, the index against a brute-force
scan, the source's tags and feature in the generator, and a ranker that learns to link by it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gemel.config import CandidatesParams
from gemel.search.acronyms import AcronymIndex, acronym_key, initials
from gemel.search.candidates import FEATURES, AliasTable, Generator, generate

OFF = {"dense": 0, "dense_sim": False}


@pytest.mark.parametrize("name, expected", [
    ("United States Air Force", "usaf"),
    ("Five-hundred-meter Aperture Spherical Telescope", "fast"),  # lower-case words are skipped
    ("Optical Mechanics, Inc.", "omi"),
    ("United States Department of Defense", "usdd"),
    ("Élysée Palace", "ep"),  # folded
    ("Paris", "p"),
    ("iPhone", ""),
])
def test_initials(name: str, expected: str) -> None:
    assert initials(name) == expected


@pytest.mark.parametrize("mention, expected", [
    ("NYC", "nyc"), ("U.S.", "us"), ("U.S. DoD", "usdd"), ("PhD", "pd"), ("Team USA", "tusa"),
    ("Paris", None), ("A", None), ("Manchester City", None), ("", None),
])
def test_acronym_key(mention: str, expected: str | None) -> None:
    assert acronym_key(mention) == expected


def random_names(rng: np.random.Generator, n: int) -> list[str]:
    words = ["New", "York", "City", "National", "Youth", "Choir", "United", "States", "of", "the", "Navy",
             "Yacht", "Club", "Company"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 5)))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_index_finds_what_a_scan_finds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = random_names(rng, 400)
    seen = rng.integers(0, 3, size=len(names))
    index = AcronymIndex(names, seen)
    for mention in ["NYC", "NY", "N.Y.C.", "USN", "UNYC", "CNY", "ZZ", "Paris", "NYYC"]:
        key = acronym_key(mention)
        group = [i for i, n in enumerate(names) if key is not None and initials(n) == key]
        group.sort(key=lambda i: (-seen[i], len(names[i]), i))
        for k in (1, 3, 50):
            assert index.search([mention], k)[0].tolist() == group[:k], (mention, k)
        rows = rng.integers(0, len(names), size=30)
        expected = [1.0 if key is not None and initials(names[r]) == key else 0.0 for r in rows]
        assert index.matches(mention, rows).tolist() == expected
    assert any(len(index.search([m], 50)[0]) > 1 for m in ["NY", "NYC"])  # groups of several: order tested


def test_generator_tags_the_acronym_source_and_sets_the_feature() -> None:
    kb = pd.DataFrame({"entity_id": ["E1", "E2", "E3", "E4"],
                       "name": ["New York City", "Nyack College", "National Youth Choir", "New York"],
                       "description": None})
    col = FEATURES.index("acronym")
    gen = Generator(kb, AliasTable(), pool_size=10, acronyms=5)
    (nyc,) = gen.pools(["NYC"], ["A walk through NYC."])
    tags = dict(zip([gen.names[r] for r in nyc.rows], nyc.sources, strict=True))
    assert tags == {"New York City": "acronym", "National Youth Choir": "acronym"}  # no word in common
    assert nyc.features[:, col].tolist() == [1.0, 1.0]
    (ny,) = gen.pools(["New York"], [""])
    assert not ny.features[:, col].any() and "acronym" not in "+".join(ny.sources)
    off = Generator(kb, AliasTable(), pool_size=10, acronyms=0)
    (pool,) = off.pools(["NYC"], [""])
    assert len(pool.rows) == 0


def test_the_ranker_learns_to_link_abbreviations() -> None:
    """Mentions that abbreviate their entity's name: with the source off they are out of reach;
    on, the fitted ranker weighs the feature and links them."""
    rng = np.random.default_rng(0)
    firsts = ["Northern", "Southern", "Eastern", "Western", "Royal", "Central", "Pacific", "Atlantic"]
    kinds = ["Railway", "Bank", "Museum", "Orchestra", "University", "Airlines", "Theatre", "Institute"]
    names = [f"{a} {b} {c}" for a in firsts for b in ["Grand", "Lake", "Ocean"] for c in kinds]
    kb = pd.DataFrame({"entity_id": [f"Q{i}" for i in range(len(names))], "name": names, "description": None})
    gold = rng.permutation(len(names))[:90]
    rows = []
    for i, g in enumerate(gold):
        full = i % 3 == 0  # a third named in full, the rest by their initials
        mention = names[g] if full else "".join(w[0] for w in names[g].split()).upper()
        rows.append({"id": f"m{i}", "split": "train" if i < 60 else "dev", "mention": mention,
                     "text": f"News about {mention} today.", "entity_id": f"Q{g}", "entity_name": names[g],
                     "is_nil": False, "image": None})
    mentions = pd.DataFrame(rows)
    abbreviated = mentions[(mentions["split"] == "dev") & (mentions["mention"] != mentions["entity_name"])]
    assert len(abbreviated) >= 15
    table, on = generate(mentions, kb, CandidatesParams(top_k=4, pool=10, fit_limit=None, acronyms=10, **OFF))
    _, off = generate(mentions, kb, CandidatesParams(top_k=4, pool=10, fit_limit=None, acronyms=0, **OFF))
    assert on["acronyms"] == 10 and off["acronyms"] == 0
    assert off["weights"]["acronym"] == 0.0 and on["weights"]["acronym"] > 0
    firsts_on = table.set_index("id").loc[abbreviated["id"], "cand_ids"].map(lambda c: list(c)[0])
    assert (firsts_on.to_numpy() == abbreviated["entity_id"].to_numpy()).mean() == 1.0
    assert on["recall"]["dev"]["recall@1"] > off["recall"]["dev"]["recall@1"] + 0.3
