"""features: every image of {prepare.out}/mentions.parquet -> one vector each, in
{features.out}/images.parquet (incremental: rows of the previous table from the same encoder are
reused) and report.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa

from gemel.config import FeaturesParams, section
from gemel.data.tables import read_mentions, write_text_atomic
from gemel.encoders import EncoderError, build_image_encoder
from gemel.features import ImageError, encode_mentions, read_features, write_features
from stages import _cli


def previous_table(path: Path) -> pd.DataFrame | None:
    """The last run's table, the cache; one that cannot be read is only a lost cache: recompute."""
    if not path.is_file():
        return None
    try:
        return read_features(path)
    except (ImageError, pa.ArrowInvalid, OSError) as e:
        print(f"features: warning: ignoring the previous table, everything is recomputed: {e}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = section(params, "features", FeaturesParams)
    mentions_path = Path(params["prepare"]["out"]) / "mentions.parquet"
    if not mentions_path.is_file():
        raise ImageError(f"{mentions_path}: no such file (run the prepare stage first)")
    out = Path(p.out)
    table_path = out / "images.parquet"
    cache = previous_table(table_path)
    encoder = build_image_encoder(p)
    table, report = encode_mentions(read_mentions(mentions_path), encoder, p.batch_size, p.missing_image, cache)
    # Table first, report last: a report only ever describes a table that was fully written.
    write_features(table, table_path)
    text = json.dumps(report, indent=2)
    write_text_atomic(text + "\n", out / "report.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("features", main, errors=(ImageError, EncoderError)))
