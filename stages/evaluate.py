"""evaluate: {train.out}/{model.llm}/predictions.parquet + the prepared tables -> metrics.json (accuracy,
hits@k, MRR, the copy_mention and alias_prior baselines on the same mentions, the error breakdown)
and breakdown.md (that breakdown as a table)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa

from gemel.config import CandidatesParams, EvaluateParams, ModelParams, TrainParams, section
from gemel.data.tables import read_kb, read_mentions, write_text_atomic
from gemel.metrics import MetricsError, baselines, breakdown, breakdown_table, compute_metrics, read_predictions
from stages import _cli


def read_table(path: Path, reader, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise MetricsError(f"{path}: no such file (run the {what} stage first)")
    try:
        return reader(path)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise MetricsError(f"{path}: not a {what} table: {e}") from None


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    e = section(params, "evaluate", EvaluateParams)
    run_dir = Path(section(params, "train", TrainParams).out) / section(params, "model", ModelParams).llm
    prepared = Path(params["prepare"]["out"])
    pred = read_predictions(run_dir / "predictions.parquet")
    kb = read_table(prepared / "kb.parquet", read_kb, "prepare")
    mentions = read_table(prepared / "mentions.parquet", read_mentions, "prepare")
    cands_path = Path(section(params, "candidates", CandidatesParams).out) / "candidates.parquet"
    cands = pd.read_parquet(cands_path, columns=["id", "cand_ids"]) if cands_path.is_file() else None
    metrics = compute_metrics(pred, set(kb["name"].dropna()), e.hits_at)
    decode_report = run_dir / "decode_report.json"
    if decode_report.is_file():  # what decoding chose: the mode and, candidate-aware, the fusion weight
        d = json.loads(decode_report.read_text(encoding="utf-8"))
        metrics["decode"] = {k: d[k] for k in ("mode", "split", "fusion_weight", "chosen_on", "mentions_per_s") if k in d}
    metrics["baselines"], rule = baselines(pred, mentions, kb)
    metrics["breakdown"] = breakdown(pred, mentions, rule, cands)
    text = json.dumps(metrics, indent=2)
    write_text_atomic(text + "\n", run_dir / "metrics.json")
    write_text_atomic(breakdown_table(metrics["breakdown"]), run_dir / "breakdown.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("evaluate", main, errors=(MetricsError,)))
