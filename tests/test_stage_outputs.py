"""Reading what an earlier stage wrote: every Parquet read goes through the checksummed reader of
gemel.data.tables, and a missing, corrupt or foreign table or JSON report is one InputFileError
naming the file and the stage that writes it (a one-line error through a stage CLI), never a
pyarrow or json traceback. Also the expected failures that used to be bare exceptions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gemel.data.tables import InputFileError, read_json, write_parquet_atomic
from gemel.errors import GemelError


def corrupt(path: Path) -> None:
    """Zero bytes inside the column pages, keeping the footer: the file opens, a page fails its CRC."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def foreign(path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), path)


def one_line(e: pytest.ExceptionInfo, path: Path, made_by: str) -> str:
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and f"the {made_by} stage writes it" in message
    return message


def demos_table(path: Path) -> None:
    from gemel.search.retrieval import DEMOS

    n = 200  # several pages' worth, so the damage lands in column data
    write_parquet_atomic(pd.DataFrame({"id": [f"m{i}" for i in range(n)], "demo_ids": [[f"m{i + 1}"] for i in range(n)],
                                       "demo_scores": [np.array([0.5], np.float32)] * n}), path, DEMOS)


def pool_table(path: Path) -> None:
    from gemel.search.retrieval import DemoPool, write_pool

    n = 200
    write_pool(DemoPool([f"m{i}" for i in range(n)], [f"text {i}" for i in range(n)],
                        np.ones((n, 8), np.float32), "simcse", "mention", "enc", 0), path)


def predictions_table(path: Path) -> None:
    from gemel.data.tables import PREDICTIONS_SCHEMA

    n = 200
    write_parquet_atomic(pd.DataFrame({
        "id": [f"m{i}" for i in range(n)], "split": "test", "mention": "x", "gold_id": "E1", "gold_name": "X",
        "is_nil": False, "has_image": True, "pred_id": "E1", "pred_name": "X", "beams": [["X"]] * n,
        "beam_ids": [["E1"]] * n, "beam_scores": [[0.0]] * n, "llm_scores": None, "cand_priors": None}),
        path, PREDICTIONS_SCHEMA)


def read_demos(path: Path) -> None:
    from gemel.search.retrieval import read_demos as read

    read(path)


def read_pool(path: Path) -> None:
    from gemel.search.retrieval import read_pool as read

    read(path)


def read_predictions(path: Path) -> None:
    from gemel.evaluate.metrics import read_predictions as read

    read(path)


def report_extra_columns(path: Path) -> None:
    from gemel.evaluate.report import collect

    collect(path.parent, pd.DataFrame())


def report_optional_table(path: Path) -> None:
    from gemel.evaluate.report import _read_optional

    _read_optional(path, "decode", ["id", "beams"])


SITES = {"demos": (demos_table, read_demos, "retrieve"), "pool": (pool_table, read_pool, "retrieve"),
         "predictions": (predictions_table, read_predictions, "decode"),
         "report predictions": (predictions_table, report_extra_columns, "decode"),
         "report optional table": (predictions_table, report_optional_table, "decode")}


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("damage", [corrupt, truncate])
def test_a_damaged_table_is_one_error_naming_it(tmp_path: Path, site: str, damage) -> None:
    write, read, made_by = SITES[site]
    path = tmp_path / "predictions.parquet"
    write(path)
    damage(path)
    with pytest.raises(InputFileError) as e:
        read(path)
    assert "unreadable Parquet file" in one_line(e, path, made_by)


@pytest.mark.parametrize("site", ["demos", "pool", "predictions"])
def test_a_foreign_or_missing_table_is_one_error_naming_it(tmp_path: Path, site: str) -> None:
    _, read, made_by = SITES[site]
    path = tmp_path / "predictions.parquet"
    with pytest.raises(InputFileError, match="no such file") as e:
        read(path)
    one_line(e, path, made_by)
    foreign(path)
    with pytest.raises(GemelError, match="no column|missing column"):
        read(path)


def test_evaluate_stage_with_corrupt_predictions_exits_2_in_one_line(tmp_path: Path, capsys) -> None:
    from stages import _cli
    from stages import evaluate as stage

    run = tmp_path / "results" / "smollm2-135m"
    predictions_table(run / "predictions.parquet")
    corrupt(run / "predictions.parquet")
    argv = ["--set", f"train.out={tmp_path / 'results'}", "--set", f"prepare.out={tmp_path / 'prepared'}"]
    assert _cli.run("evaluate", stage.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"evaluate: error: {run / 'predictions.parquet'}: unreadable")


