"""Benchmark constrained decoding on RichpediaMEL at the paper's settings (16 demonstrations,
5 beams, SmolLM2-135M, the 17,805-name trie).

    python -m benchmarks.decode [--n 16] [--batch-size 8]

Prints mentions/s and the ratio of decode time per mention to one plain forward pass over the
same prompt (the target is at most 1.25: each prompt is prefilled once and the beams attend to
its one KV cache). For contrast it also times what the original code did: a forward over one
copy of the prompt per beam. With --candidates K it also times candidate-aware decoding on the
same prompts (every one of the mention's K candidates scored exactly; target: at most 1.2x the
paper mode's time per mention).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.richpedia import build, peak_rss_gib
from gemel.generation.decoding import beam_search, decode
from gemel.generation.prompt import collate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=16, help="test mentions decoded")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the LLM is then bf16)")
    ap.add_argument("--candidates", type=int, default=0, help="K: also time candidate-aware decoding with K candidates")
    args = ap.parse_args()
    w = build(num_demos=args.demos, device=args.device)
    test = w.mentions[w.mentions["split"] == "test"]
    ids = list(test["id"].sample(n=args.n, random_state=0))
    examples = [w.builder.example(i, with_target=False) for i in ids]
    lengths = [len(e.ids) for e in examples]
    trie, model = w.trie.trie, w.model

    def forward(batch) -> None:  # one plain forward over the prompt, the LM head on its last token
        hidden = model.forward_hidden(batch, use_cache=False).last_hidden_state[:, -1]
        model.logits(hidden).cpu()  # .cpu() waits for a GPU

    with torch.inference_mode():
        forward(collate(examples[:1], w.features, w.pad_id))  # warm-up
        t = time.perf_counter()
        for e in examples:
            forward(collate([e], w.features, w.pad_id))
        t_forward = (time.perf_counter() - t) / len(examples)
        t = time.perf_counter()
        for e in examples[: max(1, len(examples) // 4)]:
            forward(collate([e] * args.beams, w.features, w.pad_id))
        t_per_beam = (time.perf_counter() - t) / max(1, len(examples) // 4)
    t = time.perf_counter()
    for e in examples:
        beam_search(model, collate([e], w.features, w.pad_id), trie, args.beams, 32)
    t_single = (time.perf_counter() - t) / len(examples)
    t = time.perf_counter()
    hyps = decode(model, examples, w.features, w.pad_id, trie, args.beams, 32, batch_size=args.batch_size)
    t_batched = (time.perf_counter() - t) / len(examples)
    extra = {}
    if args.candidates:
        import pandas as pd

        from gemel.config import CandidatesParams
        from gemel.generation.decoding import score_candidates
        from gemel.generation.llm import answer_ids
        from gemel.search.candidates import generate

        kb = pd.DataFrame({"entity_id": w.trie.entity_ids.tolist(), "name": w.trie.names.tolist(), "description": None})
        # Names only, lexical sources: what matters here is the cost of scoring K candidates.
        p = CandidatesParams(top_k=args.candidates, pool=100, fit_limit=5000, dense=0, dense_sim=False)
        cands = generate(w.mentions, kb, p)[0].set_index("id")
        seqs = [[answer_ids(w.tokenizer, n) for n in cands.at[i, "cand_names"]] for i in ids]
        t = time.perf_counter()
        score_candidates(model, examples, w.features, w.pad_id, seqs, batch_size=args.batch_size)
        t_cand = (time.perf_counter() - t) / len(examples)
        extra = {"candidates_k": args.candidates, "candidates_s_per_mention_batched": round(t_cand, 3),
                 "ratio_candidates_to_paper_decode": round(t_cand / t_batched, 3)}
    names = set(w.trie.names.tolist())
    print(json.dumps({**extra,
        "mentions": len(examples), "demos": args.demos, "beams": args.beams,
        "prompt_tokens_mean": round(float(np.mean(lengths)), 1),
        "forward_s_per_prompt": round(t_forward, 3),
        "forward_one_copy_per_beam_s": round(t_per_beam, 3),
        "decode_s_per_mention_batch1": round(t_single, 3),
        "decode_s_per_mention_batched": round(t_batched, 3),
        "decode_mentions_per_s_batched": round(1 / t_batched, 3),
        "ratio_decode_to_forward_batch1": round(t_single / t_forward, 3),
        "ratio_decode_to_forward_batched": round(t_batched / t_forward, 3),
        "all_outputs_kb_names": all(w.trie.names[h.value] in names for hs in hyps for h in hs),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
