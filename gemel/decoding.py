"""Batched beam search constrained by the entity-name trie.

Each prompt is run through the LLM once; its KV cache is then copied to the beams (the original
code fed the same prompt once per beam). Every step masks the vocabulary to the tokens the trie
allows after each beam's prefix, so every finished hypothesis is a KB entity name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from gemel.model import Gemel, positions
from gemel.prompt import Batch, Example, collate
from gemel.trie import Trie


@dataclass(frozen=True)
class Hypothesis:
    value: int  # the trie's value at the end of the name: the entity's index
    score: float  # sum of token log-probabilities / length ** length_penalty


@torch.inference_mode()
def beam_search(model: Gemel, batch: Batch, trie: Trie, num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0) -> list[list[Hypothesis]]:
    """The best `num_beams` finished names of each prompt in `batch`, best first."""
    dev = model.device
    n = batch.ids.shape[0]
    attn = batch.attention_mask.to(dev)
    out = model.forward_hidden(batch, use_cache=True)
    cache = out.cache
    logp = torch.log_softmax(model.logits(out.last_hidden_state[:, -1]), dim=-1)
    vocab = logp.shape[-1]
    nodes = np.zeros(n, dtype=np.int64)  # every prompt starts at the trie's root
    beam_scores = torch.zeros((n, 1), device=dev)  # one beam per prompt until the first step
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)

    for step in range(max_new_tokens):
        logp = logp.masked_fill(~trie.allowed_mask(nodes, vocab).to(dev), float("-inf"))
        width = beam_scores.shape[1]
        cand = (beam_scores.unsqueeze(-1) + logp.view(n, width, vocab)).view(n, -1)
        top_s, top_i = cand.topk(min(2 * num_beams, cand.shape[1]), dim=1)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy()
        src = np.zeros((n, num_beams), dtype=np.int64)
        tok = np.zeros((n, num_beams), dtype=np.int64)
        score = np.full((n, num_beams), -np.inf, dtype=np.float32)
        nxt = np.full((n, num_beams), -1, dtype=np.int64)
        norm = float(step + 1) ** length_penalty
        for b in range(n):
            src[b] = b * width  # dead or done slots keep a harmless source row
            alive = 0
            for j in range(top_s.shape[1]):
                if done[b] or alive == num_beams or not np.isfinite(top_s[b, j]):
                    break
                s_row = b * width + top_i[b, j] // vocab
                t = int(top_i[b, j] % vocab)
                node = trie.step(int(nodes[s_row]), t)
                if trie.value(node) >= 0:  # EOS closed a name: a finished hypothesis
                    if j < num_beams:
                        finished[b].append(Hypothesis(trie.value(node), float(top_s[b, j]) / norm))
                    continue
                src[b, alive], tok[b, alive], score[b, alive], nxt[b, alive] = s_row, t, top_s[b, j], node
                alive += 1
            done[b] = done[b] or alive == 0 or _cannot_improve(finished[b], score[b], norm, num_beams)
        if done.all():
            break
        # Gathering rows by `src` copies each prompt's cache to its beams on the first step,
        # and reorders beams afterwards.
        index = torch.from_numpy(src.reshape(-1)).to(dev)
        cache.reorder_cache(index)
        attn = torch.cat([attn.index_select(0, index), attn.new_ones((index.shape[0], 1))], dim=1)
        out = model.llm.base_model(input_ids=torch.from_numpy(tok.reshape(-1, 1)).to(dev), attention_mask=attn,
                                   position_ids=positions(attn)[:, -1:], cache=cache, use_cache=True)
        cache = out.cache
        logp = torch.log_softmax(model.logits(out.last_hidden_state[:, -1]), dim=-1)
        beam_scores = torch.from_numpy(score).to(dev)
        nodes = nxt.reshape(-1)
    return [sorted(f, key=lambda h: -h.score)[:num_beams] for f in finished]


def _cannot_improve(finished: list[Hypothesis], alive: np.ndarray, norm: float, num_beams: int) -> bool:
    """Enough names are finished and no live beam, at its current length, scores above the worst."""
    if len(finished) < num_beams:
        return False
    worst = sorted(h.score for h in finished)[-num_beams]
    return bool(alive.max() / norm <= worst)


def batches_by_length(examples: Sequence[Example], batch_size: int) -> Iterator[list[int]]:
    """Indices of examples in batches of similar length, to keep left padding small."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def decode(model: Gemel, examples: Sequence[Example], features: np.ndarray, pad_id: int, trie: Trie,
           num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
           batch_size: int = 8, progress: bool = False) -> list[list[Hypothesis]]:
    """Beam search over many prompts; results in the order of `examples`."""
    from tqdm import tqdm

    results: list[list[Hypothesis]] = [[] for _ in examples]
    chunks = list(batches_by_length(examples, batch_size))
    for idx in tqdm(chunks, desc="decode", unit="batch", disable=not progress):
        batch = collate([examples[i] for i in idx], features, pad_id)
        for i, hyps in zip(idx, beam_search(model, batch, trie, num_beams, max_new_tokens, length_penalty)):
            results[i] = hyps
    return results
