"""Candidate generation at scale: the name index on a Wikipedia-sized KB, and the whole
candidates computation on RichpediaMEL.

    python -m benchmarks.candidates                 # 7.4M synthetic names, then RichpediaMEL
    python -m benchmarks.candidates --names 1000000 # smaller

The synthetic KB has Wikipedia's shape: 7.4M names of 1-5 words drawn from a Zipfian vocabulary
of 2M words (common words like "John" or "river" are shared by hundreds of thousands of names),
which is what makes a lexical index slow or large. Memory is the process's peak resident size,
the names themselves included.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from gemel.config import CandidatesParams
from gemel.search.candidates import NameIndex, generate, words

ROOT = Path(__file__).resolve().parent.parent
RICHPEDIA = ROOT.parent / "shared" / "data" / "richpedia-mel"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_names(n: int, vocab: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(3, 10, size=vocab)
    pool = rng.choice(letters, size=int(lens.sum()))
    cuts = np.concatenate([[0], np.cumsum(lens)])
    lexicon = ["".join(pool[cuts[i]:cuts[i + 1]]).capitalize() for i in range(vocab)]
    counts = rng.integers(1, 6, size=n)
    ids = np.minimum(rng.zipf(1.3, size=int(counts.sum())) - 1, vocab - 1)
    cuts = np.concatenate([[0], np.cumsum(counts)])
    return [" ".join(lexicon[j] for j in ids[cuts[i]:cuts[i + 1]]) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=7_400_000)
    ap.add_argument("--vocab", type=int, default=2_000_000)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=100, help="names per query (the candidates stage's pool)")
    ap.add_argument("--old-queries", type=int, default=200,
                    help="of the queries, the first N also searched by the exact product over every name holding "
                         "a query word (NameIndex.search_product, the search before this version), which must "
                         "return the same names; 0: skip")
    ap.add_argument("--no-stage", action="store_true", help="skip the RichpediaMEL stage timing")
    args = ap.parse_args()

    t0 = time.perf_counter()
    names = synthetic_names(args.names, args.vocab)
    print(f"synthetic KB: {len(names):,} names, {time.perf_counter() - t0:.1f} s to draw; "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    before = peak_rss_gib()
    t0 = time.perf_counter()
    index = NameIndex(names)
    build = time.perf_counter() - t0
    arrays = sum(a.nbytes for a in (index.postings, index.indptr, index.df, index.idf, index.row_of_rank,
                                    index.name_words, index.char_len, *index.bitmap_of.values()))
    print(f"index build: {build:.1f} s (target < 120 s); {len(index.vocab):,} words; arrays {arrays / 2**30:.2f} GiB; "
          f"peak RSS {peak_rss_gib():.2f} GiB (target < 2), of which the names {before:.2f}", flush=True)
    rng = np.random.default_rng(1)
    queries = [words(names[i])[: int(rng.integers(1, 3))] for i in rng.integers(0, len(names), size=args.queries)]
    t0 = time.perf_counter()
    hits = index.search(queries, args.k)
    search = time.perf_counter() - t0
    print(f"search: {len(queries):,} mentions, {args.k} names each, {search:.1f} s "
          f"({len(queries) / search:,.0f} mentions/s); {np.mean([len(h) for h in hits]):.1f} names per mention",
          flush=True)
    if args.old_queries:
        old_q = queries[:args.old_queries]
        t0 = time.perf_counter()
        old = index.search_product(old_q, args.k)
        took = time.perf_counter() - t0
        same = all(a.tolist() == b.tolist() for a, b in zip(hits, old))
        print(f"exact product (the search before): {len(old_q):,} of the mentions, {took:.1f} s "
              f"({len(old_q) / took:,.1f} mentions/s); the same names in the same order: {same}; "
              f"peak RSS {peak_rss_gib():.2f} GiB (the product's matrix included)", flush=True)
        if not same:
            sys.exit("the fast search differs from the exact product")

    if args.no_stage:
        return
    if not RICHPEDIA.is_dir():
        print(f"RichpediaMEL not found at {RICHPEDIA}: skipping the stage timing", file=sys.stderr)
        return
    from gemel.config import PrepareParams
    from gemel.data.prepare import prepare

    prepared = prepare(PrepareParams(format="melbench", dataset="richpedia", input=str(RICHPEDIA),
                                     invalid_records="skip"))
    t0 = time.perf_counter()
    # The lexical part: benchmarks/candidates_recall.py times the dense one (the sentence encoder).
    lexical = CandidatesParams(top_k=64, pool=100, fit_limit=5000, dense=0, dense_sim=False)
    table, report = generate(prepared.mentions, prepared.kb, lexical)
    took = time.perf_counter() - t0
    print(f"candidates stage computation on RichpediaMEL: {len(table):,} mentions, {len(prepared.kb):,} entities, "
          f"{took:.1f} s (target: 20,000 mentions < 60 s); test recall {report['recall']['test']}")


if __name__ == "__main__":
    main()
