"""decode: constrained beam search for every mention of one split ->
{train.out}/{model.llm}/predictions.parquet (gold, predicted name and id, beams and scores)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from gemel.config import DecodeParams, ModelParams, section
from gemel.data.tables import read_mentions, write_parquet_atomic
from gemel.linker import build_linker
from gemel.llm import LLMError
from stages import _cli

PREDICTIONS = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("mention", pa.string()),
    ("gold_id", pa.string()), ("gold_name", pa.string()), ("is_nil", pa.bool_()), ("has_image", pa.bool_()),
    ("pred_id", pa.string()), ("pred_name", pa.string()),
    ("beams", pa.list_(pa.string())), ("beam_ids", pa.list_(pa.string())), ("beam_scores", pa.list_(pa.float32())),
])


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    m, dp = section(params, "model", ModelParams), section(params, "decode", DecodeParams)
    out = Path(params["train"]["out"]) / m.llm
    mentions = read_mentions(Path(params["prepare"]["out"]) / "mentions.parquet")
    demos = pd.read_parquet(Path(params["retrieve"]["out"]) / "demos.parquet")
    linker = build_linker(params, mentions, demos, Path(params["features"]["out"]) / "images.parquet", out / "trie.npz")
    linker.model.load_mapper(out / "mapper.safetensors")
    split = mentions[mentions["split"] == dp.split].reset_index(drop=True)
    t0 = time.perf_counter()
    hyps = linker.predict(list(split["id"]), dp, progress=True)
    seconds = time.perf_counter() - t0
    names, ids = linker.trie.names, linker.trie.entity_ids
    has_image = [linker.builder.image[i] >= 0 for i in split["id"]]
    pred = pd.DataFrame({
        "id": split["id"], "split": split["split"], "mention": split["mention"],
        "gold_id": split["entity_id"], "gold_name": split["entity_name"], "is_nil": split["is_nil"],
        "has_image": has_image,
        "pred_id": [ids[h[0].value] if h else None for h in hyps],
        "pred_name": [names[h[0].value] if h else None for h in hyps],
        "beams": [[names[x.value] for x in h] for h in hyps],
        "beam_ids": [[ids[x.value] for x in h] for h in hyps],
        "beam_scores": [[x.score for x in h] for h in hyps],
    })
    write_parquet_atomic(pred, out / "predictions.parquet", PREDICTIONS)
    linked = pred[~pred["is_nil"]]
    print(json.dumps({"llm": m.llm, "split": dp.split, "mentions": len(pred), "seconds": round(seconds, 1),
                      "mentions_per_s": round(len(pred) / max(seconds, 1e-9), 3),
                      "accuracy": round(float((linked["pred_name"] == linked["gold_name"]).mean()), 4)
                      if len(linked) else None}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("decode", main, errors=(LLMError, FileNotFoundError, ValueError)))
