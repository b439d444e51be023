"""The README's real-data command (a text-only, candidate-aware run of a real-layout preset with
prepare.limit.*), through DVC itself to the run's report.html, on a WikiMEL-layout copy of a small
draw of the sample's records. A project of its own: it shares no stage with the sample's run."""
from __future__ import annotations

import json
from pathlib import Path

from gemel.data.sample import generate_sample
from tests.conftest import new_project, sh
from tests.test_commands import metrics, page_rows, results


def wikimel_layout(sample: Path, dest: Path) -> None:
    """The sample's records in WikiMEL's published layout (data/shared's README): one annotation
    object keyed by record id with list fields, GHMFC's splits.json, qid2ne.json; no images."""
    records, splits = {}, {}
    for split in ("train", "dev", "test"):
        lines = [json.loads(line) for line in (sample / f"{split}.json").read_text().splitlines()]
        for n, o in enumerate(lines):
            rid = f"{split[:2]}{n}"
            records[rid] = {"id": rid, "sentence": o["text"], "imgPath": f"{rid}.jpg", "mentions": [o["mention"]],
                            "entities": [o["target"]], "answer": [o["golden"]]}
            splits.setdefault(split, []).append(rid)
    dest.mkdir(parents=True)
    (dest / "Wikidata-MEL.json").write_text(json.dumps(records))
    (dest / "splits.json").write_text(json.dumps(splits))
    (dest / "qid2ne.json").write_text((sample / "kb.json").read_text())


def test_the_real_data_command_runs_to_the_report_on_a_published_layout(tmp_path):
    project = new_project(tmp_path / "project")
    # 108 train, 36 dev, 36 test records, cut by the command to 60, 6 and 10.
    generate_sample(tmp_path / "sample", seed=0, train_per_entity=3, dev_per_entity=1, test_per_entity=1,
                    image_size=32)
    wikimel_layout(tmp_path / "sample", project / "data" / "raw" / "wikimel")
    sh(project, "dvc", "exp", "run", "-S", "dataset=wikimel", "-S", "model.use_image=false",
       "-S", "decode.candidates=constrained", "-S", "train.dev_candidates=constrained",
       "-S", "prepare.limit.train=60", "-S", "prepare.limit.dev=6", "-S", "prepare.limit.test=10")
    prepared = json.loads((project / "data" / "prepared" / "report.json").read_text())
    assert prepared["dataset"] == "wikimel" and prepared["mentions"] == 76
    assert {s: v["mentions"] for s, v in prepared["splits"].items()} == {"train": 60, "dev": 6, "test": 10}
    m = metrics(project)
    assert m["decode"]["mode"] == "candidates" and m["evaluated"] == 10
    assert {"copy_mention", "alias_prior"} <= set(m["baselines"])
    page = (results(project) / "report.html").read_text()
    assert page_rows(project) == 10 and "This run trained nothing" in page
