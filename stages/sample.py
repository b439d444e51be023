"""sample: generate the embedded synthetic multimodal dataset (GEMEL JSON lines + images + KB)."""
from __future__ import annotations

import argparse
import json
import sys

from gemel.config import ConfigError, SampleParams, load_params, section
from gemel.data.sample import generate_sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        p = section(load_params(args.params), "sample", SampleParams)
    except ConfigError as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return 2
    summary = generate_sample(p.out, seed=p.seed, train_per_entity=p.train_per_entity,
                              dev_per_entity=p.dev_per_entity, test_per_entity=p.test_per_entity,
                              image_size=p.image_size)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
