"""Candidate generation against brute-force references on a fixture KB, the alias table's
leave-one-out, the ranker's fit, the fusion formula and the weight choice, and the stage."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from gemel.config import CandidatesParams
from gemel.search.candidates import (
    FEATURES,
    AliasTable,
    CandidateError,
    Generator,
    NameIndex,
    Pool,
    Ranker,
    generate,
    propose,
    recall_at,
    words,
)

# The lexical sources and features only: tests/test_dense.py tests the dense part, with the encoder.
OFF = {"dense": 0, "dense_sim": False}

VOCAB = ["john", "smith", "paris", "hilton", "river", "jordan", "michael", "apple", "inc", "pie", "queen", "mary",
         "victoria", "lake", "st", "louis", "new", "york", "city", "times"]


def fixture_kb(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        names.append(" ".join(w.capitalize() for w in rng.choice(VOCAB, size=k, replace=True)))
    return pd.DataFrame({"entity_id": [f"Q{i}" for i in range(n)], "name": names, "description": None})


def brute_search(names: list[str], query: list[str], k: int) -> list[int]:
    """The index's ranking, by a plain scan: idf-weighted shared words, then fewer words, shorter
    names, KB order."""
    sets = [set(words(n)) for n in names]
    df = Counter(w for s in sets for w in s)
    idf = {w: math.log(1.0 + len(names) / c) for w, c in df.items()}
    q = set(query)
    scored = [(round(sum(np.float32(idf[w]) for w in q & s), 4), len(s), len(n), i)
              for i, (n, s) in enumerate(zip(names, sets, strict=True)) if q & s]
    scored.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
    return [t[3] for t in scored[:k]]


def test_name_index_matches_a_brute_force_scan() -> None:
    kb = fixture_kb()
    names = kb["name"].tolist()
    index = NameIndex(names)
    rng = np.random.default_rng(1)
    queries = [list(rng.choice(VOCAB, size=int(rng.integers(1, 3)), replace=False)) for _ in range(60)]
    queries.append(["nowhere"])  # no shared word: no candidate
    for k in (1, 5, 16):
        got = index.search(queries, k)
        product = index.search_product(queries, k, batch=7)  # several batches
        for q, g, p in zip(queries, got, product, strict=True):
            assert g.tolist() == p.tolist() == brute_search(names, q, k), q
    for q in queries:
        want = sorted((i for i, n in enumerate(names) if set(q) <= set(words(n))), key=lambda i: (len(names[i]), i))
        assert index.containing_all(q).tolist() == want


@pytest.mark.parametrize("seed", range(6))
def test_name_search_reads_few_names_of_common_words_and_finds_what_the_exact_product_finds(seed: int) -> None:
    """Zipfian names (a few words in most names, as "john" in a Wikipedia-sized KB), duplicate
    names and names of equal length (ties at every level of the ranking), long queries: the
    search's common-word path (forced by small `common`, with `max_common` cutting the sets of
    them) returns the names, in the order, of the exact product over every name and of a scan."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(int(rng.integers(3, 40)))]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** rng.uniform(0.5, 2.0)
    names = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 6)), p=p / p.sum()))
             for _ in range(int(rng.integers(1, 1500)))]
    names += names[: len(names) // 5]  # duplicates: equal in score, words and length
    index = NameIndex(names)
    queries = [list(rng.choice(vocab + ["nowhere"], size=int(rng.integers(1, 8)))) for _ in range(80)]
    for k in (1, 4, 16, 100):
        product = index.search_product(queries, k)
        scanned = [brute_search(names, q, k) for q in queries]
        for common, max_common in ((0, 8), (0, 2), (10, 8), (50, 1), (4096, 8)):
            got = index.search(queries, k, common=common, max_common=max_common)
            for q, g, pr, s in zip(queries, got, product, scanned, strict=True):
                assert g.tolist() == pr.tolist() == s, (q, k, common, max_common)


def test_recall_matches_a_brute_force_count() -> None:
    kb = fixture_kb()
    rng = np.random.default_rng(2)
    gold = rng.integers(0, len(kb), size=80)
    mentions = fixture_mentions(kb, gold, ["train"] * 40 + ["test"] * 40, [kb["name"][g].split()[-1] for g in gold],
                                "About {} here.")
    table, report = generate(mentions, kb, CandidatesParams(top_k=5, pool=50, fit_limit=None, **OFF))
    assert len(table) == 80 and all(len(c) <= 5 for c in table["cand_ids"])
    test = table[table["split"] == "test"].reset_index(drop=True)
    gold_test = mentions.loc[mentions["split"] == "test", "entity_id"].tolist()
    for k in (1, 5):
        by_hand = np.mean([g in list(c)[:k] for c, g in zip(test["cand_ids"], gold_test, strict=True)])
        assert report["recall"]["test"][f"recall@{k}"] == pytest.approx(round(float(by_hand), 4))
    # every candidate is a KB entity, named as the KB names it, scored as a log-distribution
    names = dict(zip(kb["entity_id"], kb["name"], strict=True))
    for ids, ns, scores in zip(table["cand_ids"], table["cand_names"], table["cand_scores"], strict=True):
        assert [names[i] for i in ids] == list(ns)
        assert np.exp(np.asarray(scores, dtype=np.float64)).sum() == pytest.approx(1.0, abs=1e-4)
        assert list(scores) == sorted(scores, reverse=True)


def test_train_candidates_are_the_fitted_mentions_as_propose_gives_them() -> None:
    """Of the train split only the fit_limit mentions the ranker is fitted on get candidates
    (from the pools the fit used); they equal a fresh `propose` with each leaving itself out, and
    dev and test mentions all get theirs."""
    kb = fixture_kb()
    rng = np.random.default_rng(3)
    gold = rng.integers(0, len(kb), size=60)
    splits = ["train"] * 40 + ["dev"] * 10 + ["test"] * 10
    mentions = fixture_mentions(kb, gold, splits, [kb["name"][g].split()[-1] for g in gold], "About {} here.")
    p = CandidatesParams(top_k=5, pool=50, fit_limit=15, **OFF)
    table, report = generate(mentions, kb, p)
    train = mentions[mentions["split"] == "train"].head(15)
    assert table.loc[table["split"] == "train", "id"].tolist() == train["id"].tolist()
    assert (table["split"] != "train").sum() == 20 and report["fitted_on"] == 15
    assert report["recall"]["train"]["mentions"] == 15
    gen = Generator.build(kb, mentions, p)
    ranker = Ranker.from_record(report)
    fresh = propose(gen, ranker, train["mention"].tolist(), train["text"].tolist(), 5, train["entity_id"].tolist())
    got = table[table["split"] == "train"].to_dict("records")
    for g, f in zip(got, fresh, strict=True):
        assert list(g["cand_ids"]) == f["cand_ids"]
        np.testing.assert_allclose(g["cand_scores"], f["cand_scores"], atol=1e-6)


def xor_pools(n: int) -> tuple[list[Pool], list[int]]:
    """Pools of three entities with features a, b in {0, 1} (the rest 0); the gold is the one where
    exactly one holds: (1,1), (0,0), (1,0) -> (1,0); (1,1), (0,0), (0,1) -> (0,1). No weighted sum
    puts both golds first (the first needs w_b < 0, the second w_a < 0, and then (0,0) wins)."""
    pools, gold = [], []
    for i in range(n):
        odd = (1, 0) if i % 2 else (0, 1)
        f = np.zeros((3, len(FEATURES)), dtype=np.float32)
        f[:, :2] = [(1, 1), (0, 0), odd]
        pools.append(Pool(np.array([3 * i, 3 * i + 1, 3 * i + 2]), f, ["name"] * 3))
        gold.append(3 * i + 2)
    return pools, gold


def test_the_hidden_layer_learns_what_no_weighted_sum_can_and_round_trips_exactly() -> None:
    pools, gold = xor_pools(40)

    def right(r: Ranker) -> float:
        return float(np.mean([int(np.argmax(r.score(p.features))) == 2 for p in pools]))

    assert right(Ranker.fit(pools, gold)) <= 0.5
    mlp = Ranker.fit(pools, gold, hidden=4)
    assert right(mlp) == 1.0 and mlp.hidden is not None and mlp.hidden.w1.shape == (len(FEATURES), 4)
    again = Ranker.from_record(json.loads(json.dumps(mlp.record())))  # what gemel link rebuilds from
    for p in pools:
        np.testing.assert_array_equal(again.score(p.features), mlp.score(p.features))
    assert Ranker.fit(pools, gold, hidden=4).record() == mlp.record()  # seeded: equal input, equal weights
    assert mlp.record()["hidden"]["w2"] and Ranker.fit(pools, gold).record()["hidden"] is None
    broken = mlp.record()
    del broken["hidden"]["w1"]["exact"]
    with pytest.raises(CandidateError, match="hidden layer lacks exact"):
        Ranker.from_record(broken)


def test_alias_table_leaves_a_training_mention_out() -> None:
    m = pd.DataFrame({"id": ["a", "b", "c", "d"], "split": ["train", "train", "train", "test"],
                      "mention": ["Jordan", "jordan ", "Jordan", "Jordan"], "entity_id": ["E1", "E1", "E2", "E2"],
                      "is_nil": False})
    alias = AliasTable.from_mentions(m)
    assert alias.lookup("JORDAN") == {"E1": 2, "E2": 1}  # case and spacing folded; test mentions not counted
    assert alias.lookup("Jordan", leave_out="E2") == {"E1": 2}
    assert alias.most_frequent("jordan") == "E1"
    assert alias.most_frequent("Paris") is None


def test_ranker_learns_the_informative_feature_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    pools, gold = [], []
    j = FEATURES.index("name_in_text")
    for _ in range(50):
        f = rng.random((6, len(FEATURES))).astype(np.float32)
        g = int(rng.integers(0, 6))
        f[:, j] = 0.0
        f[g, j] = 1.0  # only the gold has the name in the text
        pools.append(Pool(np.arange(6) + 100, f, ["name"] * 6))
        gold.append(100 + g)
    r1, r2 = Ranker.fit(pools, gold), Ranker.fit(pools, gold)
    assert np.array_equal(r1.weights, r2.weights)
    assert int(np.argmax(r1.weights)) == j
    assert all(int(np.argmax(r1.score(p.features))) == g - 100 for p, g in zip(pools, gold, strict=True))


def test_empty_kb_is_a_clear_error() -> None:
    with pytest.raises(CandidateError, match="no names"):
        NameIndex([])


def test_candidates_stage_writes_table_and_recall(tmp_path, monkeypatch) -> None:
    from stages import candidates as stage

    kb = fixture_kb(50)
    from gemel.data.tables import KB, MENTIONS, write_parquet_atomic

    mentions = pd.DataFrame({"id": ["a", "b", "c"], "dataset": "fx", "split": ["train", "dev", "test"],
                             "text": ["x " + n for n in kb["name"][:3]], "mention": [n.split()[0] for n in kb["name"][:3]],
                             "start": None, "end": None, "image": None, "entity_id": kb["entity_id"][:3].tolist(),
                             "entity_name": kb["name"][:3].tolist(), "is_nil": False})
    write_parquet_atomic(mentions, tmp_path / "prepared" / "mentions.parquet", MENTIONS)
    write_parquet_atomic(kb, tmp_path / "prepared" / "kb.parquet", KB)
    assert stage.main(["--set", f"prepare.out={tmp_path / 'prepared'}", "--set", f"candidates.out={tmp_path / 'c'}",
                       "--set", "candidates.top_k=4"]) == 0
    table = pd.read_parquet(tmp_path / "c" / "candidates.parquet")
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert table["id"].tolist() == ["a", "b", "c"] and report["top_k"] == 4
    assert set(report["recall"]) == {"train", "dev", "test"}
    assert recall_at(table.set_index("id").loc[["c"]], pd.Series(["Q2"]), [4])["recall@4"] == report["recall"]["test"]["recall@4"]


def loo_mentions() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A KB and training mentions where leaving a mention out of the alias counts changes its
    features: "Jordan" is E1 twice and E2 once, "Paris Hilton" occurs once."""
    kb = pd.DataFrame({"entity_id": ["E1", "E2", "E3", "E4"],
                       "name": ["Michael Jordan", "Jordan River", "Paris Hilton", "Paris"], "description": None})
    train = [("Jordan", "E1"), ("jordan", "E1"), ("Jordan", "E2"), ("Paris Hilton", "E3"), ("Paris", "E4")]
    mentions = pd.DataFrame({"id": [f"t{i}" for i in range(len(train))] + ["x"],
                             "split": ["train"] * len(train) + ["test"],
                             "text": [f"About {m}." for m, _ in train] + ["About Jordan."],
                             "mention": [m for m, _ in train] + ["Jordan"],
                             "entity_id": [e for _, e in train] + ["E2"], "is_nil": False})
    return kb, mentions


def test_ranker_is_fitted_on_alias_counts_that_leave_each_mention_out(monkeypatch) -> None:
    """Every feature the ranker is fitted on that reads the alias table (the prior, whether the
    alias was seen, the entity's frequency) counts the other training mentions only, checked
    against a brute-force count over the training rows minus the mention itself."""
    from gemel.search import candidates

    kb, mentions = loo_mentions()
    seen: list[tuple[list[Pool], list[int]]] = []
    fit = candidates.Ranker.fit
    monkeypatch.setattr(candidates.Ranker, "fit", classmethod(
        lambda cls, pools, gold, *a, **kw: seen.append((list(pools), list(gold))) or fit(pools, gold, *a, **kw)))
    generate(mentions, kb, CandidatesParams(top_k=4, pool=10, fit_limit=None, **OFF))
    ((pools, gold),) = seen
    train = mentions[mentions["split"] == "train"].reset_index(drop=True)
    assert len(pools) == len(train)
    ids = kb["entity_id"].tolist()
    col = {f: FEATURES.index(f) for f in ("alias_prior", "alias_seen", "entity_freq")}
    for i, pool in enumerate(pools):
        assert ids[gold[i]] == train.at[i, "entity_id"]
        others = train.drop(index=i)
        same = others[others["mention"].str.casefold() == train.at[i, "mention"].casefold()]
        for row, f in zip(pool.rows, pool.features, strict=True):
            e = ids[row]
            n = int((same["entity_id"] == e).sum())
            assert f[col["alias_prior"]] == pytest.approx(n / len(same) if len(same) else 0.0), (i, e)
            assert f[col["alias_seen"]] == (1.0 if n else 0.0), (i, e)
            assert f[col["entity_freq"]] == pytest.approx(math.log1p(int((others["entity_id"] == e).sum()))), (i, e)
    # Not vacuous: without leaving out, the singleton "Paris Hilton" would see its own alias.
    hilton = pools[3]
    assert hilton.features[list(hilton.rows).index(2), col["alias_seen"]] == 0.0


def test_name_in_text_reads_the_words_of_the_text() -> None:
    """name_in_text is the share of a name's distinct words that occur in the text (case-folded
    words), not in the mention: every candidate here shares only "jordan" with the mention."""
    from gemel.search.candidates import Generator

    kb = pd.DataFrame({"entity_id": ["E1", "E2", "E3", "E4"],
                       "name": ["Michael Jordan", "Jordan River", "Air Jordan", "Jordan Jordan Lake"], "description": None})
    gen = Generator(kb, AliasTable(), pool_size=10)
    text = "MICHAEL went down to the river; jordan was cold."
    (pool,) = gen.pools(["Jordan"], [text])
    got = dict(zip([gen.names[r] for r in pool.rows], pool.features[:, FEATURES.index("name_in_text")].tolist(),
                   strict=True))
    assert got == pytest.approx({"Michael Jordan": 1.0, "Jordan River": 1.0, "Air Jordan": 0.5,
                                 "Jordan Jordan Lake": 0.5})


def test_top_k_keeps_the_best_scored_candidates() -> None:
    """The cut keeps the k highest ranker scores (ties: KB order, whatever the pool's order), and
    their scores are the log-softmax over those k alone."""
    from gemel.search.candidates import Generator, top_k

    kb = pd.DataFrame({"entity_id": [f"Q{i}" for i in range(6)], "name": [f"name {i}" for i in range(6)],
                       "description": None})
    gen = Generator(kb, AliasTable(), pool_size=10)
    rows = np.array([5, 4, 0, 3, 1, 2])  # pool order: neither KB nor score order
    score_of = {5: 0.1, 4: 0.9, 0: 0.5, 3: 0.9, 1: 0.2, 2: 0.7}
    features = np.zeros((6, len(FEATURES)), np.float32)
    features[:, 0] = [score_of[r] for r in rows]
    weights = np.zeros(len(FEATURES), np.float32)
    weights[0] = 1.0
    pool = Pool(rows, features, [f"src{r}" for r in rows])
    (got,) = top_k(gen, Ranker(weights), [pool], 3)
    assert got["cand_ids"] == ["Q3", "Q4", "Q2"]  # 0.9 and 0.9 (KB order), then 0.7
    assert got["cand_names"] == ["name 3", "name 4", "name 2"] and got["cand_sources"] == ["src3", "src4", "src2"]
    kept = np.array([0.9, 0.9, 0.7])
    assert got["cand_scores"] == pytest.approx((kept - np.log(np.exp(kept).sum())).tolist(), abs=1e-6)
    assert len(top_k(gen, Ranker(weights), [pool], 10)[0]["cand_ids"]) == 6  # k above the pool: all of it


# ---------------------------------------------------------------- folding and the fuzzy source

def test_fold_drops_case_accents_and_compatibility_forms() -> None:
    from gemel.search.candidates import fold, norm

    assert fold("Zoë Saldaña") == "zoe saldana" and fold("MÜLLER") == fold("Müller") == "muller"
    assert fold("Straße") == "strasse" and fold("ﬁnal") == "final" and fold("İstanbul") == "istanbul"
    assert fold("Ǆoković") == "dzokovic"  # one compatibility letter, decomposed, then case-folded
    assert words("Jean-Luc  Godárd") == ["jean", "luc", "godard"] and norm("  Zoë   SALDAÑA ") == "zoe saldana"
    assert words("Zoë", folded=False) == ["zoë"] and norm(" Zoë ", folded=False) == "zoë"  # case only


def test_possessive_endings_are_folded_away() -> None:
    """"Premier League's" keys as "Premier League" does (exact match, alias key, no word "s"), in
    names too ("McDonald's"), while an apostrophe inside a word stays ("O'Neil"); case-only keys
    (the alias_prior baseline's) keep it."""
    from gemel.search.candidates import Generator, norm

    assert norm("Premier League's") == norm("Premier League") == "premier league"
    assert words("Prof. Voth’s lab") == ["prof", "voth", "lab"] and norm("McDonald's") == "mcdonald"
    assert norm("O'Neil") == "o'neil" and norm("Voters'") == "voters'" and norm("Liga's", folded=False) == "liga's"
    kb = pd.DataFrame({"entity_id": ["E1", "E2"], "name": ["Premier League", "Premier League Darts"], "description": None})
    train = pd.DataFrame({"id": ["t"], "split": ["train"], "mention": ["the Premier League's"], "entity_id": ["E1"],
                          "is_nil": False})
    gen = Generator(kb, AliasTable.from_mentions(train), pool_size=10)
    (pool,) = gen.pools(["Premier League's"], [""])
    got = {gen.ids[r]: f for r, f in zip(pool.rows, pool.features, strict=True)}
    assert got["E1"][FEATURES.index("exact")] == 1.0 and got["E2"][FEATURES.index("exact")] == 0.0
    assert got["E1"][FEATURES.index("mention_in_name")] == 1.0  # no stray "s" left unmatched
    assert gen.alias.lookup("The Premier League") == {"E1": 1}


def folding_kb() -> pd.DataFrame:
    return pd.DataFrame({"entity_id": ["E1", "E2", "E3"], "name": ["Thomas Müller", "Zoë Saldaña", "Gerd Muller"],
                         "description": None})


def test_folded_keys_join_accented_and_plain_spellings() -> None:
    from gemel.search.candidates import Generator

    kb = folding_kb()
    train = pd.DataFrame({"id": ["t"], "split": ["train"], "mention": ["SALDAÑA"], "entity_id": ["E2"], "is_nil": False})
    for folded in (True, False):
        gen = Generator(kb, AliasTable.from_mentions(train, folded), pool_size=10)
        muller, saldana = gen.pools(["Muller", "Saldana"], ["", ""])
        found = {gen.names[r]: s for r, s in zip(muller.rows, muller.sources, strict=True)}
        if folded:  # the word index joins "Muller" and "Müller", the alias table "Saldana" and "SALDAÑA"
            assert found == {"Gerd Muller": "name", "Thomas Müller": "name"}
            assert dict(zip(saldana.rows.tolist(), saldana.sources, strict=True)) == {1: "alias+name"}
            assert saldana.features[0, FEATURES.index("alias_prior")] == 1.0
        else:
            assert found == {"Gerd Muller": "name"} and len(saldana.rows) == 0


def brute_trigram_cosines(names: list[str], text: str) -> np.ndarray:
    """The char index's cosine by a plain scan: sets of padded trigrams of the folded words,
    idf log(1 + N/df), a gram no name holds weighted log(1 + N) in the text's norm."""
    def grams(t: str) -> set[str]:
        p = " " + " ".join(words(t)) + " "
        return {p[i:i + 3] for i in range(len(p) - 2)}

    sets = [grams(n) for n in names]
    df = Counter(g for s in sets for g in s)
    idf = {g: math.log(1.0 + len(names) / c) for g, c in df.items()}
    q = grams(text)
    qn = math.sqrt(sum(idf.get(g, math.log(1.0 + len(names))) ** 2 for g in q))
    out = []
    for s in sets:
        nn = math.sqrt(sum(idf[g] ** 2 for g in s))
        out.append(sum(idf[g] ** 2 for g in q & s) / (qn * nn) if qn and nn else 0.0)
    return np.asarray(out)


def fixture_mentions(kb: pd.DataFrame, gold: np.ndarray, splits: list[str], mentions: list[str],
                     text: str) -> pd.DataFrame:
    """Mentions of the KB rows `gold`, in `splits`, each with its text: `text` around the gold name."""
    return pd.DataFrame({
        "id": [f"m{i}" for i in range(len(gold))], "split": splits, "text": [text.format(kb["name"][g]) for g in gold],
        "mention": mentions, "entity_id": [kb["entity_id"][g] for g in gold],
        "entity_name": [kb["name"][g] for g in gold], "is_nil": False})


def misspell(rng: np.random.Generator, name: str) -> str:
    """Drop, double or swap one letter: what word matching misses."""
    i = int(rng.integers(0, max(len(name) - 1, 1)))
    op = int(rng.integers(0, 3))
    if op == 0:
        return name[:i] + name[i + 1:]
    if op == 1:
        return name[:i] + name[i] + name[i:]
    return name[:i] + name[i + 1:i + 2] + name[i:i + 1] + name[i + 2:]


def test_char_index_matches_a_brute_force_scan() -> None:
    from gemel.search.char_index import CharIndex

    names = fixture_kb(200)["name"].tolist() + ["Zoë Saldaña", "!!"]  # an accent; a name with no word
    index = CharIndex(names)
    rng = np.random.default_rng(4)
    texts = [misspell(rng, names[int(i)]) for i in rng.integers(0, len(names) - 1, size=40)] + ["saldana", "xqz", ""]
    for k in (1, 5):
        # several batches, by count and by the postings budget
        for got, text in zip(index.search(texts, k, batch=7, max_postings=3000), texts, strict=True):
            cos = brute_trigram_cosines(names, text)
            want = sorted((i for i in range(len(names)) if cos[i] > 0),
                          key=lambda i: (-round(cos[i], 4), len(names[i]), i))[:k]
            assert got.tolist() == want, text
    rows = [rng.integers(0, len(names), size=int(rng.integers(0, 9))) for _ in texts]
    for text, r, sims in zip(texts, rows, index.cosine(texts, rows), strict=True):
        np.testing.assert_allclose(sims, brute_trigram_cosines(names, text)[r], atol=1e-5)
    assert index.search(["saldana"], 1)[0].tolist() == [len(names) - 2]


def test_char_index_leaves_common_grams_out_of_the_product_and_rescores_exactly() -> None:
    """With max_df below the commonest grams' df, a text's candidates are the names sharing one of
    its other grams, the best rescore * k of them by those grams, ranked by their exact cosine."""
    from gemel.search.char_index import CharIndex, trigrams

    names = fixture_kb(300)["name"].tolist()
    index = CharIndex(names)
    df = Counter(g for n in names for g in trigrams(n))
    max_df = int(np.percentile(list(df.values()), 90))
    rng = np.random.default_rng(6)
    texts = [misspell(rng, names[int(i)]) for i in rng.integers(0, len(names), size=30)]
    k, rescore = 3, 2
    idf = {g: math.log(1.0 + len(names) / c) for g, c in df.items()}
    pruned = 0
    for text, got in zip(texts, index.search(texts, k, batch=5, max_df=max_df, rescore=rescore), strict=True):
        cos = brute_trigram_cosines(names, text)
        q = trigrams(text)
        rare = {g for g in q if g in df and df[g] <= max_df}
        if not rare or rare == {g for g in q if g in df}:  # nothing to leave out: the exact ranking
            want = sorted((i for i in range(len(names)) if cos[i] > 0), key=lambda i: (-round(cos[i], 4), len(names[i]), i))
        else:
            pruned += 1
            partial = {i: sum(idf[g] ** 2 / math.sqrt(sum(idf[h] ** 2 for h in trigrams(names[i])))
                              for g in rare & trigrams(names[i])) for i in range(len(names))}
            kept = [i for i in partial if partial[i] > 0]
            cut = sorted(partial[i] for i in kept)[-rescore * k] if len(kept) > rescore * k else 0.0
            near = [i for i in kept if partial[i] >= cut * (1 - 1e-5)]
            want = sorted(near, key=lambda i: (-round(cos[i], 4), len(names[i]), i))
        assert got.tolist() == want[:k], text
    assert pruned >= 10  # the case under test occurred


def test_fuzzy_source_finds_misspelled_names_and_tags_them() -> None:
    from gemel.search.candidates import Generator

    kb = pd.DataFrame({"entity_id": ["E1", "E2", "E3", "E4"],
                       "name": ["Michael Jordan", "Jordan River", "Michelle Obama", "Germany"], "description": None})
    gen = Generator(kb, AliasTable(), pool_size=10, fuzzy=2)
    misspelled, germans, jordan = gen.pools(["Micheal Jordon", "Germans", "Jordan"], ["", "", ""])
    assert gen.names[misspelled.rows[0]] == "Michael Jordan" and misspelled.sources[0] == "fuzzy"
    assert gen.names[germans.rows[0]] == "Germany" and germans.sources[0] == "fuzzy"
    tags = dict(zip([gen.names[r] for r in jordan.rows], jordan.sources, strict=True))
    assert tags == {"Michael Jordan": "name+fuzzy", "Jordan River": "name+fuzzy"}
    sim = FEATURES.index("char_sim")
    assert misspelled.features[0, sim] == pytest.approx(brute_trigram_cosines(gen.names, "Micheal Jordon")[0], abs=1e-5)
    assert 0.0 < misspelled.features[0, sim] < 1.0 and jordan.features[:, sim].max() < 1.0
    # fuzzy 0: no char index, no fuzzy candidate, char_sim 0
    off = Generator(kb, AliasTable(), pool_size=10, fuzzy=0)
    (pool,) = off.pools(["Micheal Jordon"], [""])
    assert len(pool.rows) == 0
    (pool,) = off.pools(["Jordan"], [""])
    assert set(pool.sources) == {"name"} and not pool.features[:, sim].any()


def test_recall_by_source_by_hand() -> None:
    from gemel.search.candidates import recall_by_source

    cands = pd.DataFrame({"cand_ids": [["A", "B"], ["C", "D"], ["E"], ["F", "G"], ["H", "I"], ["J"]],
                          "cand_sources": [["name", "alias+name"], ["name", "fuzzy"], ["name+fuzzy"], ["alias", "name"],
                                           ["name", "dense"], ["acronym"]]})
    gold = pd.Series(["B", "D", "E", "X", "I", "J"])  # ranks 2, 2, 1, absent, 2, 1
    got = recall_by_source(cands, gold, [1, 2])
    assert got == {"alias": {"recall@1": 0.0, "recall@2": 0.1667, "only": 0.0},
                   "name": {"recall@1": 0.1667, "recall@2": 0.3333, "only": 0.0},
                   "fuzzy": {"recall@1": 0.1667, "recall@2": 0.3333, "only": 0.1667},
                   "dense": {"recall@1": 0.0, "recall@2": 0.1667, "only": 0.1667},
                   "acronym": {"recall@1": 0.1667, "recall@2": 0.1667, "only": 0.1667}}


def test_candidates_report_holds_recall_per_source_and_the_settings() -> None:
    kb = fixture_kb()
    rng = np.random.default_rng(5)
    gold = rng.integers(0, len(kb), size=60)
    mentions = fixture_mentions(kb, gold, ["train"] * 40 + ["dev"] * 20, [misspell(rng, kb["name"][g]) for g in gold],
                                "About {}.")
    table, report = generate(mentions, kb, CandidatesParams(top_k=8, pool=20, fit_limit=None, fuzzy=3, **OFF))
    assert report["fold"] is True and report["fuzzy"] == 3 and set(report["recall_by_source"]) == {"train", "dev"}
    dev = mentions[mentions["split"] == "dev"]
    cands = table.set_index("id").loc[dev["id"]]
    for src, r in report["recall_by_source"]["dev"].items():
        hit = [g in list(c)[:8] and src in list(s)[list(c).index(g)].split("+")
               for c, s, g in zip(cands["cand_ids"], cands["cand_sources"], dev["entity_id"], strict=True)]
        assert r["recall@8"] == pytest.approx(round(float(np.mean(hit)), 4)), src
    assert report["recall_by_source"]["dev"]["fuzzy"]["recall@8"] > 0  # misspelled mentions: the source is used


# ---------------------------------------------------------------- the text against the description

# Descriptions in the form WikiMEL's qid2abs.json states them (RichpediaMEL's have no sex or years).
DESCRIPTIONS = ["Sex: male. Birth: 1833. Death: 1898, Jefferson. Occupation: lawyer, politician.",
                "Sex: male. Birth: 1979, Belo Horizonte. Occupation: association football player.",
                "Sex: female. Birth: 1916, Michendorf. Death: 2006, Los Angeles. Occupation: actor, film actor.",
                "Occupation: .", None]
DESCRIBED = pd.DataFrame({"entity_id": ["P1", "P2", "P3", "P4", "P5"],
                          "name": ["John Smith", "John Smith", "Jane Smith", "John Smith", "Smith"],
                          "description": pd.Series(DESCRIPTIONS, dtype=object)})


def context_features(gen, mention: str, text: str) -> dict[str, dict[str, float]]:
    (pool,) = gen.pools([mention], [text])
    cols = [FEATURES.index(f) for f in ("desc_overlap", "year_before", "year_within", "year_after", "pronoun_sex")]
    names = ("desc_overlap", "year_before", "year_within", "year_after", "pronoun_sex")
    return {gen.ids[r]: dict(zip(names, f[cols].tolist(), strict=True)) for r, f in zip(pool.rows, pool.features,
                                                                                         strict=True)}


def test_description_overlap_is_the_idf_cosine_of_the_text_beyond_the_mention() -> None:
    """desc_overlap: the cosine of the text's and the description's word sets, each word weighted
    by its idf over the KB's descriptions, by hand; the field labels every description repeats
    weigh nothing, and the mention's own words do not count."""
    from gemel.search.candidates import Generator

    gen = Generator(DESCRIBED, AliasTable(), pool_size=10, context=("overlap",))
    text = "Jefferson Smith, the football player, and a lawyer; Occupation unknown"
    got = context_features(gen, "Jefferson Smith", text)
    described = [d for d in DESCRIPTIONS if d]
    sets = [set(words(d)) for d in described]
    idf = {w: math.log((1 + len(sets)) / (1 + sum(w in s for s in sets))) for s in sets for w in s}
    assert idf["occupation"] == 0.0
    t = {w for w in words(text) if idf.get(w, 0) > 0} - {"jefferson", "smith"}  # not the mention's words
    for eid, d in zip(DESCRIBED["entity_id"], DESCRIPTIONS, strict=True):
        s = set(words(d)) if d else set()
        want = (sum(idf[w] ** 2 for w in t & s) / math.sqrt(sum(idf[w] ** 2 for w in t) * sum(idf[w] ** 2 for w in s))
                if s and any(idf[w] for w in s) else 0.0)
        assert got[eid]["desc_overlap"] == pytest.approx(want, abs=1e-6), eid
    assert min(got["P1"]["desc_overlap"], got["P2"]["desc_overlap"]) > got["P3"]["desc_overlap"] == 0.0
    assert got["P4"]["desc_overlap"] == got["P5"]["desc_overlap"] == 0.0  # nothing but a label; none at all


def test_years_of_the_text_against_the_descriptions_span() -> None:
    """year_before/within/after: the shares of the text's years (1000-2099, not the mention's)
    before, inside and after the years the description names (birth to death; one year: a
    lifespan after it); 0 where the text or the description names no year."""
    from gemel.search.candidates import Generator

    gen = Generator(DESCRIBED, AliasTable(), pool_size=10, context=("years",))
    got = context_features(gen, "Smith 1950", "Smith 1950 at a party in 1890, 1960 and 2011; 12345 people, 999 cars")
    shares = {e: (g["year_before"], g["year_within"], g["year_after"]) for e, g in got.items()}
    assert shares["P1"] == pytest.approx((0.0, 1 / 3, 2 / 3))   # 1833-1898
    assert shares["P2"] == pytest.approx((2 / 3, 1 / 3, 0.0))   # born 1979, no death: up to 2079
    assert shares["P3"] == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # 1916-2006
    assert shares["P4"] == shares["P5"] == (0.0, 0.0, 0.0)
    assert all(v == 0.0 for g in context_features(gen, "Smith", "Smith at a party").values() for v in g.values())


def test_pronouns_against_the_stated_sex() -> None:
    """pronoun_sex: the text's he/him/his (+1) and she/her (-1) balance times the sex the
    description states (+1 male, -1 female, 0 unstated)."""
    from gemel.search.candidates import Generator

    gen = Generator(DESCRIBED, AliasTable(), pool_size=10, context=("pronouns",))
    got = {e: g["pronoun_sex"] for e, g in context_features(gen, "Smith", "Smith and his wife; he sang, she played").items()}
    assert got == pytest.approx({"P1": 1 / 3, "P2": 1 / 3, "P3": -1 / 3, "P4": 0.0, "P5": 0.0})
    got = {e: g["pronoun_sex"] for e, g in context_features(gen, "Smith", "Smith with her daughter").items()}
    assert got == pytest.approx({"P1": -1.0, "P2": -1.0, "P3": 1.0, "P4": 0.0, "P5": 0.0})


def test_context_features_are_zero_when_switched_off_or_undescribed() -> None:
    """A switched-off group leaves its columns 0 (the ranker then fits their weights to 0), as does
    a KB without descriptions (WikiDiverse) with every group on; an unknown group is an error."""
    from gemel.search.candidates import CONTEXT, Generator

    text = "Smith and his football club in 1990"
    on = context_features(Generator(DESCRIBED, AliasTable(), pool_size=10, context=CONTEXT), "Smith", text)
    assert on["P2"]["desc_overlap"] > 0 and on["P2"]["year_within"] == 1.0 and on["P2"]["pronoun_sex"] == 1.0
    off = context_features(Generator(DESCRIBED, AliasTable(), pool_size=10, context=("years",)), "Smith", text)
    assert off["P2"] == {**dict.fromkeys(on["P2"], 0.0), "year_within": 1.0}
    bare = DESCRIBED.assign(description=None)
    assert all(v == 0.0 for g in context_features(Generator(bare, AliasTable(), pool_size=10, context=CONTEXT),
                                                   "Smith", text).values() for v in g.values())
    with pytest.raises(CandidateError, match="unknown context"):
        Generator(DESCRIBED, AliasTable(), pool_size=10, context=("dates",))


def lifetimes(n_train: int = 60, n_dev: int = 30, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs of namesakes, one who lived 1850-1910 and one born 1950, and captions "<surname> in
    <year>" whose year only the gold's lifetime fits: nothing but the description decides."""
    rng = np.random.default_rng(seed)
    surnames = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Thomas"]
    kb = pd.DataFrame([{"entity_id": f"{s}{k}", "name": f"{first} {s}",
                        "description": f"Sex: male. Birth: {born}." + (f" Death: {died}." if died else "")}
                       for s in surnames for k, (first, born, died) in enumerate([("John", 1850, 1910),
                                                                                   ("Jim", 1950, None)])])
    rows = []
    for i in range(n_train + n_dev):
        s, k = surnames[int(rng.integers(len(surnames)))], int(rng.integers(2))
        year = int(rng.integers(1870, 1905)) if k == 0 else int(rng.integers(1975, 2020))
        rows.append({"id": f"m{i}", "split": "train" if i < n_train else "dev", "mention": s,
                     "text": f"{s} in {year}", "entity_id": f"{s}{k}", "entity_name": kb.set_index("entity_id").at[
                         f"{s}{k}", "name"], "is_nil": False})
    return kb, pd.DataFrame(rows)


def test_the_ranker_learns_to_read_the_years_and_links_by_them() -> None:
    """Fitted on train, the years decide the dev mentions that only a lifetime tells apart; with
    them off the ranker is left with a coin toss."""
    kb, mentions = lifetimes()
    _, on = generate(mentions, kb, CandidatesParams(top_k=4, pool=10, fit_limit=None, **OFF))
    _, off = generate(mentions, kb, CandidatesParams(top_k=4, pool=10, fit_limit=None, years=False, **OFF))
    assert on["years"] is True and off["years"] is False
    assert on["weights"]["year_within"] > 0 > on["weights"]["year_before"]
    assert off["weights"]["year_within"] == off["weights"]["year_before"] == 0.0
    assert on["recall"]["dev"]["recall@1"] == 1.0
    assert off["recall"]["dev"]["recall@1"] < 0.8


def test_a_report_without_the_context_weights_asks_to_rerun_the_stage() -> None:
    from gemel.search.candidates import ranker_weights

    old = {f: 1.0 for f in FEATURES if f not in ("desc_overlap", "pronoun_sex")}
    with pytest.raises(CandidateError, match="desc_overlap, pronoun_sex .*rerun the candidates stage"):
        ranker_weights({"weights": old})



def test_description_features_do_not_hang_on_the_hash_seed() -> None:
    """The overlap sums floats over a text's and a description's words: summed in a set's order,
    the last bits changed with PYTHONHASHSEED, and with them the fitted ranker. Processes with
    different hash seeds must give the same bits."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import random\n"
        "from gemel.search.descriptions import Descriptions\n"
        "rng = random.Random(0)\n"
        "vocab = [f'w{i}' for i in range(300)]\n"
        "descs = [' '.join(rng.choices(vocab, k=40)) for _ in range(60)]\n"
        "d = Descriptions(descs)\n"
        "ctx = d.context('Blum', 'Blum ' + ' '.join(rng.sample(vocab, 80)))\n"
        "print([float(d.overlap(ctx, r)).hex() for r in range(60)], [float(x).hex() for x in d.norm])\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={**env, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(1, 5)}
    assert len(outs) == 1, outs
