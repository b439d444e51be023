"""Everything one LLM needs to link mentions, assembled from the pipeline's artifacts: the frozen
LLM + mapper, the prompt builder over the mentions and their demonstrations, the image features
and the entity trie. Used by the train and decode stages (and by anything that links new input)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from gemel.config import DecodeParams, ModelParams
from gemel.decoding import Hypothesis, decode
from gemel.features import load_features
from gemel.llm import get_spec, load_llm, load_tokenizer
from gemel.model import Gemel
from gemel.prompt import Example, PromptBuilder
from gemel.trie import EntityTrie


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Linker:
    model: Gemel
    builder: PromptBuilder
    features: np.ndarray
    trie: EntityTrie
    pad_id: int

    def examples(self, ids: Sequence[str], with_target: bool) -> list[Example]:
        return [self.builder.example(i, with_target) for i in ids]

    def predict(self, ids: Sequence[str], p: DecodeParams, progress: bool = False) -> list[list[Hypothesis]]:
        self.model.eval()
        return decode(self.model, self.examples(ids, with_target=False), self.features, self.pad_id,
                      self.trie.trie, p.num_beams, p.max_new_tokens, p.length_penalty, p.batch_size, progress)

    def accuracy(self, mentions: pd.DataFrame, p: DecodeParams) -> float:
        """Exact-match accuracy of the top name over the given (non-NIL) mentions."""
        hyps = self.predict(list(mentions["id"]), p)
        top = [self.trie.names[h[0].value] if h else None for h in hyps]
        return float(np.mean([t == g for t, g in zip(top, mentions["entity_name"])])) if len(top) else 0.0


def build_linker(params: dict[str, Any], mentions: pd.DataFrame, demos: pd.DataFrame,
                 features_path: str | Path, trie_path: str | Path) -> Linker:
    m = ModelParams(**params["model"])
    if m.num_demos > params["retrieve"]["top_k"]:
        raise ValueError(f"model.num_demos = {m.num_demos} exceeds retrieve.top_k = {params['retrieve']['top_k']}: "
                         "retrieve keeps only top_k demonstrations per mention")
    spec = get_spec(params["llms"], m.llm)
    tokenizer = load_tokenizer(spec)
    dev = device()
    llm = load_llm(spec, dev, torch.bfloat16 if dev == "cuda" else torch.float32)
    (rows, matrix), _ = load_features(features_path)
    builder = PromptBuilder(mentions, demos, rows, tokenizer, m.prefix_tokens, m.use_image, m.num_demos)
    torch.manual_seed(params["train"]["seed"])  # the mapper's initial weights are part of the run
    model = Gemel(llm, matrix.shape[1], m.prefix_tokens).to(dev)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Linker(model, builder, matrix, EntityTrie.load(trie_path), pad)
