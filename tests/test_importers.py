"""Each importer on small hand-written fixtures, and every bad-input case."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemel.config import PrepareParams
from gemel.data.prepare import prepare
from gemel.data.raw import DataError


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
    assert out.kb["description"].isna().all() and out.report["kb_described"] == 0  # WikiDiverse has none


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


# ---------------------------------------------------------------- WikiMEL (MELBench + GHMFC)

def wikimel_fixture(tmp: Path) -> Path:
    """WikiMEL as published: one JSON object keyed by (string) record id for all splits, GHMFC's
    splits.json listing string ids (two with no record), qid2ne/qid2abs, images named by id."""
    d = tmp / "WikiMEL"
    (d / "images").mkdir(parents=True)
    (d / "images" / "101.jpg").write_bytes(b"x")
    rec = lambda rid, sentence, mentions, entities, answer: {  # noqa: E731
        "id": rid, "sentence": sentence, "imgPath": f"{rid}.jpg", "mentions": mentions, "entities": entities, "answer": answer}
    data = {
        "101": rec("101", "Obama met Merkel.", ["Obama", "Merkel"], ["Barack Obama", "Angela Merkel"], ["Q76", "Q567"]),
        "102": rec("102", "Merkel spoke.", ["Merkel"], ["Merkel"], ["Q567"]),  # a name that is not the KB's
        "103": rec("103", "Obama waved.", ["Obama"], ["Barack Obama"], ["Q76"]),
        "104": rec("104", "Paris at night.", ["Paris"], ["Paris"], ["Q90"]),
        "105": rec("105", "Bob smiled.", ["Bob"], ["nil"], ["nil"]),
        "106": rec("106", "Not in any split.", ["split"], ["Paris"], ["Q90"]),
        "107": rec("107", "Nor this one.", ["one"], ["Paris"], ["Q90"]),
    }
    (d / "Wikidata-MEL.json").write_text(json.dumps(data))
    (d / "splits.json").write_text(json.dumps({"train": ["101", "102", "999"], "dev": ["103"], "test": ["104", "105", "998"]}))
    (d / "qid2ne.json").write_text(json.dumps({"Q76": "Barack Obama", "Q567": "Angela Merkel", "Q90": "Paris"}))
    (d / "qid2abs.json").write_text(json.dumps({"Q90": "Capital of France."}))
    return d


def wikimel(d: Path, input: Path | None = None, **kw) -> PrepareParams:
    return PrepareParams(format="melbench", dataset="wikimel", input=str(input or d / "Wikidata-MEL.json"),
                         split_file=str(d / "splits.json"), **kw)


def test_wikimel_single_file_with_split_file(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    out = prepare(wikimel(d), root=Path("/"))
    m = out.mentions.set_index("id")
    assert list(m.index) == ["101-0", "101-1", "102-0", "103-0", "104-0", "105-0"]  # split-list order
    assert list(m["split"]) == ["train", "train", "train", "dev", "test", "test"]
    assert m.loc["101-1", "entity_id"] == "Q567" and m.loc["101-1", "start"] == 10
    assert m.loc["102-0", "entity_name"] == "Angela Merkel"  # the KB's name, not the record's "Merkel"
    assert bool(m.loc["105-0", "is_nil"]) and pd_isna(m.loc["105-0", "entity_id"])
    assert m.loc["101-0", "image"] == str(d / "images" / "101.jpg")
    assert m.loc["104-0", "image"] == str(d / "images" / "104.jpg")  # expected path, counted missing
    r = out.report
    assert r["records_read"] == {"train": 2, "dev": 1, "test": 2}
    assert r["split_ids_not_in_annotations"] == {"train": 1, "dev": 0, "test": 1}
    assert r["records_in_no_split"] == 2
    assert r["split_overlaps"] == {} and r["split_ids_repeated"] == 0
    assert r["gold_names_from_kb"] == 1 and r["kb_names_merged"] == 0
    assert r["dev_carved_from_train"] is False
    assert r["kb_entities"] == 3 and r["gold_not_in_kb"] == 0 and r["missing_image"] == 4
    # qid2abs.json beside qid2ne.json: the described entity carries its text, the others null
    desc = out.kb.set_index("entity_id")["description"]
    assert desc["Q90"] == "Capital of France." and desc[["Q76", "Q567"]].isna().all()
    assert r["kb_described"] == 1


@pytest.mark.parametrize("bad, found", [(42, "a JSON int"), (["a", "b"], "a JSON list of 2 item"),
                                        ({"x": 1}, "a JSON object with keys x")])
def test_a_description_that_is_not_text_names_file_entity_and_field(tmp_path: Path, bad, found: str) -> None:
    d = wikimel_fixture(tmp_path)
    (d / "qid2abs.json").write_text(json.dumps({"Q90": "Capital of France.", "Q76": bad}))
    with pytest.raises(DataError, match=rf"qid2abs\.json: entity Q76: field 'description': expected a string or null; "
                                        rf"found {found}"):
        prepare(wikimel(d), root=Path("/"))


def test_null_or_blank_descriptions_are_no_description(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    (d / "qid2abs.json").write_text(json.dumps({"Q90": "Capital of France.", "Q76": None, "Q567": "  "}))
    out = prepare(wikimel(d), root=Path("/"))
    assert out.kb.set_index("entity_id")["description"].notna().to_dict() == {"Q76": False, "Q567": False, "Q90": True}


def test_a_kb_table_without_descriptions_reads_as_null_descriptions(tmp_path: Path) -> None:
    """kb.parquet written before `description` existed: every reader of the KB gets the column, null."""
    import pyarrow as pa

    from gemel.data.tables import KB, read_kb, write_parquet_atomic

    old = pa.schema([KB.field("entity_id"), KB.field("name")])
    write_parquet_atomic(pd.DataFrame({"entity_id": ["Q1", "Q2"], "name": ["A", "B"]}), tmp_path / "old.parquet", old)
    kb = read_kb(tmp_path / "old.parquet")
    assert list(kb.columns) == KB.names and kb["description"].isna().all() and kb["name"].tolist() == ["A", "B"]
    write_parquet_atomic(pd.DataFrame({"entity_id": ["Q1"], "name": ["A"], "description": ["d"]}),
                         tmp_path / "new.parquet", KB)
    assert read_kb(tmp_path / "new.parquet")["description"].tolist() == ["d"]


def test_a_descriptions_file_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    (d / "qid2abs.json").write_text(json.dumps(["Capital of France."]))
    with pytest.raises(DataError, match=r"qid2abs\.json: expected a JSON object mapping entity id -> description; "
                                        r"found a JSON list"):
        prepare(wikimel(d), root=Path("/"))


def test_wikimel_folder_input_finds_the_annotation_file(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    by_file, by_folder = prepare(wikimel(d), root=Path("/")), prepare(wikimel(d, input=d), root=Path("/"))
    assert by_file.mentions.equals(by_folder.mentions) and by_file.report == by_folder.report


def test_wikimel_folder_with_two_annotation_files(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    (d / "extra.json").write_text("{}")
    with pytest.raises(DataError, match=r"WikiMEL: with datasets.<name>.split_file, format melbench expects one annotation JSON "
                                        r"here .*found Wikidata-MEL\.json, extra\.json"):
        prepare(wikimel(d, input=d), root=Path("/"))


def test_melbench_single_file_needs_split_file(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    with pytest.raises(DataError, match=r"Wikidata-MEL\.json: one annotation file for all splits .* needs datasets\.<name>\.split_file"):
        prepare(PrepareParams(format="melbench", dataset="w", input=str(d / "Wikidata-MEL.json")), root=Path("/"))


def test_melbench_folder_layout_expected_vs_found(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    with pytest.raises(DataError, match=r"WikiMEL: format melbench expects train\.json and test\.json here .*"
                                        r"found Wikidata-MEL\.json, qid2abs\.json, qid2ne\.json, splits\.json"):
        prepare(PrepareParams(format="melbench", dataset="w", input=str(d)), root=Path("/"))


def test_melbench_given_a_list_says_expected_and_found(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    (d / "Wikidata-MEL.json").write_text(json.dumps([{"id": "101", "sentence": "s"}]))
    with pytest.raises(DataError, match=r"Wikidata-MEL\.json: format melbench expects a JSON object keyed by record id, "
                                        r".*; found a JSON list of 1 item"):
        prepare(wikimel(d), root=Path("/"))


def test_wikimel_malformed_mention_names_file_record_field(tmp_path: Path) -> None:
    d = wikimel_fixture(tmp_path)
    data = json.loads((d / "Wikidata-MEL.json").read_text())
    data["101"]["mentions"][1] = ["Merkel"]
    (d / "Wikidata-MEL.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"Wikidata-MEL\.json: record 101: field 'mentions\[1\]': expected a string; found a JSON list"):
        prepare(wikimel(d), root=Path("/"))
    out = prepare(wikimel(d, invalid_records="skip"), root=Path("/"))
    assert "101-1" not in set(out.mentions["id"]) and "101-0" in set(out.mentions["id"])
    assert out.report["skipped"][0] == {"file": str(d / "Wikidata-MEL.json"), "record": "101", "field": "mentions[1]",
                                        "reason": "expected a string; found a JSON list of 1 item(s)"}


# ---------------------------------------------------------------- WikiDiverse (KGMEL)

def wikidiverse_fixture(tmp: Path) -> Path:
    """KGMEL's WikiDiverse as published: a JSON list with int ids, parallel mention/entity/answer
    lists, no KB, and ids_split_mappings.json nesting three datasets' splits (int ids, `val`,
    overlapping lists, one listed id with no record, one record in no split)."""
    d = tmp / "WikiDiverse"
    d.mkdir()
    rec = lambda rid, sentence, mention, entity, answer: {  # noqa: E731
        "id": rid, "sentence": sentence, "imgPath": f"wikinews/{rid}.jpg", "img-url": f"https://upload.example/{rid}.jpg",
        "mention": mention, "entity": entity, "answer": answer}
    data = [
        rec(0, "Paris in spring.", ["Paris"], ["Paris"], ["Q90"]),
        rec(1, "Hilton and Paris.", ["Hilton", "Paris"], ["Hilton Hotels", "Paris Hilton"], ["Q598884", "Q47899"]),
        rec(2, "Paris, France.", ["Paris"], ["Paris, France"], ["Q90"]),
        rec(3, "Paris again.", ["Paris"], ["Paris"], ["Q90"]),
        rec(4, "Nothing here.", ["thing", "stuff", "it", "that"], ["nil", "NIL", "", None], ["nil", "NIL", "", None]),
        rec(5, "Hilton Paris.", ["Hilton"], ["Hilton Worldwide"], ["Q598884"]),
        rec(6, "In no split.", ["split"], ["Split"], ["Q1"]),
        rec(7, "Everywhere.", ["where"], ["Where"], ["Q2"]),
    ]
    (d / "wikidiverse.json").write_text(json.dumps(data))
    (d / "ids_split_mappings.json").write_text(json.dumps({
        "WikiDiverse": {"train": [0, 2, 3, 7], "val": [3, 4, 7], "test": [1, 5, 99, 7]},
        "WikiMEL": {"train": ["a"], "val": [], "test": ["b"]},
        "RichpediaMEL": {"train": ["Q1"], "val": [], "test": []},
    }))
    return d


def wikidiverse(d: Path, **kw) -> PrepareParams:
    kw.setdefault("split_key", "WikiDiverse")
    return PrepareParams(format="kgmel_wikidiverse", dataset="wikidiverse", input=str(d / "wikidiverse.json"),
                         split_file=str(d / "ids_split_mappings.json"), **kw)


def test_wikidiverse_as_published(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    out = prepare(wikidiverse(d), root=Path("/"))
    m = out.mentions.set_index("id")
    # Overlaps go to the evaluation split: 3 train+val -> dev, 7 train+val+test -> test.
    assert list(m.index) == ["0-0", "2-0", "3-0", "4-0", "4-1", "4-2", "4-3", "1-0", "1-1", "5-0", "7-0"]
    assert list(m["split"]) == ["train"] * 2 + ["dev"] * 5 + ["test"] * 4
    assert m.loc["0-0", "image"] == str(d / "wikinews" / "0.jpg")
    assert all(m.loc[f"4-{i}", "is_nil"] for i in range(4)) and m.loc[[f"4-{i}" for i in range(4)], "entity_id"].isna().all()
    r = out.report
    assert r["records_read"] == {"train": 2, "dev": 2, "test": 3}
    assert r["split_overlaps"] == {"train+dev": 1, "train+dev+test": 1}
    assert r["split_ids_not_in_annotations"] == {"train": 0, "dev": 0, "test": 1}
    assert r["records_in_no_split"] == 1  # record 6
    assert r["dev_carved_from_train"] is False and r["nil"] == 4


def test_wikidiverse_overlap_policy(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    (d / "ids_split_mappings.json").write_text(json.dumps({"WikiDiverse": {
        "train": [0, 1, 2, 3, 5], "val": [1, 2], "test": [2, 3, 5, 5]}}))
    out = prepare(wikidiverse(d), root=Path("/"))
    split_of = dict(zip(out.mentions["id"].str.split("-").str[0], out.mentions["split"], strict=True))
    assert split_of == {"0": "train", "1": "dev", "2": "test", "3": "test", "5": "test"}
    assert out.report["split_overlaps"] == {"train+dev": 1, "train+dev+test": 1, "train+test": 2}
    assert out.report["split_ids_repeated"] == 1
    assert out.report["records_read"] == {"train": 1, "dev": 1, "test": 3}
    assert out.report["records_in_no_split"] == 3  # 4, 6, 7


def test_wikidiverse_kb_from_data_merges_names(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    out = prepare(wikidiverse(d), root=Path("/"))
    kb = out.kb.set_index("entity_id")["name"].to_dict()
    # Q90: "Paris" x2 (records 0, 3) beats "Paris, France" x1; Q598884: a tie, the first seen wins
    # (record 1, in test, is seen before record 5 in the test list's order).
    assert kb == {"Q90": "Paris", "Q598884": "Hilton Hotels", "Q47899": "Paris Hilton", "Q2": "Where"}
    assert out.report["kb_names_merged"] == 2
    m = out.mentions.set_index("id")
    assert m.loc["2-0", "entity_name"] == "Paris" and m.loc["5-0", "entity_name"] == "Hilton Hotels"
    assert out.report["gold_names_from_kb"] == 2 and out.report["gold_not_in_kb"] == 0
    named = out.mentions[~out.mentions["is_nil"]]
    assert (named["entity_name"] == named["entity_id"].map(kb)).all()  # exact match is consistent


def test_wikidiverse_split_key_missing_lists_names(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    with pytest.raises(DataError, match=r"ids_split_mappings\.json nests splits under dataset names "
                                        r"WikiDiverse, WikiMEL, RichpediaMEL: set datasets\.<name>\.split_key$"):
        prepare(wikidiverse(d, split_key=None), root=Path("/"))
    with pytest.raises(DataError, match=r"ids_split_mappings\.json nests splits under dataset names WikiDiverse, "
                                        r"WikiMEL, RichpediaMEL: datasets\.<name>\.split_key 'Wikidiverse' is not one of them"):
        prepare(wikidiverse(d, split_key="Wikidiverse"), root=Path("/"))


def test_split_key_picks_another_datasets_entry(tmp_path: Path) -> None:
    # KGMEL's file also holds WikiMEL's splits (string ids): usable with WikiMEL's annotations.
    d = wikimel_fixture(tmp_path)
    (d / "ids_split_mappings.json").write_text(json.dumps({
        "WikiDiverse": {"train": [0], "val": [], "test": [1]},
        "WikiMEL": {"train": ["101"], "val": ["102"], "test": ["104"]}}))
    p = PrepareParams(format="melbench", dataset="w", input=str(d / "Wikidata-MEL.json"),
                      split_file=str(d / "ids_split_mappings.json"), split_key="WikiMEL")
    out = prepare(p, root=Path("/"))
    assert list(out.mentions["id"]) == ["101-0", "101-1", "102-0", "104-0"]
    assert list(out.mentions["split"]) == ["train", "train", "dev", "test"]


def test_kgmel_given_an_object_says_expected_and_found(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    (d / "wikidiverse.json").write_text(json.dumps({"0": {"sentence": "s"}}))
    with pytest.raises(DataError, match=r"wikidiverse\.json: format kgmel_wikidiverse expects a JSON list of records, "
                                        r"\[\{\"id\", \"sentence\", \"mention\": \[\.\.\.\].*; found a JSON object with keys 0"):
        prepare(wikidiverse(d), root=Path("/"))


@pytest.mark.parametrize("split_file, message", [
    ([[0, 1]], r"expected a JSON object \(split -> \[record ids\], dataset name -> \{split -> \[record ids\]\}, or "
               r"record id -> split\); found a JSON list of 1 item"),
    ({"training": [0], "test": [1]}, r"unknown split name 'training': expected train, dev \(or val, valid\) and test; "
                                     r"found training, test"),
    ({"train": [0], "val": [1], "dev": [2]}, r"two lists name the dev split; found train, val, dev"),
    ({"train": [0, [1]], "test": []}, r"train\[1\]: expected a record id \(a string or an integer\); found a JSON list"),
    ({"WikiDiverse": {"train": 5}}, r"\[WikiDiverse\]: expected split -> \[record ids\]; found a JSON object with keys train"),
    ({"train": [0], "test": "x"}, r"found one whose values are list, str"),
])
def test_split_file_layout_errors(tmp_path: Path, split_file: object, message: str) -> None:
    d = wikidiverse_fixture(tmp_path)
    (d / "ids_split_mappings.json").write_text(json.dumps(split_file))
    with pytest.raises(DataError, match=r"ids_split_mappings\.json.*" + message):
        prepare(wikidiverse(d), root=Path("/"))


@pytest.mark.parametrize("change, message", [
    (lambda r: r[1]["mention"].__setitem__(1, 5), r"record 1: field 'mention\[1\]': expected a string; found a JSON int \(5\)"),
    (lambda r: r[1]["answer"].__setitem__(0, ["Q1"]), r"record 1: field 'answer\[0\]': expected an entity id or a NIL marker"),
    (lambda r: r[1]["entity"].pop(), r"record 1: field 'mention': mention, entity and answer differ in length \(2, 1, 2\)"),
    (lambda r: r[0].pop("sentence"), r"record 0: field 'sentence': missing required field"),
    (lambda r: r[0].pop("entity"), r"record 0: field 'entity': missing required field \(the record has id, sentence, imgPath"),
    (lambda r: r[2].pop("id"), r"record #2: field 'id': missing required field"),
    (lambda r: r[2].__setitem__("id", 0), r"record 0: field 'id': duplicate record id \(first at list position 0\)"),
])
def test_wikidiverse_bad_record_names_file_record_field(tmp_path: Path, change, message: str) -> None:
    d = wikidiverse_fixture(tmp_path)
    records = json.loads((d / "wikidiverse.json").read_text())
    change(records)
    (d / "wikidiverse.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"wikidiverse\.json: " + message):
        prepare(wikidiverse(d), root=Path("/"))
    assert prepare(wikidiverse(d, invalid_records="skip"), root=Path("/")).report["skipped_records"] == 1


def test_kgmel_needs_split_file(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    with pytest.raises(DataError, match=r"wikidiverse\.json: format kgmel_wikidiverse needs datasets\.<name>\.split_file"):
        prepare(PrepareParams(format="kgmel_wikidiverse", dataset="w", input=str(d / "wikidiverse.json")), root=Path("/"))


# ---------------------------------------------------------------- subset runs

def test_limit_keeps_first_mentions_in_order_and_is_deterministic(tmp_path: Path) -> None:
    d = wikidiverse_fixture(tmp_path)
    full = prepare(wikidiverse(d), root=Path("/"))
    limit = {"train": 1, "dev": 3, "test": None}
    a, b = (prepare(wikidiverse(d, limit=limit), root=Path("/")) for _ in range(2))
    assert a.mentions.equals(b.mentions) and a.kb.equals(b.kb) and a.report == b.report
    for split, n in (("train", 1), ("dev", 3), ("test", 4)):
        got = list(a.mentions.loc[a.mentions["split"] == split, "id"])
        assert got == list(full.mentions.loc[full.mentions["split"] == split, "id"])[:n]
    assert a.report["limit"] == limit and a.report["mentions_before_limit"] == {"train": 2, "dev": 5, "test": 4}
    assert {s: v["mentions"] for s, v in a.report["splits"].items()} == {"train": 1, "dev": 3, "test": 4}
    assert a.kb.equals(full.kb)  # the KB is the dataset's, not the subset's
    assert full.report["limit"] is None


def test_limit_applies_after_the_carved_dev_split(tmp_path: Path) -> None:
    d = melbench_fixture(tmp_path, lists=False)
    full = prepare(params(d, "melbench", dev_fraction=0.25), root=Path("/"))
    sub = prepare(params(d, "melbench", dev_fraction=0.25, limit={"train": 4, "dev": 2}), root=Path("/"))
    for split, n in (("train", 4), ("dev", 2), ("test", 1)):
        assert list(sub.mentions.loc[sub.mentions["split"] == split, "id"]) == \
            list(full.mentions.loc[full.mentions["split"] == split, "id"])[:n]
    assert sub.report["mentions_before_limit"] == {"train": 15, "dev": 5, "test": 1}


@pytest.mark.parametrize("limit, message", [
    ({"val": 3}, r"prepare\.limit: unknown split 'val'"),
    ({"train": 0}, r"prepare\.limit\.train: expected an integer >= 1 or null; found 0"),
    ([5], r"prepare\.limit: expected null or a mapping"),
])
def test_bad_limit(tmp_path: Path, limit: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare(params(melbench_fixture(tmp_path, lists=False), "melbench", limit=limit), root=Path("/"))


# ---------------------------------------------------------------- NIL entities with an answer id

@pytest.mark.parametrize("with_kb", [False, True])
def test_kgmel_nil_entity_with_an_answer_id_is_nil(tmp_path: Path, with_kb: bool) -> None:
    """WikiDiverse marks out-of-KB mentions in `entity`; such a mention is NIL even when its
    `answer` holds an id the KB knows (from the data, or from datasets.<name>.kb), so it is left
    out of accuracy rather than scored against that id's name."""
    from gemel.evaluate.metrics import compute_metrics

    d = wikidiverse_fixture(tmp_path)
    records = json.loads((d / "wikidiverse.json").read_text())
    # record 0: Paris -> Q90 (linked); record 3's "Paris" mention: entity NIL, answer Q90
    records[3]["entity"], records[3]["answer"] = ["nil"], ["Q90"]
    records[2]["entity"], records[2]["answer"] = ["NIL"], ["Q90"]
    (d / "wikidiverse.json").write_text(json.dumps(records))
    kw = {}
    if with_kb:
        (d / "kb.json").write_text(json.dumps({"Q90": "Paris", "Q598884": "Hilton Hotels", "Q47899": "Paris Hilton",
                                               "Q2": "Where"}))
        kw["kb"] = str(d / "kb.json")
    out = prepare(wikidiverse(d, **kw), root=Path("/"))
    m = out.mentions.set_index("id")
    for mid in ("2-0", "3-0"):
        assert bool(m.loc[mid, "is_nil"]), mid
        assert pd_isna(m.loc[mid, "entity_id"]) and pd_isna(m.loc[mid, "entity_name"])
    assert not m.loc["0-0", "is_nil"] and m.loc["0-0", "entity_id"] == "Q90"
    assert out.report["nil"] == 4 + 2
    # Scored as the evaluate stage scores: a NIL mention is removed, whatever was predicted for it.
    pred = pd.DataFrame({"id": m.index, "split": m["split"], "mention": m["mention"],
                         "gold_id": m["entity_id"], "gold_name": m["entity_name"], "is_nil": m["is_nil"],
                         "has_image": True, "pred_name": m["entity_name"].fillna("Paris"), "pred_id": None,
                         "beams": [[] for _ in m.index], "beam_scores": [[] for _ in m.index]})
    metrics = compute_metrics(pred, set(out.kb["name"]), [1])
    assert metrics["nil_removed"] == 6 and metrics["evaluated"] == len(m) - 6 and metrics["accuracy"] == 1.0


