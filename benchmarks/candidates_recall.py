"""Candidate recall on a real dataset's dev split: what the candidates stage finds, and how the
ranker alone (its first candidate) compares with the two reference rules on the same mentions.

    python -m benchmarks.candidates_recall wikimel               # full train, the first 200 dev mentions
    python -m benchmarks.candidates_recall wikidiverse --dev 0   # every dev mention
    python -m benchmarks.candidates_recall wikimel --set candidates.fuzzy=0
    python -m benchmarks.candidates_recall wikimel --dev 0 --variant candidates.dense=0 \
        --variant candidates.dense=10,candidates.dense_sim=true   # several settings, one encoding

The preset's files are read from `--raw` (default ../shared/data, the folders data/raw/README.md
names; GEMEL_SHARED_DATA sets it, as for the tests), not from data/raw. Test mentions are dropped
right after prepare: nothing here reads them.
Prints, for dev: mentions, recall@1 (the ranker alone's accuracy), recall@16 and @K, recall per
source, copy_mention and alias_prior accuracy, recall@1 where the mention differs from the gold
name, the wall time of prepare and of the candidates computation, and the peak resident memory.
With the dense part on (candidates.dense > 0 or dense_sim), also its own time (embedding the KB,
embedding the mentions, the nearest-neighbour products) and the peak resident memory before and
after it: the candidates report cannot hold them (it must stay byte-deterministic). The KB's
embeddings are cached in `--cache` (keyed as the stage keys them), and `--variant`s share one
index: the mentions are embedded once for all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gemel.config import CandidatesParams, apply_override, load_params, prepare_params, section
from gemel.data.prepare import prepare
from gemel.evaluate.metrics import baselines, bucket_flags
from gemel.search.candidates import dense_on, generate

ROOT = Path(__file__).resolve().parent.parent
RAW = Path(os.environ.get("GEMEL_SHARED_DATA", ROOT.parent / "shared" / "data"))
KS = (1, 4, 16, 64)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rate(x: np.ndarray) -> float | None:
    return round(float(np.mean(x)), 4) if len(x) else None


def dev_summary(mentions: pd.DataFrame, kb: pd.DataFrame, table: pd.DataFrame, top: int) -> dict:
    """Recall, recall per source, the baselines and the 'mention differs' bucket on linked dev mentions."""
    dev = mentions[(mentions["split"] == "dev") & ~mentions["is_nil"]].reset_index(drop=True)
    cands = table.set_index("id").loc[dev["id"]]
    ranks = np.array([list(c).index(g) + 1 if g in list(c) else 0 for c, g in zip(cands["cand_ids"], dev["entity_id"])])
    # The source tag of the gold candidate (alias, name, alias+name, ...), or None when not found.
    gold_src = [list(s)[r - 1] if r else None for s, r in zip(cands["cand_sources"], ranks)]
    found = (ranks >= 1)
    out: dict = {"mentions": int(len(dev)), **{f"recall@{k}": rate(found & (ranks <= k)) for k in KS if k <= top}}
    sources = sorted({p for s in gold_src if s for p in s.split("+")} | {"alias", "name"})
    out["by_source"] = {}
    for src in sources:
        has = np.array([s is not None and src in s.split("+") for s in gold_src])
        alone = np.array([s == src for s in gold_src])
        out["by_source"][src] = {"recall@16": rate(has & (ranks <= 16)), f"recall@{top}": rate(has),
                                 "only_this_source": rate(alone)}
    pred = pd.DataFrame({"mention": dev["mention"], "gold_name": dev["entity_name"], "gold_id": dev["entity_id"],
                         "is_nil": False, "id": dev["id"], "has_image": False})
    base, _ = baselines(pred, mentions, kb)
    out["copy_mention"] = base["copy_mention"]["accuracy"]
    out["alias_prior"] = base["alias_prior"]["accuracy"]
    differs = ~bucket_flags(pred, mentions)["mention_equals_gold_name"]
    out["mention_differs"] = {"mentions": int(differs.sum()), "recall@1": rate((ranks == 1)[differs]),
                              "recall@16": rate((found & (ranks <= 16))[differs])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a preset of params.yaml's datasets: wikimel, wikidiverse, richpedia")
    ap.add_argument("--dev", type=int, default=200, help="the first N dev mentions (0: all)")
    ap.add_argument("--raw", type=Path, default=RAW, help="folder holding the presets' data/raw/ folders")
    ap.add_argument("--set", action="append", default=[], help="section.key=value, as the stages take it")
    ap.add_argument("--variant", action="append", default=[],
                    help="comma-separated candidates.key=value settings on top of --set, one run each (default: one)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gemel-bench"),
                    help="folder of the KB embeddings cache, one file per dataset")
    args = ap.parse_args()

    limit = "null" if args.dev == 0 else str(args.dev)
    params = load_params(ROOT / "params.yaml", [f"dataset={args.dataset}", f"prepare.limit.dev={limit}", *args.set])
    preset = params["datasets"][args.dataset]
    for key in ("input", "kb", "split_file", "images"):  # data/raw/<folder> -> <raw>/<folder>
        if isinstance(preset.get(key), str) and preset[key].startswith("data/raw/"):
            preset[key] = str(args.raw / preset[key].removeprefix("data/raw/"))
    p = prepare_params(params)
    t0 = time.perf_counter()
    prepared = prepare(p, root=Path("/"))
    t_prepare = time.perf_counter() - t0
    mentions = prepared.mentions[prepared.mentions["split"] != "test"].reset_index(drop=True)
    index = None
    for variant in args.variant or [""]:
        vp = {**params, "candidates": dict(params["candidates"])}
        for assignment in filter(None, variant.split(",")):
            apply_override(vp, assignment)
        cp = section(vp, "candidates", CandidatesParams)
        rss_before = peak_rss_gib()
        t0 = time.perf_counter()
        dense: dict = {}
        spent = dict(index.seconds) if index is not None else {}  # what earlier variants spent
        if dense_on(cp) and index is None:
            from gemel.search.dense import DenseIndex, load_encoder

            args.cache.mkdir(parents=True, exist_ok=True)
            index = DenseIndex.of(prepared.kb, load_encoder(cp.encoder, params["text_encoders"], cp.precision),
                                  args.cache / f"{args.dataset}_kb_embeddings.parquet")
            dense["kb_cached"] = index.reused
        table, report = generate(mentions, prepared.kb, cp, index if dense_on(cp) else None)
        t_cands = time.perf_counter() - t0
        if dense_on(cp):
            dense["seconds"] = {k: round(v - spent.get(k, 0.0), 1) for k, v in index.seconds.items()}
            dense["mention_texts_embedded"] = len(index.embedded)
        summary = {"dataset": args.dataset, "variant": variant, "kb_entities": int(len(prepared.kb)),
                   "described": int(prepared.kb["description"].notna().sum()) if "description" in prepared.kb else 0,
                   "train_mentions": int((mentions["split"] == "train").sum()),
                   "candidates": {k: v for k, v in vars(cp).items() if k != "out"},
                   "dev": dev_summary(mentions, prepared.kb, table, cp.top_k),
                   "weights": report.get("weights"),
                   "seconds": {"prepare": round(t_prepare, 1), "candidates": round(t_cands, 1)},
                   "dense": dense or None,
                   "peak_rss_gib": {"before": round(rss_before, 2), "after": round(peak_rss_gib(), 2)}}
        print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
