"""The README's command shapes on the embedded sample, each through DVC itself to the run's
report.html: `dvc repro` (the main command, shared as conftest's sample_project) and the text-only
experiment (`dvc exp run -S model.use_image=false`: a run that trains 0 steps). The real-data
command is tests/test_real_data_command.py."""
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
    assert len(pred) == 12 and m["decode"]["mode"] == "paper"
    assert 0.0 <= m["accuracy"] <= 1.0
    assert {"copy_mention", "alias_prior"} <= set(m["baselines"])
    assert page_rows(sample_project) == 12
    report = json.loads((results(sample_project) / "train_report.json").read_text())
    assert report["optimizer_steps"] == 9  # 36 examples, batch 4, 1 epoch
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
    assert page_rows(project) == 12 and "accuracy" in metrics(project)
    assert "results/smollm2-135m/metrics.json" in sh(project, "dvc", "metrics", "diff")

