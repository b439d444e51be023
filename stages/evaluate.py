"""evaluate: {train.out}/{model.llm}/predictions.parquet + the prepared tables -> metrics.json (accuracy,
hits@k, MRR, the copy_mention and alias_prior baselines on the same mentions, the error breakdown)
and breakdown.md (that breakdown as a table)."""
from __future__ import annotations

import json
import sys

from gemel.atomic import write_text_atomic
from gemel.config import EvaluateParams, section
from gemel.evaluate.metrics import breakdown_table, evaluate_run
from gemel.paths import BREAKDOWN, METRICS, Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    a = Artifacts.of(params)
    metrics = evaluate_run(a, section(params, "evaluate", EvaluateParams).hits_at)
    text = json.dumps(metrics, indent=2)
    write_text_atomic(text + "\n", a.in_run(METRICS))
    write_text_atomic(breakdown_table(metrics["breakdown"]), a.in_run(BREAKDOWN))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("evaluate", main))
