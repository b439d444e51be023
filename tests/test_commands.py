"""The README's command shapes, each through DVC itself to the run's report.html, on small
fixtures: `dvc repro` on the embedded sample (the main command, shared as conftest's
sample_project), the text-only experiment (`dvc exp run -S model.use_image=false`: a run that
trains 0 steps), and the real-data command (a text-only, candidate-aware run of a real-layout
preset with prepare.limit.*) on a WikiMEL-layout copy of the sample's records."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.conftest import copy_project, sh

LLM = "smollm2-135m"


def results(project: Path) -> Path:
    return project / "results" / LLM


def metrics(project: Path) -> dict:
    return json.loads((results(project) / "metrics.json").read_text())


def page_rows(project: Path) -> int:
    return (results(project) / "report.html").read_text().count('<div class="m')


def test_dvc_repro_runs_every_stage_to_the_report(sample_project):
    m = metrics(sample_project)
    pred = pd.read_parquet(results(sample_project) / "predictions.parquet")
    assert len(pred) == 36 and m["decode"]["mode"] == "paper"
    assert 0.0 <= m["accuracy"] <= 1.0
    assert {"copy_mention", "alias_prior"} <= set(m["baselines"])
    assert page_rows(sample_project) == 36
    report = json.loads((results(sample_project) / "train_report.json").read_text())
    assert report["optimizer_steps"] == 54  # 108 examples, batch 4, 2 epochs
    assert "up to date" in sh(sample_project, "dvc", "status")  # dvc.lock records every stage


def test_text_only_experiment_has_a_page_that_says_it_trained_nothing(sample_project, tmp_path):
    project = copy_project(sample_project, tmp_path / "project")
    out = sh(project, "dvc", "exp", "run", "-n", "no_image", "-S", "model.use_image=false")
    for stage in ("train", "decode", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    for stage in ("prepare", "features", "retrieve", "candidates", "trie"):  # params they do not read
        assert f"Running stage '{stage}'" not in out
    assert json.loads((results(project) / "train_report.json").read_text())["optimizer_steps"] == 0
    assert (results(project) / "train_loss.csv").read_text() == "step,epoch,loss,lr\n"
    page = (results(project) / "report.html").read_text()
    assert "This run trained nothing (0 optimizer steps: a text-only run" in page
    assert page_rows(project) == 36 and "accuracy" in metrics(project)
    assert "results/smollm2-135m/metrics.json" in sh(project, "dvc", "metrics", "diff")


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


def test_the_real_data_command_runs_to_the_report_on_a_published_layout(sample_project, tmp_path):
    project = copy_project(sample_project, tmp_path / "project")
    wikimel_layout(project / "data" / "sample", project / "data" / "raw" / "wikimel")
    sh(project, "dvc", "exp", "run", "-S", "dataset=wikimel", "-S", "model.use_image=false",
       "-S", "decode.candidates=constrained", "-S", "train.dev_candidates=constrained",
       "-S", "prepare.limit.train=60", "-S", "prepare.limit.dev=12", "-S", "prepare.limit.test=20")
    prepared = json.loads((project / "data" / "prepared" / "report.json").read_text())
    assert prepared["dataset"] == "wikimel" and prepared["mentions"] == 92
    assert {s: v["mentions"] for s, v in prepared["splits"].items()} == {"train": 60, "dev": 12, "test": 20}
    m = metrics(project)
    assert m["decode"]["mode"] == "candidates" and m["evaluated"] == 20
    assert {"copy_mention", "alias_prior"} <= set(m["baselines"])
    page = (results(project) / "report.html").read_text()
    assert page_rows(project) == 20 and "This run trained nothing" in page
