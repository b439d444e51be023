"""`gemel link` and `Linker.from_run` on a real (small) trained run: SmolLM2-135M and
EfficientNet-Lite0 on a small draw of the embedded sample, every stage run through its CLI's main()
into a temporary folder (under 2 minutes on a 2-core CPU, most of it training).

What is checked: run.json describes the run and check_run finds it intact; linking the test split's
own inputs reproduces the decode stage (both modes); for freshly drawn inputs (another seed: unseen
images) the image moves the scores, and without it text and mention alone decide (no accuracy
threshold: a short training scores differently on another machine); the API and the CLI give identical records; a partial output resumes; each bad input;
a changed KB, trie or encoder makes linking refuse, naming what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemel import Linker
from gemel.config import CandidatesParams, DecodeParams, load_params
from gemel.data.sample import generate_sample
from gemel.data.tables import read_kb, read_mentions, write_parquet_atomic
from gemel.link.fusion import FEATURES, Fusion, FusionError
from gemel.link.inputs import InputError, parse_input
from gemel.link.linker import dense_index
from gemel.link.run import RunError, check_run, project_root, read_run_record, write_run_record
from gemel.search.candidates import CONTEXT, Generator, Ranker, propose
from gemel.search.retrieval import DemoPool, load_text_encoder, read_demos, read_pool, retrieve
from gemel.stack import versions

LLM = "smollm2-135m"
# The fresh draw: 36 test mentions, each (text, mention) of the sample's neutral texts with several images.
SAMPLE = dict(train_per_entity=3, dev_per_entity=1, test_per_entity=1, image_size=96)


def sha256(path: Path) -> str:
    """Computed here, not by gemel: the record must hold the file's own digest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Pipeline:
    """The shared small run (`dvc repro` of tests/conftest.py's sample_project): its folders, given
    as absolute overrides so that the stages' main() and load_params work from any directory."""
    project: Path
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.project / "data"

    @property
    def run(self) -> Path:
        return self.project / "results" / LLM

    @property
    def params_file(self) -> Path:
        return self.project / "params.yaml"

    @property
    def overrides(self) -> list[str]:
        b = self.base
        return [f"sample.out={b}/sample", f"datasets.sample.input={b}/sample",
                f"datasets.sample.kb={b}/sample/kb.json", f"datasets.sample.images={b}/sample/images",
                f"prepare.out={b}/prepared", f"features.out={b}/features", f"retrieve.out={b}/demos",
                f"candidates.out={b}/candidates", f"trie.out={b}/tries", f"train.out={self.project}/results"]

    @property
    def mentions(self) -> pd.DataFrame:
        return read_mentions(self.base / "prepared" / "mentions.parquet")

    def load_params(self, *more: str) -> dict:
        return load_params(self.params_file, [*self.overrides, *more])

    def argv(self, *more: str) -> list[str]:
        return ["--params", str(self.params_file)] + [a for s in [*self.overrides, *more] for a in ("--set", s)]


@pytest.fixture(scope="session")
def pipeline(sample_project) -> Pipeline:
    p = Pipeline(sample_project)
    p.params = p.load_params()
    return p


@pytest.fixture(scope="session")
def linker(pipeline) -> Linker:
    return Linker.from_run(pipeline.run)


def inputs(pipeline: Pipeline, mentions: pd.DataFrame) -> list[dict]:
    """The split's mentions as link inputs; image paths as prepared (relative to the project), made absolute."""
    return [{"id": i, "text": t, "mention": m, "image": str(pipeline.project / im)}
            for i, t, m, im in zip(mentions["id"], mentions["text"], mentions["mention"], mentions["image"],
                                   strict=True)]


@pytest.fixture(scope="session")
def fresh(tmp_path_factory) -> tuple[Path, list[dict], list[str]]:
    """A new draw of the sample's generator (seed 1: texts and images the run never saw): its test
    split as link inputs (image paths relative to the folder) and their gold names."""
    folder = tmp_path_factory.mktemp("fresh")
    generate_sample(folder, seed=1, **SAMPLE)
    lines = [json.loads(line) for line in (folder / "test.json").read_text().splitlines()]
    records = [{"id": o["id"], "text": o["text"], "mention": o["mention"], "image": f"images/{o['img_name']}"}
               for o in lines]
    return folder, records, [o["target"] for o in lines]