# ------------------------------------------------------------------ JSON reports of earlier stages

@pytest.mark.parametrize("content, says", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                                           (b"\xff\xfe", "not valid JSON")])
def test_a_corrupt_json_report_is_one_error_naming_it(tmp_path: Path, content, says: str) -> None:
    path = tmp_path / "decode_report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputFileError, match=says) as e:
        read_json(path, "decode")
    one_line(e, path, "decode")
    with pytest.raises(InputFileError, match="no such file"):
        read_json(tmp_path / "none.json", "decode")


def test_the_readers_of_json_reports_use_it(tmp_path: Path) -> None:
    """The decode report read by `gemel link` (decode_settings) and by evaluate, and the candidates
    report that run.json records the ranker's weights from."""
    from gemel.config import load_params
    from gemel.evaluate.metrics import evaluate_run
    from gemel.link.predict import decode_settings
    from gemel.link.run import write_run_record
    from gemel.paths import Artifacts

    run = tmp_path / "results" / "smollm2-135m"
    run.mkdir(parents=True)
    (run / "decode_report.json").write_text('{"settings": ')
    with pytest.raises(InputFileError, match="decode_report.json: not valid JSON"):
        decode_settings(run)
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml",
                         [f"{s}.out={tmp_path / s}" for s in ("prepare", "features", "retrieve", "candidates", "trie")]
                         + [f"train.out={tmp_path / 'results'}"])
    predictions_table(run / "predictions.parquet")
    from gemel.data.tables import KB, MENTIONS

    write_parquet_atomic(pd.DataFrame({"entity_id": ["E1"], "name": ["X"], "description": [None]}),
                         tmp_path / "prepare" / "kb.parquet", KB)
    write_parquet_atomic(pd.DataFrame({c: pd.Series(dtype=object) for c in MENTIONS.names}).astype(
        {"start": "Int64", "end": "Int64", "is_nil": bool}), tmp_path / "prepare" / "mentions.parquet", MENTIONS)
    with pytest.raises(InputFileError, match="decode_report.json: not valid JSON"):
        evaluate_run(Artifacts.of(params), [1])
    (tmp_path / "candidates").mkdir()
    (tmp_path / "candidates" / "report.json").write_text(json.dumps({"weights": {"a": 1}})[:-3])
    with pytest.raises(InputFileError, match="candidates/report.json: not valid JSON .*the candidates stage"):
        write_run_record(params, run)


# ------------------------------------------------------------------ expected failures, not bare exceptions

@pytest.mark.parametrize("fusion", ["learned", "weight"])
def test_fusion_fitted_on_dev_without_dev_mentions_says_what_to_set(fusion: str) -> None:
    from gemel.config import DecodeParams
    from gemel.link.predict import choose_fusion
    from gemel.link.ranking import LinkError

    with pytest.raises(LinkError, match="set decode.fusion to weight and decode.fusion_weight to a number") as e:
        choose_fusion(None, [], [], np.zeros((0, 1)), DecodeParams(candidates="constrained", fusion=fusion))
    assert isinstance(e.value, GemelError)


def test_other_expected_failures_are_gemel_errors(tmp_path: Path) -> None:
    from gemel.config import FeaturesParams
    from gemel.generation.trie import Trie
    from gemel.stack import read_lock
    from gemel.vision.encoders import build_image_encoder
    from gemel.vision.features import encode_inputs
    from gemel.workflow import get

    with pytest.raises(GemelError, match="unknown image encoder"):
        build_image_encoder(FeaturesParams(encoder="resnet"))
    with pytest.raises(GemelError, match="missing_image: unknown policy"):
        encode_inputs([], None, missing_image="ignore")
    with pytest.raises(GemelError, match="rerun the trie stage"):
        Trie.build([[5, 9]]).allowed_mask(np.array([0]), 4)
    (tmp_path / "requirements.lock").write_text("numpy>=1\n")
    with pytest.raises(GemelError, match="exact pin"):
        read_lock(tmp_path / "requirements.lock")
    with pytest.raises(GemelError, match="no key 'model.nope'"):
        get({"model": {}}, "model.nope")
