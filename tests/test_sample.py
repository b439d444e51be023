"""The embedded sample: deterministic, ambiguous by construction, the sizes params.yaml promises,
and importable by prepare with nothing missing."""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from gemel.config import PrepareParams, SampleParams
from gemel.data.prepare import prepare
from gemel.data.sample import generate_sample

DEFAULTS = SampleParams()
SPLITS = ("train", "dev", "test")


def generate(out: Path, seed: int = DEFAULTS.seed, **kw) -> dict:
    args = dict(train_per_entity=DEFAULTS.train_per_entity, dev_per_entity=DEFAULTS.dev_per_entity,
                test_per_entity=DEFAULTS.test_per_entity, image_size=DEFAULTS.image_size)
    args.update(kw)
    return generate_sample(out, seed=seed, **args)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "sample"
    generate(out)
    return out


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_split(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.json").read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_identical_bytes(sample: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again")
    first, second = file_bytes(sample), file_bytes(tmp_path / "again")
    assert set(first) == set(second)
    assert {"train.json", "dev.json", "test.json", "kb.json"} <= set(first)
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_another_seed_changes_images_and_texts(sample: Path, tmp_path: Path) -> None:
    generate(tmp_path / "other", seed=DEFAULTS.seed + 1)
    first, other = file_bytes(sample), file_bytes(tmp_path / "other")
    pngs = [n for n in first if n.endswith(".png")]
    assert sum(first[n] != other.get(n) for n in pngs) == len(pngs)
    assert first["train.json"] != other["train.json"]
    assert first["kb.json"] == other["kb.json"]  # the KB is fixed; only the examples are random


def test_sizes_near_targets(sample: Path) -> None:
    counts = {s: len(read_split(sample, s)) for s in SPLITS}
    assert 120 <= counts["train"] <= 180
    assert 25 <= counts["dev"] <= 45
    assert 50 <= counts["test"] <= 80
    gold = {r["golden"] for s in SPLITS for r in read_split(sample, s)}
    assert 30 <= len(gold) <= 50
    kb = json.loads((sample / "kb.json").read_text(encoding="utf-8"))
    assert 10 <= len(set(kb) - gold) <= 20  # distractors no mention links to
    assert len(list((sample / "images").glob("*.png"))) == sum(counts.values())


def test_records_are_gemel_json_lines(sample: Path) -> None:
    kb = json.loads((sample / "kb.json").read_text(encoding="utf-8"))
    for split in SPLITS:
        for r in read_split(sample, split):
            assert set(r) == {"id", "text", "mention", "img_name", "target", "golden"}
            assert r["mention"] in r["text"]
            assert kb[r["golden"]] == r["target"]
            assert (sample / "images" / r["img_name"]).is_file()


def test_surface_forms_are_ambiguous_in_the_kb(sample: Path) -> None:
    names = list(json.loads((sample / "kb.json").read_text(encoding="utf-8")).values())
    test = read_split(sample, "test")

    def candidates(mention: str) -> int:
        return sum(bool(re.search(rf"\b{re.escape(mention)}\b", n)) for n in names)

    assert sum(candidates(r["mention"]) >= 2 for r in test) / len(test) >= 0.5


def test_text_alone_does_not_determine_most_test_entities(sample: Path) -> None:
    # A text that occurs with several gold entities cannot be linked from the text alone.
    golds_of_text: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for r in read_split(sample, split):
            golds_of_text[r["text"]].add(r["golden"])
    test = read_split(sample, "test")
    share = sum(len(golds_of_text[r["text"]]) >= 2 for r in test) / len(test)
    assert share >= 0.5
    assert share < 1.0  # the rest carry a hint
    templates = {re.sub(re.escape(r["mention"]), "{m}", r["text"], count=1)
                 for s in SPLITS for r in read_split(sample, s)}
    assert len(templates) >= 10


def test_train_and_test_images_differ(sample: Path) -> None:
    digest = {s: [hashlib.sha256((sample / "images" / r["img_name"]).read_bytes()).hexdigest()
                  for r in read_split(sample, s)] for s in SPLITS}
    all_digests = [d for s in SPLITS for d in digest[s]]
    assert len(set(all_digests)) == len(all_digests)


def test_prepare_imports_it_completely(sample: Path) -> None:
    p = PrepareParams(format="gemel_jsonl", dataset="sample", input=str(sample),
                      kb=str(sample / "kb.json"), images=str(sample / "images"))
    out = prepare(p, root=Path("/"))
    r = out.report
    assert r["records_read"] == {s: len(read_split(sample, s)) for s in SPLITS}
    assert r["missing_image"] == 0
    assert r["gold_not_in_kb"] == 0
    assert r["nil"] == 0 and r["skipped_records"] == 0
    assert r["dev_carved_from_train"] is False
    assert len(out.kb) == len(json.loads((sample / "kb.json").read_text(encoding="utf-8")))
    assert out.mentions["start"].notna().all()


def test_regenerating_smaller_leaves_no_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "s"
    generate(out, train_per_entity=2, image_size=16)
    summary = generate(out, train_per_entity=1, dev_per_entity=0, test_per_entity=1, image_size=16)
    assert len(list((out / "images").glob("*.png"))) == summary["images"]
    assert summary["mentions"]["dev"] == 0 and (out / "dev.json").read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folders left behind


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a generated sample"):
        generate(tmp_path, image_size=16)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_image_styles_separable_by_the_frozen_encoder(sample: Path) -> None:
    """The design goal: inside an ambiguity group the image decides. The nearest single train
    image per entity, in frozen EfficientNet-Lite0 features, must pick the gold entity among the
    mention's group for nearly every test image (one per entity, to keep the test fast)."""
    import numpy as np
    import torch
    from PIL import Image

    from gemel.config import FeaturesParams
    from gemel.vision.encoders import build_image_encoder

    encoder = build_image_encoder(FeaturesParams(encoder="efficientnet_lite0"))

    def first_per_entity(rows: list[dict]) -> list[dict]:
        return list({r["golden"]: r for r in reversed(rows)}.values())

    def features(rows: list[dict]) -> np.ndarray:
        batch = torch.stack([encoder.preprocess(Image.open(sample / "images" / r["img_name"])) for r in rows])
        x = encoder.encode(batch).numpy()
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train, test = first_per_entity(read_split(sample, "train")), first_per_entity(read_split(sample, "test"))
    exemplar = dict(zip((r["golden"] for r in train), features(train), strict=True))
    group: dict[str, set[str]] = defaultdict(set)
    for r in train:
        group[r["mention"]].add(r["golden"])
    assert all(len(g) >= 2 for g in group.values())
    hits = [max(group[r["mention"]], key=lambda g: float(x @ exemplar[g])) == r["golden"]
            for x, r in zip(features(test), test, strict=True)]
    assert len(hits) == len(exemplar)
    assert sum(hits) / len(hits) >= 0.9