def absolute(folder: Path, records: list[dict]) -> list[dict]:
    return [{**r, "image": str(folder / r["image"])} if r.get("image") else r for r in records]


def cli(*argv: str) -> int:
    from gemel.cli import main

    return main(["link", *map(str, argv)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


# ------------------------------------------------------------------ the run record


def test_run_record_describes_the_run_and_matches_its_files(pipeline):
    from gemel.vision.encoders import efficientnet_lite0_weights

    record = read_run_record(pipeline.run)
    params = pipeline.params
    assert record["llm"] == {"name": LLM, "spec": params["llms"][LLM]}
    enc = record["image_encoder"]
    assert enc["encoder"] == "efficientnet_lite0"
    assert enc["weights_sha256"] == sha256(efficientnet_lite0_weights())
    assert enc["features_table"].startswith("efficientnet_lite0:")
    assert record["model"] == {"llm": LLM, "prefix_tokens": 4, "use_image": True, "num_demos": 0}
    assert record["retrieval"]["method"] == "simcse" and record["retrieval"]["encoder"] == "all-MiniLM-L6-v2"
    assert "decode" not in record  # how the run decodes is the decode stage's record: decode never retrains
    settings = json.loads((pipeline.run / "decode_report.json").read_text())["settings"]
    assert {k: settings[k] for k in ("candidates", "num_candidates", "length_penalty", "num_beams",
                                     "max_new_tokens", "batch_size")} == {
        k: params["decode"][k] for k in ("candidates", "num_candidates", "length_penalty", "num_beams",
                                         "max_new_tokens", "batch_size")}
    report = json.loads((pipeline.base / "candidates" / "report.json").read_text())
    assert record["candidates"]["weights"] == report["weights"]  # exact: the ranker rebuilds from them
    assert record["artifacts"]["kb"]["sha256"] == sha256(pipeline.base / "prepared" / "kb.parquet")
    assert record["artifacts"]["trie"]["sha256"] == sha256(pipeline.base / "tries" / f"{LLM}.npz")
    assert record["run_files"]["mapper"]["sha256"] == sha256(pipeline.run / "mapper.safetensors")
    assert record["artifacts"]["pool"]["path"] == "data/demos/pool.parquet"  # relative: the project moves
    assert (pipeline.project / record["artifacts"]["pool"]["path"]).is_file()
    assert record["versions"] == versions()  # the pinned stack's key packages, as every stage report has them
    assert {"python", "torch", "transformers", "tokenizers", "numpy", "gemel"} <= set(record["versions"])
    assert all(record["versions"].values())
    assert check_run(record, pipeline.run) == []


def test_relative_paths_resolve_from_the_run_folder_wherever_link_runs(tmp_path):
    record = {"train_out": "results/ablations/x", "llm": {"name": LLM}}
    run = tmp_path / "project" / "results" / "ablations" / "x" / LLM
    run.mkdir(parents=True)
    assert project_root(record, run) == tmp_path / "project"
    assert project_root(record, tmp_path / "project") is None  # not a run folder of that layout
    assert project_root({**record, "train_out": str(tmp_path)}, run) is None  # absolute: as recorded


# ------------------------------------------------------------------ linking = the pipeline


def test_linking_the_test_split_reproduces_the_decode_stage(pipeline, linker):
    test = pipeline.mentions[pipeline.mentions["split"] == "test"]
    out = linker.link(inputs(pipeline, test), top=None)
    pred = pd.read_parquet(pipeline.run / "predictions.parquet").set_index("id")
    assert [o["id"] for o in out] == list(test["id"])
    for o in out:
        assert [e["name"] for e in o["entities"]] == list(pred.at[o["id"], "beams"])
        assert [e["id"] for e in o["entities"]] == list(pred.at[o["id"], "beam_ids"])
        # Re-encoded images and other batches: the same scores up to float noise (measured 1.2e-5).
        np.testing.assert_allclose([e["score"] for e in o["entities"]], pred.at[o["id"], "beam_scores"], atol=1e-4)
        assert o["mode"] == "paper" and o["image_used"] and o["image_reason"] is None and o["mention_in_text"]


def test_the_image_moves_the_scores_and_without_it_text_and_mention_decide(pipeline, linker, fresh):
    """What must hold on any machine, whatever a short training learned: without the image the
    output is a function of (text, mention); with it, the scores move, and two inputs that differ
    only in their image are told apart by the model (fresh draw: images the run never saw)."""
    folder, records, _ = fresh
    with_image = linker.link(absolute(folder, records), top=None)
    without = linker.link([{k: v for k, v in r.items() if k != "image"} for r in records], top=None)
    assert all(o["image_used"] and o["image_reason"] is None for o in with_image)
    assert all(not o["image_used"] and o["image_reason"] == "none given" for o in without)

    def scores(o: dict) -> dict[str, float]:
        return {e["id"]: e["score"] for e in o["entities"]}

    by_pair: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        by_pair.setdefault((r["text"], r["mention"]), []).append(i)
    repeated = [ix for ix in by_pair.values() if len(ix) > 1]
    assert repeated  # the fresh draw's neutral texts recur with several entities of a group
    for ix in repeated:
        first = scores(without[ix[0]])
        for i in ix[1:]:
            assert list(scores(without[i])) == list(first)
            np.testing.assert_allclose(list(scores(without[i]).values()), list(first.values()), atol=1e-5)
        # The same text and mention with other images: other scores.
        assert len({tuple(round(s, 4) for s in scores(with_image[i]).values()) for i in ix}) == len(ix)
    for w, wo in zip(with_image, without, strict=True):  # the image is in the prompt: every input's scores move
        a, b = scores(w), scores(wo)
        common = set(a) & set(b)
        assert set(a) != set(b) or max(abs(a[c] - b[c]) for c in common) > 1e-3


def test_missing_and_unreadable_images_follow_the_runs_policy(pipeline, linker, fresh, tmp_path):
    folder, records, _ = fresh
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = absolute(folder, records[:1])[0]
    out = linker.link([{**r, "image": str(tmp_path / "nowhere.png")}, {**r, "image": str(broken)}])
    # features.missing_image: zero (the run's): linked with a zero vector, as the pipeline does.
    assert [(o["image_used"], o["image_reason"]) for o in out] == [(False, "missing"), (False, "unreadable")]
    assert all(o["entities"] and "error" not in o for o in out)
    # Under `error` the input fails, alone: the others in its batch are linked.
    linker.new.missing_image = "error"
    try:
        out = linker.link([{**r, "image": str(broken)}, r], on_error="record")
    finally:
        linker.new.missing_image = "zero"
    assert "unreadable" in out[0]["error"] and out[1]["entities"] and "error" not in out[1]


def test_candidate_mode_reproduces_the_decode_stage(pipeline, tmp_path):
    """A second run folder with the same mapper and decode.candidates: constrained; its decode
    stage chooses the fusion weight on dev, and link reads it from decode_report.json."""
    from stages import decode

    more = [f"train.out={tmp_path}", "decode.candidates=constrained"]
    run = tmp_path / LLM
    run.mkdir()
    shutil.copy(pipeline.run / "mapper.safetensors", run / "mapper.safetensors")
    write_run_record(pipeline.load_params(*more), run)
    assert decode.main(pipeline.argv(*more)) == 0
    report = json.loads((run / "decode_report.json").read_text())
    linker = Linker.from_run(run)
    assert report["fusion"] == "learned" and linker.notes == []
    assert linker.new.fusion == Fusion.from_record(report, "decode_report.json")
    assert list(report["fusion_weights"]) == list(FEATURES)
    cv = report["dev_cross_validated"]
    assert cv["mentions"] == len(pipeline.mentions.query("split == 'dev' and not is_nil"))
    test = pipeline.mentions[pipeline.mentions["split"] == "test"]
    out = linker.link(inputs(pipeline, test), top=None)
    pred = pd.read_parquet(run / "predictions.parquet").set_index("id")
    for o in out:
        assert o["mode"] == "candidates"
        assert [e["id"] for e in o["entities"]] == list(pred.at[o["id"], "beam_ids"])
        np.testing.assert_allclose([e["score"] for e in o["entities"]], pred.at[o["id"], "beam_scores"], atol=1e-4)
    # A report whose learned fusion lost its weights: a clear error naming the report.
    weights = report.pop("fusion_weights")
    (run / "decode_report.json").write_text(json.dumps(report))
    with pytest.raises(FusionError, match="decode_report.json: fusion_weights lacks prior"):
        Linker.from_run(run)
    # A report with the settings but no fusion at all: the LLM alone, and a note says so.
    assert weights and report.pop("fusion") == "learned"
    (run / "decode_report.json").write_text(json.dumps(report))
    assert "fusion weight 0" in Linker.from_run(run).notes[-1]
    # No report at all: the paper's mode with the default decode settings, and a note says so.
    (run / "decode_report.json").unlink()
    again = Linker.from_run(run)
    assert again.new.mode == "paper" and "no record of the decode stage's settings" in again.notes[-1]


def test_candidates_of_new_inputs_are_the_stages(pipeline):
    """Rebuilt from the prepared tables and run.json's ranker weights, the candidates of the test
    split's (mention, text) pairs are the candidates stage's rows."""
    record = read_run_record(pipeline.run)
    mentions = pipeline.mentions
    c = record["candidates"]
    assert c["fold"] is True and c["fuzzy"] == pipeline.params["candidates"]["fuzzy"]  # what link rebuilds from
    assert all(c[k] is pipeline.params["candidates"][k] for k in CONTEXT)
    assert c["acronyms"] == pipeline.params["candidates"]["acronyms"] > 0
    cp = CandidatesParams(top_k=c["top_k"], pool=c["pool"], fold=c["fold"], fuzzy=c["fuzzy"], acronyms=c["acronyms"],
                          **{k: c[k] for k in CONTEXT}, dense=c["dense"], dense_sim=c["dense_sim"], encoder=c["encoder"])
    kb = read_kb(pipeline.base / "prepared" / "kb.parquet")
    index = dense_index(kb, cp, c["encoder_spec"], {"kb_embeddings": pipeline.base / "candidates" / "kb_embeddings.parquet"})
    gen = Generator.build(kb, mentions, cp, index)
    test = mentions[mentions["split"] == "test"]
    assert record["candidates"]["hidden"] is not None  # the default ranker has its hidden layer
    got = propose(gen, Ranker.from_record(record["candidates"]), test["mention"].tolist(), test["text"].tolist(),
                  record["candidates"]["top_k"])
    table = pd.read_parquet(pipeline.base / "candidates" / "candidates.parquet").set_index("id")
    for mid, g in zip(test["id"], got, strict=True):
        assert g["cand_ids"] == list(table.at[mid, "cand_ids"])
        np.testing.assert_allclose(g["cand_scores"], table.at[mid, "cand_scores"], atol=1e-6)


def test_link_proposes_the_dense_candidates_of_the_stage_from_its_cached_embeddings(pipeline, tmp_path):
    """The candidates stage with the dense source and dense_sim on (into a folder of its own) and a
    candidate-aware run recorded with it: Linker.from_run reads the stage's KB embeddings, never
    re-embeds the KB (stale ones are refused), and gives the test mentions the stage's candidates."""
    from gemel.link.linker import propose_for
    from gemel.link.predict import DECODE_SETTINGS
    from gemel.search.dense import DenseError, read_kb_embeddings, write_kb_embeddings
    from stages import candidates

    more = [f"candidates.out={tmp_path}/candidates", "candidates.dense=3", "candidates.dense_sim=true",
            f"train.out={tmp_path}", "decode.candidates=constrained"]
    assert candidates.main(pipeline.argv(*more)) == 0
    run = tmp_path / LLM
    run.mkdir()
    shutil.copy(pipeline.run / "mapper.safetensors", run / "mapper.safetensors")
    record = write_run_record(pipeline.load_params(*more), run)
    assert record["candidates"]["dense"] == 3 and record["candidates"]["encoder_spec"] is not None
    assert record["candidates"]["weights"]["dense_sim"] != 0.0
    settings = {k: getattr(DecodeParams(candidates="constrained"), k) for k in DECODE_SETTINGS}
    (run / "decode_report.json").write_text(json.dumps({"settings": {**settings, "fusion_grid": [0.0]},
                                                        "fusion_weight": 0.0}))
    emb = tmp_path / "candidates" / "kb_embeddings.parquet"
    mtime = emb.stat().st_mtime_ns
    linker = Linker.from_run(run)
    assert linker.new.generator.dense_index is not None and emb.stat().st_mtime_ns == mtime
    test = pipeline.mentions[pipeline.mentions["split"] == "test"]
    got = propose_for(linker.new, test)
    table = pd.read_parquet(tmp_path / "candidates" / "candidates.parquet").set_index("id")
    assert any("dense" in s for mid in test["id"] for s in table.at[mid, "cand_sources"])
    for mid, g in zip(test["id"], got, strict=True):
        assert g["cand_ids"] == list(table.at[mid, "cand_ids"])
        assert g["cand_sources"] == list(table.at[mid, "cand_sources"])
        np.testing.assert_allclose(g["cand_scores"], table.at[mid, "cand_scores"], atol=1e-5)
    meta, vectors = read_kb_embeddings(emb)
    write_kb_embeddings(emb, read_kb(pipeline.base / "prepared" / "kb.parquet")["entity_id"].tolist(), vectors,
                        {**meta, "key": "0" * 64})
    with pytest.raises(DenseError, match="rerun the candidates stage"):
        Linker.from_run(run)


def test_demonstrations_of_new_inputs_come_from_the_runs_pool(pipeline):
    pool = read_pool(pipeline.base / "demos" / "pool.parquet")
    mentions = pipeline.mentions
    train = mentions[(mentions["split"] == "train") & ~mentions["is_nil"]]
    assert pool.ids == list(train["id"]) and pool.method == "simcse" and pool.vectors.shape == (len(train), 384)
    encoder = load_text_encoder("all-MiniLM-L6-v2", pipeline.params["text_encoders"])
    test = mentions[mentions["split"] == "test"].head(8)
    got = pool.retrieve(test, 4, encoder)
    stage = read_demos(pipeline.base / "demos" / "demos.parquet").set_index("id")
    text_of = dict(zip(train["id"], train["mention"], strict=True))  # retrieve.query: mention
    for mid, (ids, scores) in zip(test["id"], got, strict=True):
        want = list(stage.at[mid, "demo_ids"])[-4:]  # the 4 most similar, least similar first
        np.testing.assert_allclose(scores, stage.at[mid, "demo_scores"][-4:], atol=1e-5)
        # Exact ties (same surface form) may pick other pool items, never other texts or scores.
        assert [text_of[i] for i in ids] == [text_of[i] for i in want]
    # An input's demonstrations do not depend on its batch.
    assert pool.retrieve(test.tail(1), 4, encoder)[0][0] == got[-1][0]


@pytest.mark.parametrize("method", ["bm25", "random"])
def test_new_inputs_retrieve_like_the_stage_for_every_method(method):
    """A new input gets what the retrieve stage's routine and seed give it as the stage's only
    query: the demonstrations of the stage's first query when that one is not in the pool."""
    mentions = pd.DataFrame({"id": [f"m{i}" for i in range(13)], "split": ["test"] + ["train"] * 9 + ["test"] * 3,
                             "mention": ["Paris", "Paris", "Paris Hilton", "Jordan", "Michael Jordan", "Mercury",
                                         "Apple", "Apple Inc.", "Java", "Turkey", "Paris", "Jordan River", "Mercury"],
                             "text": ["x"] * 13, "is_nil": [False] * 13})
    pool = DemoPool.of(mentions, method, "mention", None, 0)
    test = mentions[mentions["split"] == "test"]
    got = pool.retrieve(test, 3)
    assert all(len(ids) == 3 == len(set(ids)) and set(ids) <= set(pool.ids) for ids, _ in got)
    stage = retrieve(mentions, method, 3)[0].set_index("id")
    assert got[0][0] == list(stage.at["m0", "demo_ids"])  # ties (two "Paris") broken by the stage's own draw
    np.testing.assert_allclose(got[0][1], stage.at["m0", "demo_scores"], atol=1e-6)
    if method == "bm25":
        for mid, (_, scores) in zip(test["id"], got, strict=True):
            np.testing.assert_allclose(scores, stage.at[mid, "demo_scores"], atol=1e-6)
    assert pool.retrieve(test.tail(1), 3)[0][0] == got[-1][0]  # in any batch, the same


def test_prompts_of_a_run_with_demonstrations_hold_them(pipeline, fresh, tmp_path):
    """Plumbing (the mapper was trained without demonstrations): a record that says
    model.num_demos: 2 gives new inputs two demonstrations from the pool, each with its image."""
    folder, records, _ = fresh
    run = tmp_path / LLM
    run.mkdir()
    shutil.copy(pipeline.run / "mapper.safetensors", run / "mapper.safetensors")
    write_run_record(pipeline.load_params(f"train.out={tmp_path}", "model.num_demos=2"), run)
    linker = Linker.from_run(run)
    items = [parse_input(r, str(i)) for i, r in enumerate(absolute(folder, records[:2]))]
    batch = linker.new_batch(items)
    assert len(batch.examples) == 2
    pool = read_pool(pipeline.base / "demos" / "pool.parquet")
    encoder = load_text_encoder("all-MiniLM-L6-v2", pipeline.params["text_encoders"])
    stage_k = pipeline.params["retrieve"]["top_k"]
    found = pool.retrieve(pd.DataFrame({"text": [r.text for r in items], "mention": [r.mention for r in items]}),
                          stage_k, encoder)
    for e, (ids, _) in zip(batch.examples, found, strict=True):
        assert len(e.prompt.images) == 3 and e.prompt.images[-1] >= len(linker.features)  # 2 demos + its own
        assert e.prompt == linker.prompts.build(e.id, linker.prompts.question(e.text, e.mention, e.image_row),
                                                ids, with_target=False)  # the stage's top_k, the 2 most similar
        assert 0 < e.prompt.query_start < len(e.prompt.ids)
    features = linker.features.copy()
    out = linker.link(absolute(folder, records[:2]))
    assert all(o["entities"] for o in out)
    np.testing.assert_array_equal(linker.features, features)  # linking leaves the run's parts as they were


# ------------------------------------------------------------------ the command line


def test_api_and_cli_give_identical_records(pipeline, linker, fresh, capsys):
    folder, records, _ = fresh
    chosen = [dict(r) for r in records[:10]]
    for r in chosen[::3]:
        del r["id"]  # those take their line number (and in the API their position)
    src = write_jsonl(folder / "new.jsonl", chosen)  # image paths relative to the input file
    dst = folder / "linked.jsonl"
    assert cli(pipeline.run, "--input", src, "--output", dst, "--top", 3) == 0
    api = linker.link(absolute(folder, chosen), top=3)
    assert read_jsonl(dst) == api
    assert [o["id"] for o in api][:4] == ["1", chosen[1]["id"], chosen[2]["id"], "4"]
    capsys.readouterr()
    r = absolute(folder, chosen[:1])[0]
    assert cli(pipeline.run, "--text", r["text"], "--mention", r["mention"], "--image", r["image"]) == 0
    assert json.loads(capsys.readouterr().out) == linker.link([{**r, "id": "1"}])[0]


def test_a_batch_whose_images_are_not_found_says_so(pipeline, fresh, tmp_path, capsys):
    """Image paths written relative to another folder than the input file's: every input links
    text-only, and the summary counts it and warns, naming the folder the paths were resolved from."""
    folder, records, _ = fresh
    src = write_jsonl(tmp_path / "new.jsonl", records[:4] + [{"text": "Mercury, again.", "mention": "Mercury"}])
    assert cli(pipeline.run, "--input", src, "--output", tmp_path / "out.jsonl") == 0
    err = capsys.readouterr().err
    assert "5 linked, 0 errors" in err and "images: 0 used, 4 missing, 0 unreadable, 1 none given" in err
    assert f"warning: 4 of 4 images not found: relative image paths are resolved from the input file's folder, " \
           f"{tmp_path.resolve()}" in err
    ok = write_jsonl(folder / "ok.jsonl", records[:4])  # the same paths, from the right folder
    assert cli(pipeline.run, "--input", ok, "--output", tmp_path / "ok_out.jsonl") == 0
    err = capsys.readouterr().err
    assert "images: 4 used, 0 missing, 0 unreadable, 0 none given" in err and "warning" not in err


def test_a_killed_batch_resumes_where_it_stopped(pipeline, fresh, tmp_path, capsys):
    folder, records, _ = fresh
    src = write_jsonl(tmp_path / "new.jsonl", absolute(folder, records[:12]))
    full = tmp_path / "full.jsonl"
    assert cli(pipeline.run, "--input", src, "--output", full) == 0
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:5]) + lines[5][:40])  # killed while writing line 6
    capsys.readouterr()
    assert cli(pipeline.run, "--input", src, "--output", part) == 0
    assert "7 linked, 0 errors, 5 already in" in capsys.readouterr().err
    # Each id once, in input order, and byte-identical: the cut batch (lines 1-8) is linked whole
    # again, with the same companions as in the uninterrupted run, and only its lines 6-8 written.
    assert part.read_bytes() == full.read_bytes()
    done = read_jsonl(part)
    capsys.readouterr()
    assert cli(pipeline.run, "--input", src, "--output", part) == 0  # nothing left to do
    assert "0 linked, 0 errors, 12 already in" in capsys.readouterr().err and read_jsonl(part) == done


