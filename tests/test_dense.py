"""The dense candidate source and dense_sim, with the real offline sentence encoder (all-MiniLM-L6-v2):
it finds an entity by its description when no word or trigram of its name is in the mention, the
feature ranks it, the KB's embeddings are cached by KB and encoder, and switched off nothing changes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemel.config import CandidatesParams, load_params
from gemel.search.candidates import FEATURES, SOURCES, AliasTable, Generator, Ranker, generate, top_k
from gemel.search.dense import (
    DenseError,
    DenseIndex,
    cached_kb_embeddings,
    entity_text,
    kb_embeddings,
    kb_embeddings_precision,
    load_encoder,
    mention_text,
    native_bf16,
    read_kb_embeddings,
    resolve_precision,
)

ROOT = Path(__file__).resolve().parent.parent
OFF = {"dense": 0, "dense_sim": False}

# "the red world" shares no word with "Mars", and no character trigram: only its description can find it.
KB = pd.DataFrame({
    "entity_id": ["E1", "E2", "E3", "E4", "E5", "E6"],
    "name": ["Mars", "Red Square", "World Bank", "The Red Shoes", "Venus", "Red Sea"],
    "description": pd.Series(["Fourth planet from the Sun, a cold desert world with a thin atmosphere; "
                              "rovers explore its dusty red surface.",
                              "City square in Moscow, Russia, beside the Kremlin.",
                              "International financial institution that lends to governments.",
                              "A 1948 British film about a ballerina.",
                              "Second planet from the Sun, the hottest in the solar system.",
                              None], dtype=object)})
MENTION = "the red world"
TEXT = "Rovers have driven for years across the dusty surface of the red world, the fourth planet from the Sun."


@pytest.fixture(scope="module")
def encoder():
    params = load_params(ROOT / "params.yaml")
    return load_encoder(params["candidates"]["encoder"], params["text_encoders"])


def test_texts_are_the_name_and_description_and_the_mention_in_its_context() -> None:
    assert entity_text("Mars", None) == "Mars" and entity_text("Mars", "  a  planet ") == "Mars: a planet"
    assert len(entity_text("Mars", "x" * 1000)) == 400
    long = " ".join(f"w{i}" for i in range(200)) + " the red world " + " ".join(f"v{i}" for i in range(200))
    q = mention_text(MENTION, long)
    assert q.startswith("the red world: ") and MENTION in q.partition(": ")[2] and len(q) <= 300 + 15
    assert not q.split()[3].startswith("0")  # cut at whole words
    assert mention_text("x", "") == "x"


def test_the_dense_source_finds_an_entity_by_its_description_and_dense_sim_ranks_it(encoder) -> None:
    index = DenseIndex.of(KB, encoder, None)
    gen = Generator(KB, AliasTable(), pool_size=10, fuzzy=10, dense=1, dense_sim=True, dense_index=index)
    (pool,) = gen.pools([MENTION], [TEXT])
    mars = gen.row_of["E1"]
    assert mars in pool.rows.tolist()
    assert pool.sources[pool.rows.tolist().index(mars)] == "dense"  # no word, no trigram: the dense source alone
    # The other sources found the entities sharing "red" or "world", and without the dense source Mars is absent.
    plain = Generator(KB, AliasTable(), pool_size=10, fuzzy=10)
    assert mars not in plain.pools([MENTION], [TEXT])[0].rows.tolist()
    # dense_sim is the cosine of the two embedded texts, and it ranks Mars first of the pool.
    sim = pool.features[:, FEATURES.index("dense_sim")]
    emb = encoder.encode([mention_text(MENTION, TEXT), entity_text("Mars", KB["description"][0])])
    assert sim[pool.rows.tolist().index(mars)] == pytest.approx(float(emb[0] @ emb[1]), abs=2e-4)
    only_dense = Ranker(np.eye(len(FEATURES), dtype=np.float32)[FEATURES.index("dense_sim")])
    (best,) = top_k(gen, only_dense, [pool], 1)
    assert best["cand_ids"] == ["E1"]


def paraphrased() -> pd.DataFrame:
    """Training and dev mentions that name an entity only by a description of it; the name index
    proposes the entities that share their words, the dense source the described one."""
    rows = [("train", "the red world", "E1", "Rovers crossed the red world, the fourth planet from the Sun."),
            ("train", "the red world", "E1", "Dust storms cover the red world, the cold desert planet."),
            ("train", "the bright world", "E5", "The bright world, second planet from the Sun, is the hottest."),
            ("train", "the square by the kremlin", "E2", "Crowds filled the square by the Kremlin in Moscow."),
            ("train", "the lending bank", "E3", "The lending bank of the world's governments raised rates."),
            ("dev", "the rusty world", "E1", "A rover landed on the rusty world, fourth from the Sun."),
            ("dev", "the hot world", "E5", "Clouds of acid hide the hot world, second planet from the Sun.")]
    return pd.DataFrame({"id": [f"m{i}" for i in range(len(rows))], "split": [r[0] for r in rows],
                         "mention": [r[1] for r in rows], "entity_id": [r[2] for r in rows],
                         "text": [r[3] for r in rows], "entity_name": None, "is_nil": False})


def test_dense_sim_is_fitted_into_the_ranker_and_links_by_it(encoder) -> None:
    mentions = paraphrased()
    index = DenseIndex.of(KB, encoder, None)
    p = CandidatesParams(top_k=4, pool=10, fit_limit=None, fuzzy=0, dense=2, dense_sim=True)
    table, report = generate(mentions, KB, p, index)
    assert report["dense"] == 2 and report["dense_sim"] is True and report["encoder"] == p.encoder
    assert report["weights"]["dense_sim"] > 0
    assert set(report["recall_by_source"]["dev"]) == set(SOURCES) and report["recall_by_source"]["dev"]["dense"][
        "only"] > 0
    assert report["recall"]["dev"]["recall@1"] == 1.0
    # Without the feature the pool is the same but nothing tells the candidates apart as well.
    no_sim = CandidatesParams(top_k=4, pool=10, fit_limit=None, fuzzy=0, dense=2, dense_sim=False)
    _, without = generate(mentions, KB, no_sim, index)
    assert without["weights"]["dense_sim"] == 0.0 and without["recall"]["dev"]["recall@4"] == 1.0


def test_switched_off_the_pools_are_the_old_ones(encoder) -> None:
    mentions = paraphrased()
    index = DenseIndex.of(KB, encoder, None)
    off = generate(mentions, KB, CandidatesParams(top_k=4, pool=10, fit_limit=None, **OFF))
    # An index handed over with both switches off is not used.
    ignored = generate(mentions, KB, CandidatesParams(top_k=4, pool=10, fit_limit=None, **OFF), index)
    pd.testing.assert_frame_equal(off[0], ignored[0])
    assert off[1] == ignored[1] and off[1]["weights"]["dense_sim"] == 0.0 and off[1]["encoder"] is None
    assert not any("dense" in s for srcs in off[0]["cand_sources"] for s in srcs)
    gen = Generator(KB, AliasTable(), pool_size=10, fuzzy=10)
    assert all((p.features[:, FEATURES.index("dense_sim")] == 0).all() for p in gen.pools(mentions["mention"].tolist(),
                                                                                       mentions["text"].tolist()))
    with pytest.raises(Exception, match="DenseIndex"):
        generate(mentions, KB, CandidatesParams(top_k=4, dense=2))  # on, but no encoder: a clear error


def test_kb_embeddings_are_reused_while_kb_and_encoder_are_unchanged(encoder, tmp_path) -> None:
    path = tmp_path / "kb_embeddings.parquet"
    vectors, reused = kb_embeddings(KB, encoder, path)
    assert not reused and vectors.shape == (len(KB), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    written, mtime = path.read_bytes(), path.stat().st_mtime_ns
    again, reused = kb_embeddings(KB, encoder, path)
    assert reused and np.array_equal(again, vectors) and path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(cached_kb_embeddings(KB, encoder, path), vectors)  # what gemel link reads
    meta, _ = read_kb_embeddings(path)
    assert meta["encoder"] == encoder.name and len(meta["key"]) == 64
    # A changed description: another key, recomputed; the link side refuses the stale file instead.
    changed = KB.assign(description=KB["description"].where(KB["entity_id"] != "E6", "A sea between Africa and Asia."))
    with pytest.raises(DenseError, match="rerun the candidates stage"):
        cached_kb_embeddings(changed, encoder, path)
    fresh, reused = kb_embeddings(changed, encoder, path)
    assert not reused and path.read_bytes() != written
    np.testing.assert_array_equal(fresh[:5], vectors[:5])  # each entity is embedded on its own text alone
    assert not np.allclose(fresh[5], vectors[5])


def test_bf16_embeddings_are_near_fp32_keyed_apart_and_link_embeds_as_the_stage_did(encoder, tmp_path) -> None:
    """candidates.precision: bf16 vectors are within cosine 0.999 of fp32 ones but not equal, so
    the cache keys them apart; the file records the precision, which `gemel link` embeds with."""
    assert resolve_precision("auto", "cuda:0") == "bf16" and resolve_precision("fp32", "cuda:0") == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(DenseError, match="candidates.precision"):
        resolve_precision("fp16", "cpu")
    params = load_params(ROOT / "params.yaml")
    half = load_encoder(params["candidates"]["encoder"], params["text_encoders"], "bf16")
    assert half.precision == "bf16" and encoder.precision == "fp32"
    full_v, _ = kb_embeddings(KB, encoder, tmp_path / "fp32.parquet")
    half_v, reused = kb_embeddings(KB, half, tmp_path / "fp32.parquet")  # another key: not the fp32 file's
    assert not reused and not np.array_equal(full_v, half_v)
    assert (full_v * half_v).sum(axis=1).min() > 0.999
    assert kb_embeddings_precision(tmp_path / "fp32.parquet") == "bf16"  # rewritten by the bf16 run
    assert kb_embeddings_precision(tmp_path / "absent.parquet") == "fp32"
    with pytest.raises(DenseError, match="rerun the candidates stage"):
        cached_kb_embeddings(KB, encoder, tmp_path / "fp32.parquet")


def test_the_stage_writes_the_embeddings_once_and_identical_outputs(tmp_path) -> None:
    """stages.candidates with the dense part on: the embeddings file is written, reused by a rerun
    with another top_k (same bytes, not rewritten), and both runs' tables are byte-identical to a
    fresh run's; switched off, the file is written empty."""
    from gemel.data.tables import KB as KB_SCHEMA
    from gemel.data.tables import MENTIONS, write_parquet_atomic
    from stages import candidates as stage

    mentions = paraphrased().assign(dataset="fx", start=None, end=None, image=None)
    write_parquet_atomic(mentions, tmp_path / "prepared" / "mentions.parquet", MENTIONS)
    write_parquet_atomic(KB, tmp_path / "prepared" / "kb.parquet", KB_SCHEMA)

    def run(out: str, *more: str) -> Path:
        argv = ["--set", f"prepare.out={tmp_path / 'prepared'}", "--set", f"candidates.out={tmp_path / out}",
                "--set", "candidates.dense=2", "--set", "candidates.dense_sim=true"]
        assert stage.main(argv + [a for s in more for a in ("--set", s)]) == 0
        return tmp_path / out

    a = run("a")
    emb = a / "kb_embeddings.parquet"
    first, mtime = emb.read_bytes(), emb.stat().st_mtime_ns
    report = json.loads((a / "report.json").read_text())
    assert report["dense"] == 2 and report["dense_sim"] is True and "dense_sim" in report["weights"]
    run("a", "candidates.top_k=2")
    assert emb.stat().st_mtime_ns == mtime and emb.read_bytes() == first
    run("a")
    b = run("b")
    for name in ("candidates.parquet", "kb_embeddings.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # The reports byte-identical (train reads them); what each run cost is in cost.json.
    assert (a / "report.json").read_bytes() == (b / "report.json").read_bytes()
    assert "cost" not in json.loads((a / "report.json").read_text())
    assert json.loads((b / "cost.json").read_text())["cost"]["seconds"] >= 0
    off = run("c", "candidates.dense=0", "candidates.dense_sim=false")
    assert read_kb_embeddings(off / "kb_embeddings.parquet")[1].shape[0] == 0
