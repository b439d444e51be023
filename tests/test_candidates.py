"""Candidate generation against brute-force references on a fixture KB, the alias table's
leave-one-out, the ranker's fit, the fusion formula and the weight choice, and the stage."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from gemel.candidates import (
    FEATURES,
    AliasTable,
    CandidateError,
    NameIndex,
    Pool,
    Ranker,
    choose_weight,
    fuse,
    generate,
    recall_at,
    words,
)

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
        got = index.search(queries, k, batch=7)  # several batches
        for q, g in zip(queries, got, strict=True):
            assert g.tolist() == brute_search(names, q, k), q
    for q in queries:
        want = sorted((i for i, n in enumerate(names) if set(q) <= set(words(n))), key=lambda i: (len(names[i]), i))
        assert index.containing_all(q).tolist() == want


def test_recall_matches_a_brute_force_count() -> None:
    kb = fixture_kb()
    rng = np.random.default_rng(2)
    gold = rng.integers(0, len(kb), size=80)
    mentions = pd.DataFrame({
        "id": [f"m{i}" for i in range(80)], "split": ["train"] * 40 + ["test"] * 40,
        "text": [f"About {kb['name'][g]} here." for g in gold],
        "mention": [kb["name"][g].split()[-1] for g in gold],
        "entity_id": [kb["entity_id"][g] for g in gold], "entity_name": [kb["name"][g] for g in gold],
        "is_nil": False})
    table, report = generate(mentions, kb, top=5, pool_size=50, fit_limit=None)
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


def test_fused_score_is_the_formula_and_the_weight_is_chosen_by_dev_accuracy() -> None:
    llm, prior = np.array([-1.0, -0.5, -3.0]), np.array([-0.1, -2.0, -0.5])
    assert fuse(llm, prior, 0.0).tolist() == llm.tolist()
    assert fuse(llm, prior, 2.0).tolist() == pytest.approx((llm + 2.0 * prior).tolist())
    names = [["A", "B", "C"]]
    # w=0 picks B (the LLM), w>=1 picks A (-1.1 against -2.5): gold A -> the smallest winning weight
    w, acc = choose_weight([llm], [prior], names, ["A"], [0.0, 1.0, 4.0])
    assert (w, acc) == (1.0, {"0.0": 0.0, "1.0": 1.0, "4.0": 1.0})
    w, _ = choose_weight([llm], [prior], names, ["B"], [0.0, 1.0, 4.0])
    assert w == 0.0


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