BAD = [None,  # line 1: good
       '{"text": "broken', {"text": "Mercury, again."}, {"text": "Mercury, again.", "mention": ""},
       {"text": " ", "mention": "Mercury"},
       {"text": "A picture of the smallest planet.", "mention": "Mercury"},  # linked, flagged
       None]  # line 7: good


def bad_input(folder: Path, records: list[dict], path: Path) -> Path:
    good = iter(absolute(folder, records[:2]))
    return write_jsonl(path, [{k: v for k, v in next(good).items() if k != "id"} if o is None else o for o in BAD])


def test_bad_lines_are_skipped_with_their_error(pipeline, fresh, tmp_path, capsys):
    folder, records, _ = fresh
    src, dst = bad_input(folder, records, tmp_path / "new.jsonl"), tmp_path / "linked.jsonl"
    assert cli(pipeline.run, "--input", src, "--output", dst, "--on-error", "skip") == 0
    assert "3 linked, 4 errors" in capsys.readouterr().err
    out = read_jsonl(dst)
    assert [o["id"] for o in out] == [str(i) for i in range(1, 8)]
    errors = {o["id"]: o.get("error") for o in out}
    assert errors["2"].startswith("line 2: malformed JSON")
    assert errors["3"] == "line 3: missing field 'mention'"
    assert errors["4"] == "line 4: field 'mention' is empty"
    assert errors["5"] == "line 5: field 'text' is empty"
    assert all(errors[i] is None and out[int(i) - 1]["entities"] for i in ("1", "6", "7"))
    assert out[5]["mention_in_text"] is False and out[0]["mention_in_text"] is True
    assert not out[5]["image_used"] and out[5]["image_reason"] == "none given"


