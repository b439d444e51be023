"""Image features: one vector per image path, computed once and cached incrementally.

The table (`images.parquet`) has one row per image: `image` (the path, as the mentions table
gives it), `sha256` (of the file's bytes; null when it is missing), `vector`
(fixed_size_list<float32>[dim]) and `ok` (False: the image was missing or unreadable and the vector
is zeros). The encoder's name is stored in the Parquet schema metadata. The cache is keyed by
content, not path: a vector is reused from an earlier table only for the same bytes and the same
encoder, so an image replaced under its old name (another sample seed, a fixed file) is encoded again.

The table is written once, complete, at the end. Until then every encoded batch is appended to a
checkpoint beside it (`images.partial/`, Arrow IPC streams): a killed run loses at most the batch
it was encoding, and the next run resumes from the checkpoint, then removes it.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from tqdm import tqdm

from gemel.config import ConfigError
from gemel.data.tables import InputFileError, read_arrow, write_parquet_atomic
from gemel.errors import GemelError
from gemel.hashing import file_sha256
from gemel.vision.encoders import ImageEncoder

MISSING_POLICIES = ("zero", "drop", "error")
ENCODER_KEY = b"gemel.encoder"
DIM_KEY = b"gemel.dim"
# What PIL raises for a corrupt or unreadable image file: any of these, depending on the format's decoder.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                           Image.DecompressionBombError)


class ImageError(GemelError, ValueError):
    """An image is missing or unreadable under `missing_image: error`; names path and mention."""


def _load(path: str) -> Image.Image | str:
    """The decoded image, or why it cannot be used: 'missing' or 'unreadable'."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # forces the full decode, so truncated files fail here
    except UNREADABLE_IMAGE_ERRORS:
        return "unreadable"


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def image_sha256(path: str) -> str | None:
    """The hex sha256 of the image file's bytes, or None when there is no file to read."""
    try:
        return file_sha256(path)
    except OSError:  # missing, a folder, no permission: encode_paths reports it
        return None


def cache_rows(cache: pd.DataFrame | None, encoder: ImageEncoder) -> dict[str, np.ndarray]:
    """Reusable vectors of an earlier table by content hash: only from the same encoder, and only
    images that were encoded (a row with ok=False is retried: the file may have appeared since)."""
    if cache is None or cache.attrs.get("encoder") != encoder.name:
        return {}
    good = cache[cache["ok"] & cache["sha256"].notna()]
    return dict(zip(good["sha256"], good["vector"]))


def _cached_digests(cache: pd.DataFrame | None, encoder: ImageEncoder) -> dict[str, str | None]:
    """path -> the hash an earlier table encoded it from (same encoder, ok rows): to count stale rows."""
    if cache is None or cache.attrs.get("encoder") != encoder.name:
        return {}
    good = cache[cache["ok"]]
    return {p: (None if pd.isna(d) else d) for p, d in zip(good["image"], good["sha256"])}


