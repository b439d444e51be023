"""Each importer on small hand-written fixtures, and every bad-input case."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemel.config import PrepareParams
from gemel.data.importers import DataError
from gemel.data.prepare import prepare


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def gemel_fixture(tmp: Path) -> Path:
    (tmp / "images").mkdir()
    (tmp / "images" / "a.jpg").write_bytes(b"x")
    write_jsonl(tmp / "train.json", [
        {"text": "Mercury rose at dawn.", "mention": "Mercury", "img_name": "a.jpg", "target": "Mercury (planet)", "golden": "Q308"},
        {"text": "Jordan scored 40.", "mention": "Jordan", "img_name": "missing.jpg", "target": "Michael Jordan", "golden": "Q41421"},
    ])
    write_jsonl(tmp / "dev.json", [
        {"text": "Apple fell.", "mention": "Apple", "img_url": "http://x.org/imgs/b.png", "target": "Apple", "golden": "Q89"},
    ])
    write_jsonl(tmp / "test.json", [
        {"text": "Some Jordan guy.", "mention": "Jordan", "img_name": "a.jpg", "target": "NIL", "golden": "NIL"},
        {"text": "Visit Jordan.", "mention": "Jordan", "target": "Jordan", "golden": "Q810"},
    ])
    return tmp


def params(tmp: Path, fmt: str, **kw) -> PrepareParams:
    return PrepareParams(format=fmt, dataset="fx", input=str(tmp), **kw)


def test_gemel_jsonl(tmp_path: Path) -> None:
    d = gemel_fixture(tmp_path)
    (d / "kb.json").write_text(json.dumps({"Q308": "Mercury (planet)", "Q41421": "Michael Jordan", "Q89": "Apple", "Q1": "Other"}))
    out = prepare(params(d, "gemel_jsonl", kb=str(d / "kb.json")), root=Path("/"))
    m = out.mentions.set_index("id")
    assert list(out.mentions["split"]) == ["train", "train", "dev", "test", "test"]
    assert m.loc["train-1", "start"] == 0 and m.loc["train-1", "end"] == 7
    assert m.loc["train-1", "image"] == str(d / "images" / "a.jpg")
    assert m.loc["dev-1", "image"] == str(d / "images" / "b.png")  # URL -> file name
    assert pd_isna(m.loc["test-2", "image"])
    assert bool(m.loc["test-1", "is_nil"]) and pd_isna(m.loc["test-1", "entity_id"])
    assert m.loc["train-2", "entity_id"] == "Q41421"
    r = out.report
    assert r["splits"]["test"]["nil"] == 1
    assert r["missing_image"] == 3  # missing.jpg, b.png absent, no image
    assert r["gold_not_in_kb"] == 1  # Q810 Jordan is not in kb.json
    assert r["dev_carved_from_train"] is False


def pd_isna(v) -> bool:
    import pandas as pd
    return bool(pd.isna(v))


def test_gemel_jsonl_without_kb_uses_names(tmp_path: Path) -> None:
    out = prepare(params(gemel_fixture(tmp_path), "gemel_jsonl"), root=Path("/"))
    assert set(out.kb["name"]) == {"Mercury (planet)", "Michael Jordan", "Apple", "Jordan"}
    assert out.report["gold_not_in_kb"] == 0


def melbench_fixture(tmp: Path, lists: bool) -> Path:
    (tmp / "images").mkdir()
    (tmp / "images" / "r1.jpg").write_bytes(b"x")
    if lists:
        train = {"r1": {"sentence": "Obama met Merkel.", "mentions": ["Obama", "Merkel"], "entities": ["Barack Obama", "Angela Merkel"], "answer": ["Q76", "Q567"]},
                 "r2": {"sentence": "Bob waved.", "mentions": ["Bob"], "entities": ["Bob"], "answer": ["nil"]}}
    else:
        train = {f"r{i}": {"id": f"r{i}", "sentence": f"Obama spoke {i}.", "mentions": "Obama", "entities": "Barack Obama", "answer": "Q76"} for i in range(1, 21)}
    test = {"t1": {"sentence": "Merkel smiled.", "mentions": "Merkel", "entities": "Angela Merkel", "answer": "Q567"}}
    (tmp / "train.json").write_text(json.dumps(train))
    (tmp / "test.json").write_text(json.dumps(test))
    (tmp / "qid2ne.json").write_text(json.dumps({"Q76": "Barack Obama", "Q567": "Angela Merkel"}))
    (tmp / "qid2abs.json").write_text(json.dumps({"Q76": "Occupation: politician."}))
    return tmp


def test_melbench_scalar_carves_dev(tmp_path: Path) -> None:
    d = melbench_fixture(tmp_path, lists=False)
    out = prepare(params(d, "melbench", dev_fraction=0.25), root=Path("/"))
    counts = out.mentions["split"].value_counts().to_dict()
    assert counts == {"train": 15, "dev": 5, "test": 1}
    assert out.report["records_read"] == {"train": 20, "test": 1}
    m = out.mentions.set_index("id")
    assert m.loc["r1", "image"] == str(d / "images" / "r1.jpg")
    assert m.loc["r2", "image"] == str(d / "images" / "r2.jpg")  # expected path, counted missing
    assert out.report["missing_image"] == 20
    assert out.kb.set_index("entity_id").loc["Q76", "description"] == "Occupation: politician."


def test_melbench_lists(tmp_path: Path) -> None:
    out = prepare(params(melbench_fixture(tmp_path, lists=True), "melbench", dev_fraction=0.0), root=Path("/"))
    m = out.mentions.set_index("id")
    assert list(m.index) == ["r1-0", "r1-1", "r2-0", "t1"]
    assert m.loc["r1-1", "entity_name"] == "Angela Merkel" and m.loc["r1-1", "start"] == 10
    assert bool(m.loc["r2-0", "is_nil"])


def test_kgmel_wikidiverse(tmp_path: Path) -> None:
    data = [
        {"id": "w1", "sentence": "Paris in spring.", "imgPath": "img/w1.jpg", "mention": ["Paris"], "entity": ["Paris"], "answer": ["Q90"]},
        {"id": "w2", "sentence": "Hilton and Paris.", "imgPath": "img/w2.jpg", "mention": ["Hilton", "Paris"], "entity": ["Hilton Hotels", "Paris Hilton"], "answer": ["Q598884", "Q47899"]},
        {"id": "w3", "sentence": "Nothing here.", "imgPath": "", "mention": ["thing"], "entity": ["nil"], "answer": ["nil"]},
    ]
    (tmp_path / "wd.json").write_text(json.dumps(data))
    (tmp_path / "split.json").write_text(json.dumps({"train": ["w1"], "dev": ["w2"], "test": ["w3"]}))
    out = prepare(params(tmp_path / "wd.json", "kgmel_wikidiverse", split_file=str(tmp_path / "split.json")), root=Path("/"))
    m = out.mentions.set_index("id")
    assert list(m.index) == ["w1-0", "w2-0", "w2-1", "w3-0"]
    assert m.loc["w2-1", "split"] == "dev" and m.loc["w2-1", "entity_id"] == "Q47899"
    assert m.loc["w1-0", "image"] == str(tmp_path / "img" / "w1.jpg")
    assert bool(m.loc["w3-0", "is_nil"])
    assert set(out.kb["entity_id"]) == {"Q90", "Q598884", "Q47899"}


# ---------------------------------------------------------------- bad input

def test_malformed_json_lines_names_file_and_line(tmp_path: Path) -> None:
    d = gemel_fixture(tmp_path)
    with open(d / "test.json", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"test\.json: line 3: malformed JSON"):
        prepare(params(d, "gemel_jsonl"), root=Path("/"))


def test_malformed_json_object_names_file(tmp_path: Path) -> None:
    d = melbench_fixture(tmp_path, lists=False)
    (d / "test.json").write_text('{"t1": {"sentence": ')
    with pytest.raises(DataError, match=r"test\.json: malformed JSON at line 1"):
        prepare(params(d, "melbench"), root=Path("/"))


def test_missing_field_names_record_and_field(tmp_path: Path) -> None:
    d = melbench_fixture(tmp_path, lists=False)
    test = json.loads((d / "test.json").read_text())
    del test["t1"]["entities"]
    (d / "test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"test\.json: record t1: field 'entities': missing required field"):
        prepare(params(d, "melbench"), root=Path("/"))


def test_empty_mention(tmp_path: Path) -> None:
    d = gemel_fixture(tmp_path)
    write_jsonl(d / "dev.json", [{"id": "x9", "text": "t", "mention": "  ", "target": "Apple"}])
    with pytest.raises(DataError, match=r"dev\.json: record x9: field 'mention': empty"):
        prepare(params(d, "gemel_jsonl"), root=Path("/"))


def test_duplicate_ids(tmp_path: Path) -> None:
    d = gemel_fixture(tmp_path)
    write_jsonl(d / "dev.json", [{"id": "train-1", "text": "t", "mention": "t", "target": "Apple"}])
    with pytest.raises(DataError, match=r"dev\.json: record train-1: field 'id': duplicate record id \(first seen in .*train\.json\)"):
        prepare(params(d, "gemel_jsonl"), root=Path("/"))


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset format 'csv' \(known: gemel_jsonl, melbench, kgmel_wikidiverse\)"):
        prepare(params(tmp_path, "csv"), root=Path("/"))


def test_skip_policy_counts_bad_records(tmp_path: Path) -> None:
    d = gemel_fixture(tmp_path)
    write_jsonl(d / "dev.json", [{"id": "x9", "text": "t", "mention": "", "target": "Apple"},
                                 {"id": "x10", "text": "Apple pie", "mention": "Apple", "target": "Apple"}])
    out = prepare(params(d, "gemel_jsonl", invalid_records="skip"), root=Path("/"))
    assert "x9" not in set(out.mentions["id"]) and "x10" in set(out.mentions["id"])
    assert out.report["skipped_records"] == 1
    assert out.report["skipped"][0]["record"] == "x9" and out.report["skipped"][0]["field"] == "mention"
