"""RichpediaMEL (MELBench layout) imported whole from the shared copy: counts, the KB, the
missing-image policy, the one bad record, and the seeded dev split carved from train."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from gemel.config import PrepareParams
from gemel.data.prepare import Prepared, prepare
from gemel.data.raw import DataError

TRAIN_RECORDS, TEST_RECORDS, KB_ENTITIES, PUBLISHED_IMAGES = 14_244, 3_561, 17_805, 9


def params(path: Path, **kw) -> PrepareParams:
    kw.setdefault("invalid_records", "skip")
    return PrepareParams(format="melbench", dataset="richpedia", input=str(path), **kw)


@cache
def prepared(path: Path, seed: int = 0, dev_fraction: float = 0.1) -> Prepared:
    return prepare(params(path, seed=seed, dev_fraction=dev_fraction), root=Path("/"))


def ids(p: Prepared, split: str) -> set[str]:
    return set(p.mentions.loc[p.mentions["split"] == split, "id"])


def test_counts_and_kb(richpedia: Path) -> None:
    p = prepared(richpedia)
    assert p.report["records_read"] == {"train": TRAIN_RECORDS, "test": TEST_RECORDS}
    assert p.report["kb_entities"] == KB_ENTITIES and len(p.kb) == KB_ENTITIES
    assert p.kb["entity_id"].is_unique
    assert p.report["gold_not_in_kb"] == 0 and p.report["nil"] == 0
    # One record per mention, except the one train record whose mention is empty (below).
    assert len(p.mentions) == TRAIN_RECORDS + TEST_RECORDS - 1
    assert p.report["skipped_records"] == 1


def test_the_one_bad_record_is_named(richpedia: Path) -> None:
    # Q79179 ("Frida Uhl") has the mention "\n\n"; the default policy stops there.
    with pytest.raises(DataError, match=r"train\.json: record Q79179: field 'mentions': empty mention"):
        prepare(params(richpedia, invalid_records="error"), root=Path("/"))
    assert prepared(richpedia).report["skipped"][0]["record"] == "Q79179"


def test_published_images_present_rest_counted_missing(richpedia: Path) -> None:
    p = prepared(richpedia)
    present = p.mentions["image"].map(lambda s: Path(s).is_file())
    assert int(present.sum()) == PUBLISHED_IMAGES
    assert p.report["missing_image"] == len(p.mentions) - PUBLISHED_IMAGES
    assert sum(v["missing_image"] for v in p.report["splits"].values()) == p.report["missing_image"]
    # Every record keeps its expected image path, even when the file is absent.
    assert p.mentions["image"].notna().all()


def test_dev_split_is_seeded_and_disjoint(richpedia: Path) -> None:
    a, again, other = prepared(richpedia, 0), prepare(params(richpedia, seed=0), root=Path("/")), prepared(richpedia, 1)
    assert a.report["dev_carved_from_train"] is True
    assert ids(a, "dev") == ids(again, "dev")
    assert ids(a, "dev") != ids(other, "dev")
    kept_train = TRAIN_RECORDS - 1
    assert abs(len(ids(a, "dev")) - 0.1 * kept_train) <= 1
    assert len(ids(a, "train")) + len(ids(a, "dev")) == kept_train
    splits = [ids(a, s) for s in ("train", "dev", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    # The test split is the published one, whatever the seed.
    test_keys = set(json.loads((richpedia / "test.json").read_text(encoding="utf-8")))
    assert ids(a, "test") == ids(other, "test") == test_keys
