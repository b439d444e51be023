"""Linking accuracy on a real dataset, both modes on the same mentions, beside the baselines.

Runs the pipeline's own stage CLIs (the code path of `dvc repro`) on a preset into a scratch
folder: the shared stages once, then per mode the trie, train, decode and evaluate stages. Prints
one table: mode, split, mentions, accuracy, the copy_mention and alias_prior baselines on the same
mentions, the fusion weight chosen on dev, and seconds per mention.

    python -m benchmarks.linking                         # RichpediaMEL test, all 3,561 mentions, text only
    python -m benchmarks.linking --test 1000 --dev 200   # a deterministic subset (the first N)

Settings are chosen on dev only (the fusion weight, the ranker's fit on train): the test split
is decoded once per mode. Text only by default, since RichpediaMEL published 9 of its images.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gemel.config import load_params

ROOT = Path(__file__).resolve().parent.parent
# train.dev_candidates: the dev evaluation of a candidate-aware run links as its decoding will.
MODES = {"paper": ["decode.candidates=none"],
         "candidates": ["decode.candidates=constrained", "train.dev_candidates=constrained"]}


def stage(name: str, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", f"stages.{name}", "--params", "params.yaml", *(x for s in sets for x in ("--set", s))]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if res.returncode != 0:
        sys.exit(f"{name} failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia", help="a preset of params.yaml (its files must be present)")
    ap.add_argument("--train", type=int, default=None, help="first N train mentions (default: all)")
    ap.add_argument("--dev", type=int, default=500, help="first N dev mentions: the fusion weight is chosen on them")
    ap.add_argument("--test", type=int, default=None, help="first N test mentions (default: all)")
    ap.add_argument("--image", action="store_true", help="use the images (default: text only)")
    ap.add_argument("--modes", default="paper,candidates", help="comma-separated: paper, candidates")
    ap.add_argument("--out", default="benchmarks/out/linking", help="scratch folder (git-ignored)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more KEY=VALUE overrides")
    ap.add_argument("--reuse", action="store_true",
                    help="a mode whose predictions exist in --out is only re-evaluated (the shared stages still run)")
    args = ap.parse_args()
    out = Path(args.out)
    limit = lambda n: "null" if n is None else str(n)  # noqa: E731
    shared = [f"dataset={args.dataset}", f"prepare.out={out}/prepared", f"features.out={out}/features",
              f"retrieve.out={out}/demos", f"candidates.out={out}/candidates",
              f"prepare.limit.train={limit(args.train)}", f"prepare.limit.dev={limit(args.dev)}",
              f"prepare.limit.test={limit(args.test)}", f"model.use_image={'true' if args.image else 'false'}",
              "retrieve.method=random",  # no demonstrations (model.num_demos: 0): no need to encode the pool
              "train.dev_limit=200", *args.extra]
    for name in ("prepare", "features", "retrieve", "candidates"):
        print(f"{name}: {stage(name, shared):.1f} s", file=sys.stderr)
    rows = []
    llm = load_params(ROOT / "params.yaml", [s for s in args.extra if s.startswith("model.llm=")])["model"]["llm"]
    for mode in args.modes.split(","):
        sets = [*shared, f"train.out={out}/{mode}", *MODES[mode]]
        run = out / mode / llm
        done = args.reuse and (run / "predictions.parquet").is_file()
        for name in ("evaluate",) if done else ("trie", "train", "decode", "evaluate"):
            print(f"{mode} {name}: {stage(name, sets):.1f} s", file=sys.stderr)
        d = json.loads((run / "decode_report.json").read_text())
        m = json.loads((run / "metrics.json").read_text())
        rows.append((mode, d["split"], m["evaluated"], m["accuracy"], m["baselines"]["copy_mention"]["accuracy"],
                     m["baselines"]["alias_prior"]["accuracy"], d.get("fusion_weight"),
                     round(d["seconds"] / max(d["mentions"], 1), 3)))
    recall = json.loads((out / "candidates" / "report.json").read_text())["recall"]
    print(f"\n{args.dataset}, {'with images' if args.image else 'text only'}; candidate recall: "
          + ", ".join(f"{s} {r}" for s, r in recall.items()))
    print("| mode | split | mentions | accuracy | copy_mention | alias_prior | fusion weight (dev) | s/mention |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join("-" if x is None else str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
