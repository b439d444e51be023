"""sample: generate the embedded synthetic multimodal dataset (GEMEL JSON lines + images + KB)."""
from __future__ import annotations

import json
import sys

from gemel.config import SampleParams, section
from gemel.data.sample import generate_sample
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    p = section(_cli.parse(__doc__, argv), "sample", SampleParams)
    summary = generate_sample(p.out, seed=p.seed, train_per_entity=p.train_per_entity,
                              dev_per_entity=p.dev_per_entity, test_per_entity=p.test_per_entity,
                              image_size=p.image_size)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("sample", main))