def test_stop_exits_2_after_writing_the_lines_before_the_bad_one(pipeline, fresh, tmp_path, capsys):
    folder, records, _ = fresh
    src, dst = bad_input(folder, records, tmp_path / "new.jsonl"), tmp_path / "linked.jsonl"
    assert cli(pipeline.run, "--input", src, "--output", dst, "--on-error", "stop") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gemel link: error: {src}: line 2: malformed JSON") and "rerun with the same --output" in err
    assert [o["id"] for o in read_jsonl(dst)] == ["1"]
    # Fixed, the rerun goes on from line 2 (line 1 is not linked again) and stops at line 3.
    lines = src.read_text().splitlines()
    src.write_text("\n".join([lines[0], json.dumps({"text": "Jordan today.", "mention": "Jordan"}), *lines[2:]]) + "\n")
    assert cli(pipeline.run, "--input", src, "--output", dst) == 2
    assert "line 3: missing field 'mention'" in capsys.readouterr().err
    assert [o["id"] for o in read_jsonl(dst)] == ["1", "2"]


def test_api_names_the_bad_record_and_field(linker):
    with pytest.raises(InputError, match=r"record 2: missing field 'mention'"):
        linker.link([{"text": "Mercury.", "mention": "Mercury"}, {"text": "x"}])
    with pytest.raises(InputError, match=r"record 1: field 'text' is empty"):
        linker.link([{"text": "", "mention": "Mercury"}])
    out = linker.link([{"text": "x", "mention": 3}], on_error="record")
    assert out[0]["error"] == "record 1: field 'mention': expected a string, got int" and out[0]["entities"] == []