def test_melbench_nil_name_with_a_known_answer_stays_linked(tmp_path: Path) -> None:
    """MELBench's rule differs: a NIL entity name is NIL only when the KB does not know the answer."""
    d = melbench_fixture(tmp_path, lists=True)
    train = json.loads((d / "train.json").read_text())
    train["r1"]["entities"] = ["nil", "nil"]
    train["r1"]["answer"] = ["Q76", "Q999"]  # Q76 in qid2ne.json, Q999 not
    (d / "train.json").write_text(json.dumps(train))
    m = prepare(params(d, "melbench", dev_fraction=0.0), root=Path("/")).mentions.set_index("id")
    assert not m.loc["r1-0", "is_nil"] and m.loc["r1-0", "entity_id"] == "Q76"
    assert m.loc["r1-0", "entity_name"] == "Barack Obama"  # the KB's name
    assert bool(m.loc["r1-1", "is_nil"])


# ---------------------------------------------------------------- the carved dev split

def carve_fixture(d: Path, order: list[int], fmt: str) -> Path:
    """24 train records (every third with two mentions) and one test record, train written in `order`."""
    d.mkdir()

    def record(i: int) -> dict:
        two = i % 3 == 0
        return {"sentence": f"Obama and Merkel {i}.", "mentions": ["Obama", "Merkel"] if two else ["Obama"],
                "entities": ["Barack Obama", "Angela Merkel"] if two else ["Barack Obama"],
                "answer": ["Q76", "Q567"] if two else ["Q76"]}

    if fmt == "melbench":
        (d / "train.json").write_text(json.dumps({f"r{i:02d}": record(i) for i in order}))
        (d / "test.json").write_text(json.dumps({"t1": {"sentence": "Merkel smiled.", "mentions": "Merkel",
                                                        "entities": "Angela Merkel", "answer": "Q567"}}))
        (d / "qid2ne.json").write_text(json.dumps({"Q76": "Barack Obama", "Q567": "Angela Merkel"}))
    else:  # gemel_jsonl, one mention a line; ids given (without them a record's id is its line number)
        write_jsonl(d / "train.json", [{"id": f"r{i:02d}", "text": f"Obama spoke {i}.", "mention": "Obama",
                                        "target": "Barack Obama", "golden": "Q76"} for i in order])
        write_jsonl(d / "test.json", [{"id": "t1", "text": "Merkel smiled.", "mention": "Merkel",
                                       "target": "Angela Merkel"}])
    return d


