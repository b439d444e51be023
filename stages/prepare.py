"""prepare: raw dataset -> data/prepared/{mentions,kb}.parquet and report.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gemel.config import ConfigError, PrepareParams, load_params, section
from gemel.data.importers import DataError
from gemel.data.prepare import prepare
from gemel.data.tables import KB, MENTIONS, write_parquet_atomic, write_text_atomic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        p = section(load_params(args.params), "prepare", PrepareParams)
        prepared = prepare(p)
    except (ConfigError, DataError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    out = Path(p.out)
    # Tables first, report last: a report only ever describes tables that were fully written.
    write_parquet_atomic(prepared.mentions, out / "mentions.parquet", MENTIONS)
    write_parquet_atomic(prepared.kb, out / "kb.parquet", KB)
    text = json.dumps(prepared.report, indent=2)
    write_text_atomic(text + "\n", out / "report.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
