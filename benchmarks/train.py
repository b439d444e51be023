"""Benchmark mapper training on RichpediaMEL at the paper's settings (16 demonstrations, k = 4,
SmolLM2-135M): examples/s and peak memory.

    python -m benchmarks.train [--n 32] [--batch-size 1] [--grad-accum 16]

The loss needs vocabulary logits only at the answer positions, and the frozen LLM's weights get
no gradients, so a step costs about one forward and one activation-only backward pass.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.richpedia import build, peak_rss_gib
from gemel.config import TrainParams
from gemel.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=32, help="train examples (one epoch)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=16)
    ap.add_argument("--demos", type=int, default=16)
    args = ap.parse_args()
    w = build(num_demos=args.demos)
    train_ids = w.mentions.loc[w.mentions["split"] == "train", "id"].sample(n=args.n, random_state=0)
    examples = [w.builder.example(i, with_target=True) for i in train_ids]
    rss_before = peak_rss_gib()
    p = TrainParams(epochs=1, lr=1e-4, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=0)
    train(w.model, examples[:2], w.features, w.pad_id, TrainParams(epochs=1, batch_size=1, grad_accum=1))  # warm-up
    t = time.perf_counter()
    hist = train(w.model, examples, w.features, w.pad_id, p, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "examples": len(examples), "demos": args.demos, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "prompt_tokens_mean": round(float(np.mean([len(e.ids) + len(e.target) for e in examples])), 1),
        "examples_per_s": round(len(examples) / seconds, 3),
        "seconds_per_example": round(seconds / len(examples), 3),
        "optimizer_steps": len(hist.loss),
        "peak_rss_gib_before_training": round(rss_before, 2),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
