"""Benchmark mapper training on RichpediaMEL at the paper's settings (16 demonstrations, k = 4,
SmolLM2-135M): examples/s and peak memory, for each training setting that changes speed.

    python -m benchmarks.train [--n 24] [--batch-size 1] [--grad-accum 16]

The loss needs vocabulary logits only at the answer positions, and the frozen LLM's weights get
no gradients, so a paper-exact step costs one forward and one activation-only backward pass over
the whole prompt. `train.precision: bf16` runs both in bf16 (fast on CPUs with AVX512-BF16 or
AMX); `train.demo_image_grad: false` backpropagates through the question only, so a step costs
about one forward pass. The original code trained at 0.224 examples/s here; the target is 1.7x.

    python -m benchmarks.train --profile 3

profiles paper-exact fp32 steps instead (torch.profiler) and prints where the time goes, by kind
of op. At batch 1 (the paper's) the attention already takes sdpa's fastest path: no mask, causal,
grouped-query heads folded in (`enable_gqa`), so no repeat_kv copy; and the LM head runs only at
the answer positions. Measured on the 2-core CPU, quiet: 3.89 s per step, 51% matrix products, 32%
flash attention (24% its backward), 14% elementwise ops, 3% the rest; see docs/speed.md
(Training).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.richpedia import build, peak_rss_gib
from gemel.config import TrainParams
from gemel.generation.training import train

ORIGINAL_EXAMPLES_PER_S = 0.224
SETTINGS = {  # name -> (precision, demo_image_grad)
    "fp32": ("fp32", True), "bf16": ("bf16", True),
    "fp32_question_grad": ("fp32", False), "bf16_question_grad": ("bf16", False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=24, help="train examples (one epoch) per setting")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=16)
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the LLM is then bf16)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile N paper-exact fp32 steps (batch 1) by kind of op instead of timing the settings")
    args = ap.parse_args()
    w = build(num_demos=args.demos, device=args.device)
    train_ids = w.mentions.loc[w.mentions["split"] == "train", "id"].sample(n=args.n, random_state=0)
    examples = [w.builder.example(i, with_target=True) for i in train_ids]
    if args.profile:
        profile(w, examples[:args.profile + 1])
        return
    rows = []
    for name in args.settings:
        precision, demo_grad = SETTINGS[name]
        p = TrainParams(epochs=1, lr=1e-4, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=0,
                        precision=precision, demo_image_grad=demo_grad)
        train(w.model, examples[:2], w.features, w.pad_id, TrainParams(epochs=1, batch_size=1, grad_accum=1,
              precision=precision, demo_image_grad=demo_grad), progress=False)  # warm-up
        t = time.perf_counter()
        hist = train(w.model, examples, w.features, w.pad_id, p, progress=False)
        seconds = time.perf_counter() - t
        rows.append({
            "setting": name, "precision": precision, "demo_image_grad": demo_grad,
            "examples_per_s": round(len(examples) / seconds, 3),
            "speedup_vs_original": round(len(examples) / seconds / ORIGINAL_EXAMPLES_PER_S, 2),
            "seconds_per_example": round(seconds / len(examples), 3),
            "optimizer_steps": len(hist.loss),
        })
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({
        "examples": len(examples), "demos": args.demos, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "prompt_tokens_mean": round(float(np.mean([len(e.ids) + len(e.target) for e in examples])), 1),
        "peak_rss_gib": round(peak_rss_gib(), 2), "settings": rows,
    }, indent=2))


# torch.profiler op names -> the kind of work they are (the rest: "other").
KINDS = {
    "matmul (weights, forward and activation gradients)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention (flash, forward and backward)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                                "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "elementwise (RMSNorm, rotary, SwiGLU, residuals; forward and backward)": (
        "aten::mul", "aten::add", "aten::add_", "aten::sub", "aten::div", "aten::neg", "aten::pow", "aten::rsqrt",
        "aten::mean", "aten::sum", "aten::silu", "aten::silu_backward", "aten::cat", "aten::copy_", "aten::fill_",
        "aten::zero_", "aten::slice_backward", "aten::masked_scatter", "aten::masked_fill"),
}


def profile(w, examples) -> None:
    """Self CPU time by kind of op over paper-exact fp32 steps (the first example warms up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from gemel.generation.prompt import collate

    def step(e) -> None:
        w.model.loss(collate([e], w.features, w.pad_id)).backward()

    step(examples[0])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for e in examples[1:]:
            step(e)
    ops = {a.key: a.self_cpu_time_total / 1e6 for a in prof.key_averages()}
    total = sum(ops.values())
    kinds = {k: sum(ops.get(n, 0.0) for n in names) for k, names in KINDS.items()}
    kinds["other"] = total - sum(kinds.values())
    print(json.dumps({"steps": len(examples) - 1, "seconds_per_step": round(total / (len(examples) - 1), 3),
                      "share": {k: round(v / total, 3) for k, v in kinds.items()},
                      "top_ops": {k: round(v / total, 3) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:10]}},
                     indent=2))


if __name__ == "__main__":
    main()
