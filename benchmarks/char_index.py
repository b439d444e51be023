"""The fuzzy source's character trigram index (gemel.search.candidates.CharIndex) at the scale of a large KB.

    python -m benchmarks.char_index                     # 1,000,000 names, 2,000 misspelled mentions
    python -m benchmarks.char_index --names 100000

Names are 1-4 words drawn by frequency from the words of RichpediaMEL's and WikiMEL's KB names
(../shared/data, or GEMEL_SHARED_DATA), so that their trigrams are as skewed as real names' are;
a random-letter KB would make every gram rare. Each mention is a KB name with its last letter
replaced. Prints the build time, the peak resident memory, and per `max_df` (exact: no gram left
out) the mentions searched per second and how often the misspelled name is among the 10 found.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from gemel.search.char_index import CharIndex

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GEMEL_SHARED_DATA", ROOT.parent / "shared" / "data"))
KBS = ("wikimel/qid2ne.json", "richpedia-mel/qid2ne.json")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def recombined_names(n: int, seed: int = 0) -> list[str]:
    counts: dict[str, int] = {}
    for kb in KBS:
        for name in json.loads((SHARED / kb).read_text(encoding="utf-8")).values():
            for w in name.split():
                counts[w] = counts.get(w, 0) + 1
    vocab = np.array(list(counts))
    p = np.array(list(counts.values()), dtype=np.float64)
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 5, size=n)
    picks = rng.choice(len(vocab), size=int(lens.sum()), p=p / p.sum())
    cuts = np.concatenate([[0], np.cumsum(lens)])
    return [" ".join(vocab[picks[cuts[i]:cuts[i + 1]]]) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--k", type=int, default=10, help="names per mention (candidates.fuzzy)")
    args = ap.parse_args()

    names = recombined_names(args.names)
    t0 = time.perf_counter()
    index = CharIndex(names)
    print(f"char index: {len(names):,} names, {len(index.vocab):,} trigrams, built in "
          f"{time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    rng = np.random.default_rng(1)
    source = rng.integers(0, len(names), size=args.queries)
    mentions = [names[i][:-1] + "x" for i in source]
    for max_df in (len(names), 20_000, 10_000):  # the default: 20,000
        t0 = time.perf_counter()
        hits = index.search(mentions, args.k, max_df=max_df)
        took = time.perf_counter() - t0
        found = np.mean([names[s] in {names[j] for j in h} for s, h in zip(source, hits)])
        label = "exact" if max_df >= len(names) else f"max_df {max_df:,}"
        print(f"search ({label}): {len(mentions) / took:,.0f} mentions/s; the misspelled name among the {args.k} "
              f"found for {found:.1%}; peak RSS {peak_rss_gib():.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
