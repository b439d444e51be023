"""The two normalised tables every importer produces, and Parquet I/O for all stages: atomic
writes (gemel.atomic), and reads that turn a missing, truncated or foreign file into one
InputFileError naming the file and the stage that writes it."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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

KB = pa.schema([
    ("entity_id", pa.string()),
    ("name", pa.string()),
    ("description", pa.string()),
])

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


def read_arrow(path: str | Path, made_by: str, schema: pa.Schema | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The Parquet table at `path`, made by the stage `made_by`: read as `schema` (every column
    required) or its `columns`. Anything else (no file, a truncated or corrupt one, missing
    columns) is an InputFileError naming the file and what to rerun; pyarrow itself would fill
    a missing column of `schema` with nulls, silently."""
    path = Path(path)
    rerun = f"the {made_by} stage writes it"
    if not path.is_file():
        raise InputFileError(f"{path}: no such file ({rerun}: run it first)")
    need = list(schema.names if schema is not None else columns or [])
    try:
        have = pq.read_schema(path).names
        absent = [c for c in need if c not in have]
        if absent:
            raise InputFileError(f"{path}: not the table expected, no column(s) {', '.join(absent)} "
                                 f"({rerun}: rerun it)")
        return pq.read_table(path, schema=schema, columns=list(columns) if columns is not None else None,
                             page_checksum_verification=True)  # pages written without a CRC are read as they are
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid: truncated or not Parquet; OSError: corrupt pages
        why = " ".join(str(e).split())  # one line
        raise InputFileError(f"{path}: unreadable Parquet file, truncated or corrupt: {why} "
                             f"({rerun}: rerun it)") from None


def read_table(path: str | Path, made_by: str, schema: pa.Schema | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """read_arrow as a DataFrame."""
    return read_arrow(path, made_by, schema, columns).to_pandas()


def read_mentions(path: str | Path) -> pd.DataFrame:
    return read_table(path, "prepare", MENTIONS)


def read_kb(path: str | Path) -> pd.DataFrame:
    return read_table(path, "prepare", KB)
