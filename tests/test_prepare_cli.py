"""`python -m stages.prepare` on bad input: exit status 2, one line naming the file, and the
tables of an earlier complete run left exactly as they were."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gemel.data.sample import generate_sample

ROOT = Path(__file__).resolve().parent.parent


PRESET_KEYS = {"format", "input", "kb", "images", "split_file", "split_key", "invalid_records"}


def write_params(tmp: Path, **prepare: object) -> Path:
    """params.yaml with a preset `fx` (the sample's, updated by the preset keys given) chosen, and
    the other keys set in the prepare section."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    preset = dict(params["datasets"]["sample"])
    preset.update({k: v for k, v in prepare.items() if k in PRESET_KEYS})
    params["datasets"]["fx"], params["dataset"] = preset, "fx"
    params["prepare"].update({k: v for k, v in prepare.items() if k not in PRESET_KEYS})
    path = tmp / f"params-{len(list(tmp.glob('params-*')))}.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def run_prepare(params: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def done(tmp_path: Path) -> tuple[Path, dict]:
    """A tiny sample, prepared once successfully; returns the sample folder and the prepare
    section that produced tmp/prepared."""
    data = tmp_path / "sample"
    generate_sample(data, seed=0, train_per_entity=1, dev_per_entity=1, test_per_entity=1, image_size=16)
    section = {"input": str(data), "kb": str(data / "kb.json"), "images": str(data / "images"),
               "out": str(tmp_path / "prepared")}
    ok = run_prepare(write_params(tmp_path, **section))
    assert ok.returncode == 0, ok.stderr
    return data, section


def outputs(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((tmp / "prepared").iterdir())}


def assert_failed_cleanly(result: subprocess.CompletedProcess[str], names: Path, before: dict[str, bytes],
                          tmp: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare: error: ") and str(names) in lines[0]
    assert "Traceback" not in result.stderr
    assert outputs(tmp) == before  # nothing half-written, no temporary files left


def test_unknown_format_exits_2_and_keeps_outputs(tmp_path: Path, done: tuple[Path, dict]) -> None:
    before = outputs(tmp_path)
    assert set(before) == {"mentions.parquet", "kb.parquet", "report.json"}
    bad = write_params(tmp_path, **done[1], format="csv")
    result = run_prepare(bad)
    assert_failed_cleanly(result, bad, before, tmp_path)
    assert "datasets.fx.format" in result.stderr


def test_malformed_file_exits_2_and_keeps_outputs(tmp_path: Path, done: tuple[Path, dict]) -> None:
    data, section = done
    before = outputs(tmp_path)
    with open(data / "test.json", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    result = run_prepare(write_params(tmp_path, **section))
    assert_failed_cleanly(result, data / "test.json", before, tmp_path)
    assert "malformed JSON" in result.stderr


def nested_splits(tmp: Path) -> tuple[Path, Path]:
    """A KGMEL-style list file and an ids_split_mappings.json nesting two datasets' splits."""
    records = [{"id": i, "sentence": f"Paris {i}.", "imgPath": f"{i}.jpg", "img-url": f"https://x.org/{i}.jpg",
                "mention": ["Paris"], "entity": ["Paris"], "answer": ["Q90"]} for i in range(6)]
    (tmp / "wd.json").write_text(json.dumps(records), encoding="utf-8")
    splits = tmp / "ids_split_mappings.json"
    splits.write_text(json.dumps({"WikiDiverse": {"train": [0, 1, 2], "val": [3], "test": [4, 5]},
                                  "WikiMEL": {"train": ["a"], "val": [], "test": []}}), encoding="utf-8")
    return tmp / "wd.json", splits


def test_split_key_missing_exits_2_naming_the_datasets(tmp_path: Path, done: tuple[Path, dict]) -> None:
    before = outputs(tmp_path)
    data, splits = nested_splits(tmp_path)
    section = {**done[1], "format": "kgmel_wikidiverse", "input": str(data), "kb": None, "images": None,
               "split_file": str(splits)}
    result = run_prepare(write_params(tmp_path, **section))
    assert_failed_cleanly(result, splits, before, tmp_path)
    assert "nests splits under dataset names WikiDiverse, WikiMEL: set datasets.<name>.split_key" in result.stderr


def test_bad_limit_is_a_config_error(tmp_path: Path, done: tuple[Path, dict]) -> None:
    before = outputs(tmp_path)
    bad = write_params(tmp_path, **done[1], limit={"val": 3})
    result = run_prepare(bad)
    assert_failed_cleanly(result, bad, before, tmp_path)
    assert "prepare.limit" in result.stderr


def test_subset_run_is_byte_identical_and_reported(tmp_path: Path) -> None:
    data, splits = nested_splits(tmp_path)
    section = {"format": "kgmel_wikidiverse", "input": str(data), "kb": None, "images": None,
               "split_file": str(splits), "split_key": "WikiDiverse", "limit": {"train": 2, "test": 1}}
    runs = []
    for name in ("a", "b"):
        ok = run_prepare(write_params(tmp_path, **section, out=str(tmp_path / name)))
        assert ok.returncode == 0, ok.stderr
        runs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert set(runs[0]) == {"mentions.parquet", "kb.parquet", "report.json"}
    reports = [json.loads(r.pop("report.json")) for r in runs]
    assert all(r.pop("cost")["seconds"] >= 0 for r in reports)  # what the run cost: the one part that may differ
    assert runs[0] == runs[1] and reports[0] == reports[1]
    report = reports[0]
    assert report["limit"] == {"train": 2, "test": 1}
    assert report["mentions_before_limit"] == {"train": 3, "dev": 1, "test": 2}
    assert {s: v["mentions"] for s, v in report["splits"].items()} == {"train": 2, "dev": 1, "test": 1}
    assert pd.read_parquet(tmp_path / "a" / "mentions.parquet")["id"].tolist() == ["0-0", "1-0", "3-0", "4-0"]


@pytest.mark.parametrize("damage, named, says", [
    ("empty_kb", "kb.json", "the KB has no entities"),
    ("blank_name", "kb.json", "field 'name'"),
    ("empty_test", "test.json", "split 'test' has no mentions"),
    ("empty_train", "train.json", "split 'train' has no mentions"),
])
def test_empty_kb_split_or_blank_name_exits_2_and_keeps_outputs(tmp_path: Path, done: tuple[Path, dict],
                                                                  damage: str, named: str, says: str) -> None:
    data, section = done
    before = outputs(tmp_path)
    kb = json.loads((data / "kb.json").read_text(encoding="utf-8"))
    if damage == "empty_kb":
        (data / "kb.json").write_text("{}", encoding="utf-8")
    elif damage == "blank_name":
        eid = sorted(kb)[3]
        (data / "kb.json").write_text(json.dumps({**kb, eid: " \t "}), encoding="utf-8")
        says = f"entity {eid}: {says}"
    else:
        (data / named).write_text("", encoding="utf-8")
    result = run_prepare(write_params(tmp_path, **section))
    assert_failed_cleanly(result, data / named, before, tmp_path)
    assert says in result.stderr


def test_empty_kb_file_exits_2(tmp_path: Path, done: tuple[Path, dict]) -> None:
    """A MELBench-style dataset whose KB file (qid2ne.json) holds no entity."""
    before = outputs(tmp_path)
    d = tmp_path / "melbench"
    d.mkdir()
    record = {"sentence": "Obama spoke.", "mentions": "Obama", "entities": "Barack Obama", "answer": "Q76"}
    (d / "train.json").write_text(json.dumps({"r1": record}), encoding="utf-8")
    (d / "test.json").write_text(json.dumps({"t1": record}), encoding="utf-8")
    (d / "qid2ne.json").write_text("{}", encoding="utf-8")
    section = {**done[1], "format": "melbench", "input": str(d), "kb": str(d / "qid2ne.json"), "images": None}
    result = run_prepare(write_params(tmp_path, **section))
    assert_failed_cleanly(result, d / "qid2ne.json", before, tmp_path)
    assert "the KB has no entities" in result.stderr
