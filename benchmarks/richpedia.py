"""The workload the decode and train benchmarks share: RichpediaMEL at the paper's settings
(16 demonstrations, k = 4 image tokens, 5 beams) with SmolLM2-135M and its 17,805-name trie.

Speed does not depend on what the image vectors hold or on the mapper's weights, so the image
features are seeded random 1280-d vectors (EfficientNet-Lite0's size; only 9 RichpediaMEL images
exist) and the mapper is untrained. Demonstrations come from BM25 (seconds, where SimCSE over the
whole dataset takes minutes on two cores): both pick similar mentions, so prompts are alike.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from gemel.config import PrepareParams, load_params  # noqa: E402
from gemel.data.prepare import prepare  # noqa: E402
from gemel.generation.kb_trie import EntityTrie, build_entity_trie  # noqa: E402
from gemel.generation.llm import get_spec, load_tokenizer  # noqa: E402
from gemel.generation.model import Gemel  # noqa: E402
from gemel.generation.prompt import PromptBuilder  # noqa: E402
from gemel.link.linker import build_linker  # noqa: E402
from gemel.search.retrieval import retrieve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RICHPEDIA = ROOT.parent / "shared" / "data" / "richpedia-mel"
IMAGE_DIM = 1280


@dataclass
class Workload:
    mentions: pd.DataFrame
    builder: PromptBuilder
    features: np.ndarray
    model: Gemel
    trie: EntityTrie
    pad_id: int
    tokenizer: object


def build(llm: str = "smollm2-135m", num_demos: int = 16, prefix_tokens: int = 4, data: Path = RICHPEDIA,
          device: str = "cpu") -> Workload:
    """The workload on `device`; on a GPU the LLM is bf16, as the pipeline loads it there."""
    params = load_params(ROOT / "params.yaml", [f"model.llm={llm}", f"model.num_demos={num_demos}",
                                                 f"model.prefix_tokens={prefix_tokens}", f"retrieve.top_k={num_demos}"])
    mentions = prepare(PrepareParams(format="melbench", dataset="richpedia", input=str(data),
                                     invalid_records="skip")).mentions  # one train record has an empty mention
    demos, _ = retrieve(mentions, "bm25", num_demos)
    kb = pd.read_json(data / "qid2ne.json", typ="series")
    trie = build_entity_trie(list(kb.values), list(kb.index.astype(str)), load_tokenizer(get_spec(params["llms"], llm)),
                             llm)
    paths = sorted({p for p in mentions["image"] if isinstance(p, str)})
    features = np.random.default_rng(0).normal(size=(len(paths), IMAGE_DIM)).astype(np.float32)
    # The pipeline's own assembly (gemel.link.linker.build_linker), with these features and this trie.
    linker = build_linker(params, mentions, demos, ({p: i for i, p in enumerate(paths)}, features), trie,
                          device_name=device)
    r = linker.ranker
    return Workload(mentions, linker.prompts, linker.features, r.model, r.trie, r.pad_id, r.tokenizer)


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
