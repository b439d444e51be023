"""prepare.distractors: a KB grown with N entities whose names are drawn from its own words."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from gemel.data.distractors import PREFIX, distractors, grow
from gemel.data.raw import DataError
from tests.test_prepare_cli import run_prepare, write_params

NAMES = ["John Smith", "John Adams", "John Quincy Adams", "Mary Shelley", "River of Leeds", "Paris",
         "John Lennon", "Anna Karenina", "John Paul Jones", "Peter the Great"]


def kb_of(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"entity_id": [f"Q{i}" for i in range(len(names))], "name": names,
                         "description": [f"about {n}" for n in names]})


def test_names_are_new_distinct_and_made_of_the_kbs_words_in_place() -> None:
    kb = kb_of(NAMES)
    d = distractors(kb, 150, seed=0)
    assert list(d.columns) == ["entity_id", "name", "description"]
    assert d["entity_id"].tolist() == [f"{PREFIX}{i}" for i in range(150)]
    assert d["description"].isna().all()
    folded = d["name"].str.casefold()
    assert not folded.duplicated().any()
    assert not folded.isin(kb["name"].str.casefold()).any()
    multi = [n.split() for n in NAMES if len(n.split()) >= 2]
    firsts, lasts = {s[0] for s in multi}, {s[-1] for s in multi}
    middles = {w for s in multi for w in s[1:-1]}
    for name in d["name"]:
        words = name.split()
        assert 2 <= len(words) <= 3 and name == " ".join(words)
        assert words[0] in firsts and words[-1] in lasts and set(words[1:-1]) <= middles, name
    # Frequent words stay frequent: "John" opens 5 of the 9 multi-word names.
    assert Counter(n.split()[0] for n in d["name"]).most_common(1)[0][0] == "John"


def test_seeded() -> None:
    kb = kb_of(NAMES)
    pd.testing.assert_frame_equal(distractors(kb, 100, seed=3), distractors(kb, 100, seed=3))
    assert distractors(kb, 100, seed=3)["name"].tolist() != distractors(kb, 100, seed=4)["name"].tolist()


def test_case_is_ignored_and_running_out_of_names_is_an_error() -> None:
    # Folded, {anna, bob} x {smith, jones} has one name the KB lacks: "bob smith".
    kb = kb_of(["Anna Smith", "anna jones", "Bob Jones"])
    assert distractors(kb, 1, seed=0)["name"].str.casefold().tolist() == ["bob smith"]
    with pytest.raises(DataError, match="only 1 distinct names"):
        distractors(kb, 2, seed=0)


def test_grow_keeps_the_kb_first_and_checks_ids() -> None:
    kb = kb_of(NAMES)
    grown = grow(kb, 20, seed=0)
    pd.testing.assert_frame_equal(grown.iloc[:len(kb)], kb)
    assert len(grown) == len(kb) + 20 and grown["entity_id"].is_unique
    assert grow(kb, 0, seed=0) is kb
    with pytest.raises(DataError, match="distractor id prefix"):
        distractors(pd.concat([kb, kb_of(["A B"]).assign(entity_id=f"{PREFIX}7")]), 5, seed=0)
    with pytest.raises(DataError, match="no name of two words"):
        distractors(kb_of(["Paris", "Rome"]), 5, seed=0)


def test_prepare_stage_grows_the_kb(tmp_path: Path) -> None:
    from gemel.data.sample import generate_sample
    data = tmp_path / "sample"
    generate_sample(data, seed=0, train_per_entity=1, dev_per_entity=1, test_per_entity=1, image_size=16)
    section = {"input": str(data), "kb": str(data / "kb.json"), "images": str(data / "images"),
               "out": str(tmp_path / "prepared"), "distractors": 200}
    done = run_prepare(write_params(tmp_path, **section))
    assert done.returncode == 0, done.stderr
    kb = pd.read_parquet(tmp_path / "prepared" / "kb.parquet")
    own = len(json.loads((data / "kb.json").read_text(encoding="utf-8")))
    assert len(kb) == own + 200 and kb["entity_id"].iloc[own:].str.startswith(PREFIX).all()
    report = json.loads((tmp_path / "prepared" / "report.json").read_text(encoding="utf-8"))
    assert report["distractors"] == 200 and report["kb_entities"] == own + 200
    # Every gold entity is still the KB's own.
    mentions = pd.read_parquet(tmp_path / "prepared" / "mentions.parquet")
    assert not mentions["entity_id"].dropna().str.startswith(PREFIX).any()
