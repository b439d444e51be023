"""The two normalised tables every importer produces, and atomic Parquet I/O for all stages."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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

KB = pa.schema([
    ("entity_id", pa.string()),
    ("name", pa.string()),
    ("description", pa.string()),
])

SPLITS = ("train", "dev", "test")


def write_parquet_atomic(df: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema | None = None) -> None:
    """Write to a temporary file beside `path`, then rename: a killed run never leaves a
    half-written table that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_mentions(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path, schema=MENTIONS).to_pandas()


def read_kb(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path, schema=KB).to_pandas()
