"""decode: link every mention of one split -> {train.out}/{model.llm}/predictions.parquet (gold, predicted
name and id, ranked entities and scores) and decode_report.json (mode, fusion weight, speed)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from gemel.candidates import CandidateError
from gemel.config import DecodeParams, ModelParams, section
from gemel.data.tables import read_mentions, write_parquet_atomic, write_text_atomic
from gemel.linker import build_linker, load_candidates
from gemel.llm import LLMError
from stages import _cli

PREDICTIONS = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("mention", pa.string()),
    ("gold_id", pa.string()), ("gold_name", pa.string()), ("is_nil", pa.bool_()), ("has_image", pa.bool_()),
    ("pred_id", pa.string()), ("pred_name", pa.string()),
    ("beams", pa.list_(pa.string())), ("beam_ids", pa.list_(pa.string())), ("beam_scores", pa.list_(pa.float32())),
    ("llm_scores", pa.list_(pa.float32())), ("cand_priors", pa.list_(pa.float32())),  # candidate-aware mode only
])


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    m, dp = section(params, "model", ModelParams), section(params, "decode", DecodeParams)
    out = Path(params["train"]["out"]) / m.llm
    mentions = read_mentions(Path(params["prepare"]["out"]) / "mentions.parquet")
    demos = pd.read_parquet(Path(params["retrieve"]["out"]) / "demos.parquet")
    linker = build_linker(params, mentions, demos, Path(params["features"]["out"]) / "images.parquet",
                          out / "trie.npz", load_candidates(params))
    linker.model.load_mapper(out / "mapper.safetensors")
    report: dict = {"llm": m.llm, "split": dp.split, "mode": "paper" if dp.candidates == "none" else "candidates"}
    weight = 0.0
    if dp.candidates != "none":
        dev = mentions[(mentions["split"] == "dev") & ~mentions["is_nil"]]
        weight, chosen = linker.fusion_weight(dev, dp)
        report.update(chosen)
    split = mentions[mentions["split"] == dp.split].reset_index(drop=True)
    t0 = time.perf_counter()
    ranked = linker.rank(list(split["id"]), dp, weight, progress=True)
    seconds = time.perf_counter() - t0
    pred = linker.predictions(split, ranked)
    write_parquet_atomic(pred, out / "predictions.parquet", PREDICTIONS)
    linked = pred[~pred["is_nil"]]
    report.update({"mentions": len(pred), "seconds": round(seconds, 1),
                   "mentions_per_s": round(len(pred) / max(seconds, 1e-9), 3),
                   "accuracy": round(float((linked["pred_name"] == linked["gold_name"]).mean()), 4) if len(linked) else None})
    text = json.dumps(report, indent=2)
    write_text_atomic(text + "\n", out / "decode_report.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("decode", main, errors=(LLMError, CandidateError, FileNotFoundError, ValueError)))