# ------------------------------------------------------------------ a run that no longer matches


def gemel_command() -> list[str]:
    script = Path(sys.executable).parent / "gemel"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gemel.cli"]


def test_link_refuses_a_run_whose_kb_trie_or_encoder_changed(pipeline, tmp_path):
    """A copy of the run and its prepared tables, recorded by write_run_record, then changed."""
    shutil.copytree(pipeline.base / "prepared", tmp_path / "prepared")
    shutil.copytree(pipeline.base / "tries", tmp_path / "tries")
    run = tmp_path / "results" / LLM
    run.mkdir(parents=True)
    shutil.copy(pipeline.run / "mapper.safetensors", run / "mapper.safetensors")
    write_run_record(pipeline.load_params(f"prepare.out={tmp_path}/prepared", f"trie.out={tmp_path}/tries",
                                          f"train.out={tmp_path}/results"), run)
    record = read_run_record(run)
    assert check_run(record, run) == []
    kb = read_kb(tmp_path / "prepared" / "kb.parquet")
    kb.loc[0, "name"] = "Mercury (a planet)"
    write_parquet_atomic(kb, tmp_path / "prepared" / "kb.parquet")
    with open(tmp_path / "tries" / f"{LLM}.npz", "ab") as f:
        f.write(b"\0")
    diffs = check_run(record, run)
    assert [d.split(" ", 1)[0] for d in diffs] == ["kb", "trie"]
    assert all("when the run was trained" in d for d in diffs)
    with pytest.raises(RunError, match="kb .*kb.parquet: sha256 .* now, sha256 .* when the run was trained"):
        Linker.from_run(run)
    res = subprocess.run([*gemel_command(), "link", str(run), "--text", "Mercury.", "--mention", "Mercury"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"gemel link: error: run {run} no longer matches")
    assert "kb.parquet" in res.stderr and f"{LLM}.npz" in res.stderr
    # Other encoder weights than the run's (say, an upgraded package): named too.
    record["image_encoder"]["weights_sha256"] = "0" * 64
    (run / "run.json").write_text(json.dumps(record))
    assert check_run(record, run)[0].startswith(
        "image encoder efficientnet_lite0: weights efficientnet-lite0-57934424.pth sha256 579344248a93 now, "
        "efficientnet-lite0-57934424.pth sha256 000000000000 when the run was trained")


def test_missing_run_record_and_files_exit_2(tmp_path, capsys):
    assert cli(tmp_path, "--text", "Mercury.", "--mention", "Mercury") == 2
    assert "no run record" in capsys.readouterr().err
    assert cli(tmp_path / "nowhere", "--input", tmp_path / "x.jsonl", "--output", tmp_path / "y.jsonl") == 2
    assert "no such input file" in capsys.readouterr().err
