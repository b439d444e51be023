"""evaluate: {train.out}/{model.llm}/predictions.parquet + {prepare.out}/kb.parquet -> metrics.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa

from gemel.config import EvaluateParams, ModelParams, TrainParams, section
from gemel.data.tables import read_kb, write_text_atomic
from gemel.metrics import MetricsError, compute_metrics, read_predictions
from stages import _cli


def kb_names(path: Path) -> set[str]:
    if not path.is_file():
        raise MetricsError(f"{path}: no such file (run the prepare stage first)")
    try:
        return set(read_kb(path)["name"].dropna())
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise MetricsError(f"{path}: not a KB table (columns entity_id, name, description): {e}") from None


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    e = section(params, "evaluate", EvaluateParams)
    run_dir = Path(section(params, "train", TrainParams).out) / section(params, "model", ModelParams).llm
    pred = read_predictions(run_dir / "predictions.parquet")
    metrics = compute_metrics(pred, kb_names(Path(params["prepare"]["out"]) / "kb.parquet"), e.hits_at)
    text = json.dumps(metrics, indent=2)
    write_text_atomic(text + "\n", run_dir / "metrics.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("evaluate", main, errors=(MetricsError,)))
