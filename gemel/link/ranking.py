"""Ranking examples (gemel.link.examples) in the two modes: beam search over the whole entity trie (the
paper's), or the mention's candidates by a fusion of the LLM's score and the candidate prior.

`LLMRanker` holds only what never changes while linking (the LLM + mapper, the trie, the KB's
descriptions); the examples and the feature matrix their image rows index are arguments, so the
decode stage's split and a batch of new inputs go through the same calls."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemel.config import DecodeParams
from gemel.errors import GemelError
from gemel.generation.decoding import Hypothesis, decode, score_candidates
from gemel.generation.kb_trie import EntityTrie
from gemel.generation.llm import answer_ids
from gemel.generation.model import Gemel
from gemel.link.examples import LinkExample
from gemel.link.fusion import LLM_ALONE, Fusion, Scored


class LinkError(GemelError, ValueError):
    """Decode or model settings that the run's artifacts cannot honour; the message names the
    setting and what to set instead."""


@dataclass
class Ranked:
    """One mention's entities, best first. Candidate-aware mode also keeps the LLM's score and the
    candidate prior (log p) of each, and which source proposed it."""
    ids: list[str]
    names: list[str]
    scores: list[float]
    llm_scores: list[float] | None = None
    priors: list[float] | None = None


def sure(examples: Sequence[LinkExample], p: DecodeParams) -> list[bool]:
    """Per example, whether its first candidate's prior reaches decode.ranker_sure: the ranker links it."""
    if p.ranker_sure is None:
        return [False] * len(examples)
    return [bool(len(e.candidates.priors) and float(np.exp(e.candidates.priors[0])) >= p.ranker_sure)
            for e in examples]


@dataclass(frozen=True)
class LLMRanker:
    model: Gemel
    trie: EntityTrie
    pad_id: int
    tokenizer: Any = None
    descriptions: Mapping[str, str] | None = None  # KB entity id -> description (decode.describe)

    def predict(self, examples: Sequence[LinkExample], features: np.ndarray, p: DecodeParams,
                progress: bool = False) -> list[list[Hypothesis]]:
        self.model.eval()
        return decode(self.model, [e.prompt for e in examples], features, self.pad_id, self.trie.trie, p.num_beams,
                      p.max_new_tokens, p.length_penalty, p.batch_size, progress)

    def llm_scores(self, examples: Sequence[LinkExample], features: np.ndarray, p: DecodeParams,
                   progress: bool = False) -> list[np.ndarray]:
        """The LLM's score of each of a mention's candidates (candidate-aware mode)."""
        self.model.eval()
        cache: dict[str, list[int]] = {}
        seqs = [[cache.setdefault(n, answer_ids(self.tokenizer, n)) for n in e.candidates.names] for e in examples]
        return score_candidates(self.model, [e.prompt for e in examples], features, self.pad_id, seqs,
                                p.length_penalty, p.batch_size, progress)

    def rank(self, examples: Sequence[LinkExample], features: np.ndarray, p: DecodeParams,
             fusion: Fusion | None = None, llm_scores: Sequence[np.ndarray] | None = None,
             progress: bool = False) -> list[Ranked]:
        """Each example's entities, best first: beam search over the whole trie (candidates: none,
        the paper's mode), or its candidates by `fusion` of their LLM score and prior (None: the
        LLM alone); one the ranker is sure of (decode.ranker_sure) keeps the prior's order.
        `llm_scores` (per example) stand in for the LLM's."""
        if p.candidates == "none":
            names, eids = self.trie.names, self.trie.entity_ids
            return [Ranked([eids[h.value] for h in hs], [names[h.value] for h in hs], [h.score for h in hs])
                    for hs in self.predict(examples, features, p, progress)]
        if any(e.candidates is None for e in examples):
            raise LinkError("decode.candidates: constrained needs the candidates stage's table (candidates.parquet): "
                            "run the candidates stage, or set decode.candidates to none")
        # A mention without a single candidate (no word shared with any KB name, no alias) falls back
        # to the paper's beam search over the whole trie: rare, and otherwise certainly wrong.
        empty = [j for j, e in enumerate(examples) if len(e.candidates.ids) == 0]
        fallback = dict(zip(empty, self.rank([examples[j] for j in empty], features,
                                             dataclasses.replace(p, candidates="none")))) if empty else {}
        if fusion is not None and fusion.ranker_only:  # the LLM earned no say on dev: the ranker links
            by_prior = [j not in fallback for j in range(len(examples))]
        else:
            by_prior = sure(examples, p)
        asked = [j for j in range(len(examples)) if j not in fallback and not by_prior[j]]
        read = fusion is not None and fusion.kind == "learned"  # only the learned fusion reads descriptions
        given = [llm_scores[j] for j in asked] if llm_scores is not None else None
        scored = dict(zip(asked, self.scored([examples[j] for j in asked], features, p, read, given, progress)))
        out = []
        for j, e in enumerate(examples):
            if j in fallback:
                out.append(fallback[j])
                continue
            c = e.candidates
            prior = np.asarray(c.priors, dtype=np.float64)
            if by_prior[j]:
                out.append(Ranked(list(c.ids), list(c.names), prior.tolist(), None, prior.tolist()))
                continue
            s = scored[j]
            fused = (fusion or LLM_ALONE).score(s)
            order = np.argsort(-fused, kind="stable")  # ties: the candidates' own order
            out.append(Ranked([c.ids[i] for i in order], [c.names[i] for i in order],
                              fused[order].tolist(), s.llm[order].tolist(), prior[order].tolist()))
        return out

    def scored(self, examples: Sequence[LinkExample], features: np.ndarray, p: DecodeParams, read: bool,
               llm_scores: Sequence[np.ndarray] | None = None, progress: bool = False) -> list[Scored]:
        """What fusion reads of each example's candidates: the prior, the LLM's score of each name
        and, when `read` and decode.describe, its reading of their descriptions."""
        from gemel.generation.describe import described_scores

        if not len(examples):
            return []
        llm = llm_scores if llm_scores is not None else self.llm_scores(examples, features, p, progress)
        described: list[np.ndarray | None] = [None] * len(examples)
        if read and p.describe and self.descriptions:
            self.model.eval()
            described = described_scores(self.model, self.tokenizer, self.pad_id, [e.context for e in examples],
                                         [[self.descriptions.get(i) for i in e.candidates.ids] for e in examples],
                                         [e.candidates.names for e in examples], p.describe,
                                         [np.asarray(e.candidates.priors, dtype=np.float64) for e in examples],
                                         2 * p.batch_size)
        return [Scored(e.candidates.names, np.asarray(e.candidates.priors, dtype=np.float64),
                       np.asarray(x, dtype=np.float64), d) for e, x, d in zip(examples, llm, described)]

    def accuracy(self, examples: Sequence[LinkExample], gold: Sequence[str], features: np.ndarray,
                 p: DecodeParams, fusion: Fusion | None = None) -> float:
        """Exact-match accuracy of the top name against `gold` (non-NIL mentions)."""
        ranked = self.rank(examples, features, p, fusion)
        top = [r.names[0] if r.names else None for r in ranked]
        return float(np.mean([t == g for t, g in zip(top, gold)])) if len(top) else 0.0
