"""prepare: the preset `dataset` names (raw files) -> {prepare.out}/{mentions,kb}.parquet and report.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gemel import paths
from gemel.atomic import write_text_atomic
from gemel.config import prepare_params, preset_source
from gemel.data.prepare import prepare
from gemel.data.tables import KB, MENTIONS, write_parquet_atomic
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = prepare_params(params)
    prepared = prepare(p, source=preset_source(params))
    out = Path(p.out)
    # Tables first, report last: a report only ever describes tables that were fully written.
    write_parquet_atomic(prepared.mentions, out / paths.MENTIONS, MENTIONS)
    write_parquet_atomic(prepared.kb, out / paths.KB, KB)
    text = json.dumps({**prepared.report, "cost": _cli.cost()}, indent=2)
    write_text_atomic(text + "\n", out / paths.PREPARE_REPORT)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("prepare", main))
