"""features: every image of {prepare.out}/mentions.parquet -> one vector each, in
{features.out}/images.parquet (incremental: rows of the previous table from the same encoder are
reused; a killed run resumes from {features.out}/images.partial/) and report.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from gemel import stack
from gemel.config import FeaturesParams, section
from gemel.data.tables import InputFileError, read_mentions, write_text_atomic
from gemel.encoders import build_image_encoder
from gemel.features import Checkpoint, encode_mentions, read_features, write_features
from stages import _cli

CHECKPOINT = "images.partial"  # beside images.parquet; not a DVC output: only a killed run leaves it


def previous_table(path: Path) -> pd.DataFrame | None:
    """The last run's table, the cache; one that cannot be read is only a lost cache: recompute."""
    if not path.is_file():
        return None
    try:
        return read_features(path)
    except InputFileError as e:
        print(f"features: warning: ignoring the previous table, everything is recomputed: {e}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = section(params, "features", FeaturesParams)
    mentions = read_mentions(Path(params["prepare"]["out"]) / "mentions.parquet")
    out = Path(p.out)
    table_path = out / "images.parquet"
    cache = previous_table(table_path)
    encoder = build_image_encoder(p)
    checkpoint = Checkpoint(out / CHECKPOINT, encoder.name, encoder.dim)
    resume = checkpoint.read()
    if resume is not None:
        print(f"features: resuming an unfinished run: {len(resume)} vectors in {checkpoint.folder}", file=sys.stderr)
    try:
        table, report = encode_mentions(mentions, encoder, p.batch_size, p.missing_image, cache, resume,
                                        on_batch=checkpoint.append)
    finally:
        checkpoint.close()
    # Table, then checkpoint gone, then report: a report only ever describes a table that was
    # fully written, and a run killed in between finds a checkpoint that the table already holds.
    write_features(table, table_path)
    checkpoint.clear()
    text = json.dumps({**report, "stack": stack.record(encoder.device)}, indent=2)
    write_text_atomic(text + "\n", out / "report.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("features", main))
