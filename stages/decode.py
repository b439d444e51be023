"""decode: link every mention of one split -> {train.out}/{model.llm}/predictions.parquet (gold, predicted
name and id, ranked entities and scores) and decode_report.json (the settings, mode, fusion weight, speed:
what `gemel link` links new inputs with)."""
from __future__ import annotations

import json
import sys

from gemel import stack
from gemel.atomic import write_text_atomic
from gemel.config import DecodeParams, ModelParams, section
from gemel.data.tables import PREDICTIONS_SCHEMA, write_parquet_atomic
from gemel.link.linker import pipeline_linker
from gemel.link.predict import decode_split
from gemel.paths import DECODE_REPORT, PREDICTIONS, Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    dp = section(params, "decode", DecodeParams)
    linker, mentions = pipeline_linker(params, dp, mapper=True)
    pred, report = decode_split(linker, mentions, dp, progress=True)
    a = Artifacts.of(params)
    write_parquet_atomic(pred, a.in_run(PREDICTIONS), PREDICTIONS_SCHEMA)
    text = json.dumps({"llm": section(params, "model", ModelParams).llm, **report,
                       "stack": stack.record(str(linker.model.device)), "cost": _cli.cost()}, indent=2)
    write_text_atomic(text + "\n", a.in_run(DECODE_REPORT))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("decode", main))