def encode_paths(paths: Sequence[str], encoder: ImageEncoder, batch_size: int,
                 on_bad: Callable[[str, str], None], progress: bool = True,
                 on_batch: Callable[[list[str], np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Vectors of the images among `paths` that can be read; every other path goes to
    `on_bad(path, why)`, why being 'missing' or 'unreadable' (it may raise). Missing files are
    reported before any encoding, so a raising `on_bad` stops before minutes of work. Each batch's
    vectors go to `on_batch(paths, vectors)` (the checkpoint) before the progress bar counts them.
    The one encoding loop of the features stage and of linking new inputs (gemel.link.linker)."""
    vectors: dict[str, np.ndarray] = {}
    missing = {p for p in paths if not os.path.isfile(p)}
    for path in (p for p in paths if p in missing):
        on_bad(path, "missing")
    todo = [p for p in paths if p not in missing]
    with tqdm(total=len(todo), desc=f"encoding images ({encoder.name.split(':')[0]})", unit="img",
              disable=not progress) as bar:
        for chunk in _batches(todo, batch_size):
            tensors, names = [], []
            for path in chunk:
                image = _load(path)
                if isinstance(image, str):
                    on_bad(path, image)
                else:
                    tensors.append(encoder.preprocess(image))
                    names.append(path)
            if tensors:
                out = encoder.encode(torch.stack(tensors)).numpy().astype(np.float32, copy=False)
                vectors.update(zip(names, out))
                if on_batch is not None:
                    on_batch(names, out)
            bar.update(len(chunk))
    return vectors


def encode_images(paths: Iterable[str], encoder: ImageEncoder, batch_size: int = 32,
                  missing_image: str = "zero", cache: pd.DataFrame | None = None,
                  used_by: dict[str, str] | None = None, resume: pd.DataFrame | None = None,
                  on_batch: Callable[[list[str], list[str], np.ndarray], None] | None = None
                  ) -> tuple[pd.DataFrame, dict]:
    """Vectors for `paths` (deduplicated, order kept), reusing rows of the same encoder and the
    same file content (sha256) from `cache` (the last complete table) and `resume` (the checkpoint
    of an unfinished run).

    `missing_image`: zero (zero vector, ok=False) | drop (no row) | error (raise ImageError,
    naming the path and `used_by[path]`, the id of a mention that uses it). `on_batch(paths,
    sha256s, vectors)`: each encoded batch (the checkpoint). Returns the table (columns image,
    sha256, vector, ok; attrs encoder and dim) and a report of counts: encoded now, reused from
    `cache`, resumed from `resume`, and stale: paths `cache` held with other bytes (encoded again,
    or now missing).
    """
    if missing_image not in MISSING_POLICIES:
        known = ", ".join(MISSING_POLICIES)
        raise ConfigError(f"features.missing_image: unknown policy {missing_image!r} (known: {known})")
    paths = list(dict.fromkeys(paths))
    # Every run reads every image once to hash it: the price of noticing a file replaced in place.
    digests = {p: image_sha256(p) for p in paths}
    reusable, resumable = cache_rows(cache, encoder), cache_rows(resume, encoder)
    vectors: dict[str, np.ndarray] = {p: reusable[digests[p]] for p in paths if digests[p] in reusable}
    reused = len(vectors)
    vectors.update((p, resumable[digests[p]]) for p in paths if digests[p] in resumable and p not in vectors)
    resumed = len(vectors) - reused
    before = _cached_digests(cache, encoder)
    stale = sum(1 for p in paths if p not in vectors and p in before and before[p] != digests[p])
    bad: dict[str, str] = {}  # path -> missing | unreadable
    todo = [p for p in paths if p not in vectors]

    def fail(path: str, why: str) -> None:
        if missing_image == "error":
            who = f" (used by mention {used_by[path]})" if used_by and path in used_by else ""
            raise ImageError(f"image {path}{who} is {why}; "
                             "set features.missing_image to zero or drop to go on without it")
        bad[path] = why

    def batch_done(names: list[str], out: np.ndarray) -> None:
        if on_batch is not None:
            on_batch(names, [digests[n] for n in names], out)

    vectors.update(encode_paths(todo, encoder, batch_size, fail, on_batch=batch_done))
    encoded = len(vectors) - reused - resumed

    zero = np.zeros(encoder.dim, dtype=np.float32)
    rows = [(p, digests[p], vectors[p], True) if p in vectors else (p, digests[p], zero, False)
            for p in paths if p in vectors or missing_image == "zero"]
    table = pd.DataFrame(rows, columns=["image", "sha256", "vector", "ok"]).astype(
        {"image": "string", "sha256": "string", "ok": bool})
    table.attrs.update(encoder=encoder.name, dim=encoder.dim)
    statuses = list(bad.values())
    report = {
        "encoder": encoder.name,
        "dim": encoder.dim,
        "images": len(paths),
        "encoded": encoded,
        "reused": reused,
        "resumed": resumed,
        "stale": stale,
        "missing": statuses.count("missing"),
        "unreadable": statuses.count("unreadable"),
        "zero_vectors": len(bad) if missing_image == "zero" else 0,
        "dropped": len(bad) if missing_image == "drop" else 0,
        "rows": len(table),
    }
    return table, report


def encode_inputs(paths: Sequence[str | None], encoder: ImageEncoder, batch_size: int = 32,
                  missing_image: str = "zero") -> tuple[np.ndarray, list[str | None], list[str | None]]:
    """The images of new inputs (one optional path each), under the features stage's policy.

    Returns their vectors [n, dim] (zeros where there is none: what the pipeline's prompts get for
    a zero-vector row or a dropped one), why each has no image (None when it was encoded, else
    'none given', 'missing' or 'unreadable'), and, under `missing_image: error`, the error of each
    input whose image is missing or unreadable (None elsewhere): one bad input, not the batch."""
    if missing_image not in MISSING_POLICIES:
        known = ", ".join(MISSING_POLICIES)
        raise ConfigError(f"features.missing_image: unknown policy {missing_image!r} (known: {known})")
    bad: dict[str, str] = {}
    given = list(dict.fromkeys(p for p in paths if p is not None))
    vectors = encode_paths(given, encoder, batch_size, bad.__setitem__, progress=False)
    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    why: list[str | None] = []
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        if path is not None and path in vectors:
            out[i] = vectors[path]
        reason = "none given" if path is None else bad.get(path)
        why.append(reason)
        errors.append(f"image {path} is {reason} (the run's features.missing_image is error)"
                      if missing_image == "error" and path is not None and reason else None)
    return out, why, errors


def mention_images(mentions: pd.DataFrame) -> tuple[list[str], dict[str, str], int]:
    """(unique non-null image paths, path -> first mention id using it, mentions without an image)."""
    has_image = mentions["image"].notna()
    first = mentions.loc[has_image].drop_duplicates("image")
    return list(first["image"]), dict(zip(first["image"], first["id"])), int((~has_image).sum())


def encode_mentions(mentions: pd.DataFrame, encoder: ImageEncoder, batch_size: int = 32,
                    missing_image: str = "zero", cache: pd.DataFrame | None = None,
                    resume: pd.DataFrame | None = None,
                    on_batch: Callable[[list[str], list[str], np.ndarray], None] | None = None
                    ) -> tuple[pd.DataFrame, dict]:
    """encode_images over the images of a mentions table; the report adds mention counts."""
    paths, used_by, no_image = mention_images(mentions)
    table, report = encode_images(paths, encoder, batch_size, missing_image, cache, used_by, resume, on_batch)
    return table, {"mentions": len(mentions), "no_image": no_image, **report}


# --- Parquet I/O ----------------------------------------------------------------------------

def _schema(encoder: str, dim: int, ok: bool = True) -> pa.Schema:
    fields = [("image", pa.string()), ("sha256", pa.string()), ("vector", pa.list_(pa.float32(), dim))]
    fields += [("ok", pa.bool_())] if ok else []
    return pa.schema(fields, metadata={ENCODER_KEY: encoder.encode(), DIM_KEY: str(dim).encode()})


def _vectors(matrix: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1)), dim)


def to_arrow(table: pd.DataFrame) -> pa.Table:
    """The features table as Arrow: fixed-size float32 vectors, encoder name in the metadata."""
    dim = int(table.attrs["dim"])
    matrix = np.stack(list(table["vector"])) if len(table) else np.zeros((0, dim), np.float32)
    # sha256 is null for a missing image; pandas' <NA> must reach Arrow as None.
    strings = [pa.array(table[c].astype(object).where(table[c].notna(), None), pa.string())
               for c in ("image", "sha256")]
    return pa.Table.from_arrays([*strings, _vectors(matrix, dim), pa.array(table["ok"], pa.bool_())],
                                schema=_schema(str(table.attrs["encoder"]), dim))


def write_features(table: pd.DataFrame, path: str | Path) -> None:
    write_parquet_atomic(to_arrow(table), path)


def _arrow_matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = pc.list_flatten(column.combine_chunks()) if len(column) else pa.array([], pa.float32())
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def _read_arrow(path: str | Path, columns: Sequence[str] = ("image", "vector", "ok")) -> tuple[pa.Table, str, int]:
    arrow = read_arrow(path, "features", columns=columns)
    meta = arrow.schema.metadata or {}
    if ENCODER_KEY not in meta or DIM_KEY not in meta:
        raise InputFileError(f"{path}: not a gemel features table (no {ENCODER_KEY.decode()} in the schema "
                             "metadata; the features stage writes it: rerun it)")
    return arrow, meta[ENCODER_KEY].decode(), int(meta[DIM_KEY])


def read_features(path: str | Path) -> pd.DataFrame:
    """A features table as written by write_features (attrs encoder, dim): the cache input. One
    written before the sha256 column is refused (previous_table then recomputes everything)."""
    arrow, encoder, dim = _read_arrow(path, ("image", "sha256", "vector", "ok"))
    matrix = _arrow_matrix(arrow.column("vector"), dim)
    table = pd.DataFrame({"image": pd.array(arrow.column("image").to_pylist(), dtype="string"),
                          "sha256": pd.array(arrow.column("sha256").to_pylist(), dtype="string"),
                          "vector": list(matrix), "ok": arrow.column("ok").to_numpy(zero_copy_only=False)})
    table.attrs.update(encoder=encoder, dim=dim)
    return table


@dataclass(frozen=True)
class Features:
    """The features table as the train and decode stages use it: one row per image."""
    index: dict[str, int]  # image path -> row
    matrix: np.ndarray     # float32 [rows, dim]; zeros where `ok` is False
    ok: np.ndarray         # bool [rows]; False: the image was missing or unreadable, its zero vector is no image
    encoder: str

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def load_features(path: str | Path) -> Features:
    """The features table at `path` as a matrix, its row index and its ok mask."""
    arrow, encoder, dim = _read_arrow(path)
    index = {p: i for i, p in enumerate(arrow.column("image").to_pylist())}
    ok = arrow.column("ok").to_numpy(zero_copy_only=False).astype(bool, copy=False)
    return Features(index, _arrow_matrix(arrow.column("vector"), dim), ok, encoder)


# --- the checkpoint of an unfinished run ----------------------------------------------------

class Checkpoint:
    """The vectors of unfinished runs, kept in `folder` as they are encoded: one Arrow IPC stream
    per run, appended batch by batch straight to the OS (no user-space buffer), so a killed
    process loses at most the batch being written. A stream cut mid-batch is read up to its last
    whole batch. Only vectors of images that were read are kept, each with its file's sha256: a
    missing or unreadable image is looked at again, as in the complete table's cache, and a resumed
    run takes a vector only for the same bytes. A stream from before the sha256 column has another
    schema and is ignored."""

    SUFFIX = ".arrows"

    def __init__(self, folder: str | Path, encoder: str, dim: int):
        self.folder = Path(folder)
        self.schema = _schema(encoder, dim, ok=False)
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def read(self) -> pd.DataFrame | None:
        """The vectors of earlier unfinished runs with this encoder (a table like read_features's,
        all ok), or None when there are none."""
        images: list[str] = []
        digests: list[str] = []
        parts: list[np.ndarray] = []
        dim = self.schema.field("vector").type.list_size
        for file in sorted(self.folder.glob(f"*{self.SUFFIX}")):
            with pa.OSFile(str(file)) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except (pa.ArrowException, OSError):  # cut before the first batch: nothing to take
                    continue
                if not reader.schema.equals(self.schema, check_metadata=True):
                    continue  # another encoder's vectors (or an older layout)
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    except (pa.ArrowException, OSError):  # the batch being written when the run was killed
                        break
                    images += batch.column("image").to_pylist()
                    digests += batch.column("sha256").to_pylist()
                    parts.append(_arrow_matrix(pa.chunked_array([batch.column("vector")]), dim))
        if not images:
            return None
        matrix = np.concatenate(parts)
        table = pd.DataFrame({"image": pd.array(images, dtype="string"), "sha256": pd.array(digests, dtype="string"),
                              "vector": list(matrix), "ok": True})
        table.attrs.update(encoder=self.schema.metadata[ENCODER_KEY].decode(), dim=dim)
        return table

    def append(self, images: list[str], digests: list[str], vectors: np.ndarray) -> None:
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            taken = [int(f.stem) for f in self.folder.glob(f"*{self.SUFFIX}") if f.stem.isdigit()]
            self._sink = pa.OSFile(str(self.folder / f"{max(taken, default=0) + 1:04d}{self.SUFFIX}"), "wb")
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
        dim = self.schema.field("vector").type.list_size
        columns = [pa.array(images, pa.string()), pa.array(digests, pa.string()), _vectors(vectors, dim)]
        self._writer.write_batch(pa.record_batch(columns, schema=self.schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def clear(self) -> None:
        """Forget the checkpoint: call once the complete table is written."""
        self.close()
        for file in self.folder.glob(f"*{self.SUFFIX}"):
            file.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


CHECKPOINT_DIR = "images.partial"  # beside images.parquet; not a DVC output: only a killed run leaves it


def previous_table(path: Path) -> pd.DataFrame | None:
    """The last run's table, the cache; one that cannot be read is only a lost cache: recompute."""
    import sys

    if not path.is_file():
        return None
    try:
        return read_features(path)
    except InputFileError as e:
        print(f"features: warning: ignoring the previous table, everything is recomputed: {e}", file=sys.stderr)
        return None


def update_features(mentions: pd.DataFrame, table_path: Path, encoder: ImageEncoder, batch_size: int,
                    missing_image: str) -> dict:
    """The features stage: encode what the previous table and an unfinished run's checkpoint do not
    hold (for the same encoder and the same file bytes), write the table, then drop the checkpoint;
    returns the report. The table is written before the checkpoint goes, so a run killed in between
    finds a checkpoint that the table already holds, and a report (written after this) only
    describes a complete table."""
    import sys

    cache = previous_table(table_path)
    checkpoint = Checkpoint(table_path.parent / CHECKPOINT_DIR, encoder.name, encoder.dim)
    resume = checkpoint.read()
    if resume is not None:
        print(f"features: resuming an unfinished run: {len(resume)} vectors in {checkpoint.folder}", file=sys.stderr)
    try:
        table, report = encode_mentions(mentions, encoder, batch_size, missing_image, cache, resume,
                                        on_batch=checkpoint.append)
    finally:
        checkpoint.close()
    write_features(table, table_path)
    checkpoint.clear()
    return report
