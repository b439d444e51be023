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

from gemel.candidates import CandidateError, choose_weight, fuse
from gemel.config import DecodeParams, ModelParams
from gemel.decoding import Hypothesis, decode, score_candidates
from gemel.features import load_features
from gemel.llm import answer_ids, get_spec, load_llm, load_tokenizer
from gemel.model import Gemel
from gemel.prompt import Example, PromptBuilder
from gemel.trie import EntityTrie


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Ranked:
    """One mention's entities, best first. Candidate-aware mode also keeps the LLM's score and the
    candidate prior (log p) of each, and which source proposed it."""
    ids: list[str]
    names: list[str]
    scores: list[float]
    llm_scores: list[float] | None = None
    priors: list[float] | None = None


@dataclass
class Linker:
    model: Gemel
    builder: PromptBuilder
    features: np.ndarray
    trie: EntityTrie
    pad_id: int
    tokenizer: Any = None
    candidates: pd.DataFrame | None = None  # the candidates stage's table, indexed by mention id

    def examples(self, ids: Sequence[str], with_target: bool) -> list[Example]:
        return [self.builder.example(i, with_target) for i in ids]

    def predict(self, ids: Sequence[str], p: DecodeParams, progress: bool = False) -> list[list[Hypothesis]]:
        self.model.eval()
        return decode(self.model, self.examples(ids, with_target=False), self.features, self.pad_id,
                      self.trie.trie, p.num_beams, p.max_new_tokens, p.length_penalty, p.batch_size, progress)

    def candidate_llm_scores(self, ids: Sequence[str], p: DecodeParams, progress: bool = False) -> list[np.ndarray]:
        """The LLM's score of each of a mention's candidates (candidate-aware mode)."""
        if self.candidates is None:
            raise ValueError("decode.candidates needs the candidates stage's table (candidates.parquet)")
        self.model.eval()
        cache: dict[str, list[int]] = {}
        seqs = [[cache.setdefault(n, answer_ids(self.tokenizer, n)) for n in self.candidates.at[i, "cand_names"]]
                for i in ids]
        return score_candidates(self.model, self.examples(ids, with_target=False), self.features, self.pad_id,
                                seqs, p.length_penalty, p.batch_size, progress)

    def rank(self, ids: Sequence[str], p: DecodeParams, fusion_weight: float = 0.0,
             llm_scores: list[np.ndarray] | None = None, progress: bool = False) -> list[Ranked]:
        """Each mention's entities, best first: beam search over the whole trie (candidates: none,
        the paper's mode), or its candidates by LLM score + fusion_weight * candidate prior."""
        if p.candidates == "none":
            names, eids = self.trie.names, self.trie.entity_ids
            return [Ranked([eids[h.value] for h in hs], [names[h.value] for h in hs], [h.score for h in hs])
                    for hs in self.predict(ids, p, progress)]
        if llm_scores is None:
            llm_scores = self.candidate_llm_scores(ids, p, progress)
        out = []
        for i, llm in zip(ids, llm_scores):
            c = self.candidates.loc[i]
            prior = np.asarray(c["cand_scores"], dtype=np.float64)
            fused = fuse(llm, prior, fusion_weight)
            order = np.argsort(-fused, kind="stable")  # ties: the candidates' own order
            out.append(Ranked([c["cand_ids"][j] for j in order], [c["cand_names"][j] for j in order],
                              fused[order].tolist(), llm[order].tolist(), prior[order].tolist()))
        return out

    def accuracy(self, mentions: pd.DataFrame, p: DecodeParams, fusion_weight: float = 0.0) -> float:
        """Exact-match accuracy of the top name over the given (non-NIL) mentions."""
        ranked = self.rank(list(mentions["id"]), p, fusion_weight)
        top = [r.names[0] if r.names else None for r in ranked]
        return float(np.mean([t == g for t, g in zip(top, mentions["entity_name"])])) if len(top) else 0.0

    def fusion_weight(self, dev: pd.DataFrame, p: DecodeParams) -> tuple[float, dict[str, Any]]:
        """decode.fusion_weight, or with `auto` the best of fusion_grid on the dev mentions (their
        LLM scores are computed once; each weight is then a re-sort). Returns it and a report."""
        if p.fusion_weight != "auto":
            return float(p.fusion_weight), {"fusion_weight": float(p.fusion_weight), "chosen_on": None}
        if not len(dev):
            raise ValueError("decode.fusion_weight: auto needs dev mentions to choose on; set a number")
        ids = list(dev["id"])
        llm = self.candidate_llm_scores(ids, p)
        c = self.candidates.loc[ids]
        weight, acc = choose_weight(llm, [np.asarray(x) for x in c["cand_scores"]], list(c["cand_names"]),
                                    list(dev["entity_name"]), p.fusion_grid)
        return weight, {"fusion_weight": weight, "chosen_on": f"dev ({len(dev)} mentions)", "dev_accuracy_by_weight": acc}

    def predictions(self, mentions: pd.DataFrame, ranked: Sequence[Ranked]) -> pd.DataFrame:
        """The decode stage's table: gold, prediction, and the ranked entities of every mention."""
        return pd.DataFrame({
            "id": mentions["id"].tolist(), "split": mentions["split"].tolist(), "mention": mentions["mention"].tolist(),
            "gold_id": mentions["entity_id"].tolist(), "gold_name": mentions["entity_name"].tolist(),
            "is_nil": mentions["is_nil"].tolist(),
            "has_image": [self.builder.image[i] >= 0 for i in mentions["id"]],
            "pred_id": [r.ids[0] if r.ids else None for r in ranked],
            "pred_name": [r.names[0] if r.names else None for r in ranked],
            "beams": [r.names for r in ranked], "beam_ids": [r.ids for r in ranked],
            "beam_scores": [r.scores for r in ranked],
            "llm_scores": [r.llm_scores for r in ranked], "cand_priors": [r.priors for r in ranked],
        })


def load_candidates(params: dict[str, Any]) -> pd.DataFrame | None:
    """The candidates stage's table when decoding is candidate-aware (decode.candidates), else None."""
    if params["decode"].get("candidates", "none") == "none":
        return None
    path = Path(params["candidates"]["out"]) / "candidates.parquet"
    if not path.is_file():
        raise CandidateError(f"{path}: no such file (decode.candidates: {params['decode']['candidates']} needs the "
                             "candidates stage: run it first)")
    k = int(params["decode"].get("num_candidates", 16))
    if k > params["candidates"]["top_k"]:
        raise CandidateError(f"decode.num_candidates = {k} exceeds candidates.top_k = {params['candidates']['top_k']}: "
                             "the candidates stage keeps only top_k per mention")
    table = pd.read_parquet(path)
    for col in ("cand_ids", "cand_names", "cand_scores", "cand_sources"):  # the first K, best first
        table[col] = [list(x)[:k] for x in table[col]]
    return table


def build_linker(params: dict[str, Any], mentions: pd.DataFrame, demos: pd.DataFrame,
                 features_path: str | Path, trie_path: str | Path, candidates: pd.DataFrame | None = None) -> Linker:
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
    cands = candidates.set_index("id", drop=False) if candidates is not None else None
    return Linker(model, builder, matrix, EntityTrie.load(trie_path), pad, tokenizer, cands)
