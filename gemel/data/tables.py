"""The two normalised tables every importer produces, and I/O of stage outputs for all stages:
atomic Parquet writes (gemel.atomic), and reads of Parquet tables and JSON reports that turn a
missing, truncated or foreign file into one InputFileError naming the file and the stage that
writes it."""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gemel.atomic import atomic_path
from gemel.errors import GemelError

# One row per mention. `image` is a path (as given by the dataset, resolved against the images
# folder) or null when the dataset has none; entity fields are null for NIL mentions.
MENTIONS = pa.schema([
    ("id", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("text", pa.string()),
    ("mention", pa.string()),
    ("start", pa.int64()),
    ("end", pa.int64()),
    ("image", pa.string()),
    ("entity_id", pa.string()),
    ("entity_name", pa.string()),
    ("is_nil", pa.bool_()),
])

# One row per entity. `description` is the dataset's short text about it (RichpediaMEL's and
# WikiMEL's qid2abs.json), null where none is published (WikiDiverse, the sample).
KB = pa.schema([
    ("entity_id", pa.string()),
    ("name", pa.string()),
    ("description", pa.string()),
])

# One row per mention of the decoded split (the decode stage's predictions.parquet): gold and
# predicted entity, and the ranked beams with their scores.
PREDICTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("mention", pa.string()),
    ("gold_id", pa.string()), ("gold_name", pa.string()), ("is_nil", pa.bool_()), ("has_image", pa.bool_()),
    ("pred_id", pa.string()), ("pred_name", pa.string()),
    ("beams", pa.list_(pa.string())), ("beam_ids", pa.list_(pa.string())), ("beam_scores", pa.list_(pa.float32())),
    ("llm_scores", pa.list_(pa.float32())), ("cand_priors", pa.list_(pa.float32())),  # candidate-aware mode only
])
# Columns a table written by an older decode stage may lack: readers take them when present.
PREDICTIONS_CANDIDATE_AWARE = ("llm_scores", "cand_priors")
PREDICTIONS_OPTIONAL = ("beam_ids", *PREDICTIONS_CANDIDATE_AWARE)
# What evaluate needs (every other column).
PREDICTIONS_REQUIRED = tuple(n for n in PREDICTIONS_SCHEMA.names if n not in PREDICTIONS_OPTIONAL)

SPLITS = ("train", "dev", "test")


class InputFileError(GemelError, ValueError):
    """An input table is missing, truncated, corrupt or not the table expected; the message names
    the file and the stage that writes it."""


def write_parquet_atomic(df: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema | None = None) -> None:
    """Write `df` (cast to `schema` when given) so that a killed run never leaves a half-written
    table that looks complete. Every page carries a CRC (read_arrow checks it): without one, bytes
    damaged inside a page can read back as other values, silently."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)


def _check_file(path: Path, made_by: str) -> None:
    if not path.is_file():
        raise InputFileError(f"{path}: no such file (the {made_by} stage writes it: run it first)")


def _unreadable(path: Path, made_by: str, e: Exception) -> InputFileError:
    why = " ".join(str(e).split())  # one line
    return InputFileError(f"{path}: unreadable Parquet file, truncated or corrupt: {why} "
                          f"(the {made_by} stage writes it: rerun it)")


# What pyarrow raises for a file it cannot read: ArrowInvalid (truncated, not Parquet), OSError (corrupt pages).
_READ_ERRORS = (pa.ArrowException, OSError)


def read_schema(path: str | Path, made_by: str) -> pa.Schema:
    """The schema of the Parquet table at `path` (made by the stage `made_by`), for readers whose
    columns are optional; the errors of read_arrow."""
    path = Path(path)
    _check_file(path, made_by)
    try:
        return pq.read_schema(path)
    except _READ_ERRORS as e:
        raise _unreadable(path, made_by, e) from None


def read_arrow(path: str | Path, made_by: str, schema: pa.Schema | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The Parquet table at `path`, made by the stage `made_by`: read as `schema` (every column
    required) or its `columns`. Anything else (no file, a truncated or corrupt one, missing
    columns) is an InputFileError naming the file and what to rerun; pyarrow itself would fill
    a missing column of `schema` with nulls, silently."""
    path = Path(path)
    need = list(schema.names if schema is not None else columns or [])
    absent = [c for c in need if c not in read_schema(path, made_by).names]
    if absent:
        raise InputFileError(f"{path}: not the table expected, no column(s) {', '.join(absent)} "
                             f"(the {made_by} stage writes it: rerun it)")
    try:
        return pq.read_table(path, schema=schema, columns=list(columns) if columns is not None else None,
                             page_checksum_verification=True)  # pages written without a CRC are read as they are
    except _READ_ERRORS as e:
        raise _unreadable(path, made_by, e) from None


def read_table(path: str | Path, made_by: str, schema: pa.Schema | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """read_arrow as a DataFrame."""
    return read_arrow(path, made_by, schema, columns).to_pandas()


def linked_training(mentions: pd.DataFrame, kb_ids: Collection[str] | None = None) -> pd.DataFrame:
    """The training split's linked mentions: not NIL and with an entity id, one of `kb_ids` (the
    KB's) when given. What the alias counts and the candidate ranker learn from."""
    linked = (mentions["split"] == "train") & ~mentions["is_nil"] & mentions["entity_id"].notna()
    if kb_ids is not None:
        linked &= mentions["entity_id"].isin(kb_ids)
    return mentions[linked]


def read_mentions(path: str | Path) -> pd.DataFrame:
    return read_table(path, "prepare", MENTIONS)


def read_kb(path: str | Path) -> pd.DataFrame:
    """The KB table. `description` may be absent (a table written before it existed): it then
    reads as all null, as for a dataset that publishes no descriptions."""
    if "description" in read_schema(path, "prepare").names:
        return read_table(path, "prepare", KB)
    kb = read_table(path, "prepare", KB.remove(KB.get_field_index("description")))
    kb["description"] = pd.Series([None] * len(kb), dtype=object)
    return kb


def read_json(path: str | Path, made_by: str) -> dict[str, Any]:
    """A stage's JSON report (a JSON object): no file, malformed JSON or another value is an
    InputFileError naming the file and the stage that writes it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file (the {made_by} stage writes it: run it first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not valid JSON ({' '.join(str(e).split())}); the {made_by} stage "
                             "writes it: rerun it") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(data).__name__} (the {made_by} stage "
                             "writes it: rerun it)")
    return data