@pytest.mark.parametrize("fmt", ["melbench", "gemel_jsonl"])
def test_carved_dev_split_ignores_record_order(tmp_path: Path, fmt: str) -> None:
    """The same records in another file order give the same dev set (records are sorted by id
    before the seeded draw), the seed and the fraction change it as they should, and a record's
    mentions stay together."""
    order = list(range(24))
    shuffled = [order[i] for i in np.random.default_rng(5).permutation(24)]
    runs = iter(range(100))

    def dev(o: list[int], fraction: float = 0.25, seed: int = 0) -> set[str]:
        d = carve_fixture(tmp_path / f"run{next(runs)}", o, fmt)
        m = prepare(params(d, fmt, dev_fraction=fraction, seed=seed), root=Path("/")).mentions
        return set(m.loc[m["split"] == "dev", "id"])

    first = dev(order)
    assert dev(shuffled) == first and dev(order[::-1]) == first
    records = {i.split("-")[0] for i in first}
    assert len(records) == 6  # round(0.25 * 24) records
    if fmt == "melbench":  # both mentions of a two-mention record go together
        assert all((f"{r}-1" in first) == (int(r[1:]) % 3 == 0) for r in records)
    assert dev(shuffled, seed=1) != first and dev(shuffled, seed=1) == dev(order, seed=1)
    assert len({i.split("-")[0] for i in dev(order, fraction=0.5)}) == 12
