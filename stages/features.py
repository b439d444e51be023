"""features: every image of {prepare.out}/mentions.parquet -> one vector each, in
{features.out}/images.parquet (incremental: a vector of the previous table is reused for the same
encoder and the same file bytes, by sha256; a killed run resumes from {features.out}/images.partial/)
and report.json (`stale`: images whose file changed since the previous table)."""
from __future__ import annotations

import json
import sys

from gemel import stack
from gemel.atomic import write_text_atomic
from gemel.config import FeaturesParams, section
from gemel.data.tables import read_mentions
from gemel.paths import Artifacts
from gemel.vision.encoders import build_image_encoder
from gemel.vision.features import update_features
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p, a = section(params, "features", FeaturesParams), Artifacts.of(params)
    encoder = build_image_encoder(p)
    report = update_features(read_mentions(a.mentions), a.features, encoder, p.batch_size, p.missing_image)
    text = json.dumps({**report, "stack": stack.record(encoder.device), "cost": _cli.cost()}, indent=2)
    write_text_atomic(text + "\n", a.features_report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("features", main))
