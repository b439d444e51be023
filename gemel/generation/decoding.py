"""Batched beam search constrained by the entity-name trie.

Three things keep it close to the cost of one forward pass over the prompt:

- Each prompt is prefilled once, alone (no padding, so the causal fast path), and its KV cache is
  never copied per beam: the beams are fed as parallel positions after their prompt, and a 4-D
  attention mask lets each token see the prompt and its own ancestors only ("tree attention").
  The original code fed one copy of the prompt per beam.
- A beam step reads every LLM weight once whatever the number of tokens, so it costs about as
  much for one token as for fifty. Where the trie allows a single continuation (most of a name
  after its first tokens), those forced tokens are fed together with the token that led there,
  and later steps take their log-probabilities from that pass instead of running the LLM again.
  Scores are exactly those of one-token-at-a-time beam search.
- The trie is applied as a vectorised mask over the vocabulary, so every finished hypothesis is a
  KB entity name.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from gemel.generation.model import Gemel, positions
from gemel.generation.prompt import Batch, Example, collate
from gemel.generation.trie import ROOT, Trie


@dataclass(frozen=True)
class Hypothesis:
    value: int  # the trie's value at the end of the name: the entity's index
    score: float  # sum of token log-probabilities / length ** length_penalty


@dataclass
class _Beam:
    node: int  # trie node after the beam's tokens
    score: float  # sum of their log-probabilities
    last: int = -1  # generated slot of its last token (-1: the prompt's end); set when fed
    row: torch.Tensor | None = None  # log-probabilities after its last fed token
    forced: list[tuple[int, int, float]] = field(default_factory=list)  # fed, not yet taken: (slot, token, log-p)
    feed: list[int] = field(default_factory=list)  # tokens to feed next round: its new token + forced chain


class _Tree:
    """The generated slots of every prompt in the batch, and the attention masks that feed beams as
    parallel positions: a slot sees its prompt's real tokens and the slots on its own path.
    Sliding-window layers (Gemma 3) get a second mask that also hides keys too far back, since
    the cache keeps every position."""

    def __init__(self, model: Gemel, prompt_mask: torch.Tensor):
        self.prompt = prompt_mask.bool().cpu().numpy()  # [n, L]
        self.prompt_pos = positions(prompt_mask).cpu().numpy()  # [n, L], padding aside
        self.start = prompt_mask.sum(1).cpu().numpy()  # [n] position of the first generated token
        n = self.prompt.shape[0]
        self.anc = np.zeros((n, 0, 0), dtype=bool)  # [n, G, G] ancestors (and self) of each slot
        self.pos = np.zeros((n, 0), dtype=np.int64)  # [n, G] position of each slot
        config = model.llm.config
        sliding = "sliding_attention" in (getattr(config, "layer_types", None) or ())
        self.window = getattr(config, "sliding_window", None) if sliding else None
        self.eager = config._attn_implementation == "eager"  # eager adds a float mask; sdpa takes bool
        self.dtype, self.device = model.llm.dtype, model.device

    def add(self, feeds: list[list[tuple[int, int, list[int]]]]
            ) -> tuple[np.ndarray, np.ndarray, torch.Tensor | dict[str, torch.Tensor], np.ndarray]:
        """Append one round of slots. feeds[b] lists (parent slot, depth of first token, tokens) per
        beam (or per trie edge: a parent may be a slot this same round feeds earlier). Returns input
        ids [n, Q], position ids [n, Q], the mask(s), and each new slot's index ([n, Q], -1 for
        padding)."""
        n, g = self.pos.shape
        q = max(1, max(sum(len(t) for _, _, t in f) for f in feeds))
        ids = np.zeros((n, q), dtype=np.int64)
        pos = np.repeat(self.start[:, None], q, axis=1)
        slot = np.full((n, q), -1, dtype=np.int64)
        anc = np.zeros((n, g + q, g + q), dtype=bool)
        anc[:, :g, :g] = self.anc
        anc[:, np.arange(g, g + q), np.arange(g, g + q)] = True  # every slot sees itself (padding too)
        for b, f in enumerate(feeds):
            i = 0
            for parent, depth, tokens in f:
                for k, t in enumerate(tokens):
                    row = g + i
                    if parent >= 0:  # a slot of an earlier round, or one fed before it in this round
                        anc[b, row, :row - k] = anc[b, parent, :row - k]
                    anc[b, row, row - k:row + 1] = True  # its own chain so far
                    ids[b, i], pos[b, i], slot[b, i] = t, self.start[b] + depth + k, row
                    i += 1
        self.anc, self.pos = anc, np.concatenate([self.pos, pos], 1)
        new = anc[:, g:, :]  # [n, Q, G+Q]
        full = np.concatenate([np.repeat(self.prompt[:, None, :], q, axis=1), new], 2)
        if self.window is None:
            masks: torch.Tensor | dict[str, torch.Tensor] = self._format(full)
        else:
            keys = np.concatenate([self.prompt_pos, self.pos], 1)
            near = pos[:, :, None] - keys[:, None, :] < self.window
            masks = {"full_attention": self._format(full), "sliding_attention": self._format(full & near)}
        return ids, pos, masks, slot

    def _format(self, allowed: np.ndarray) -> torch.Tensor:
        mask = torch.from_numpy(np.ascontiguousarray(allowed[:, None])).to(self.device)  # [n, 1 head, Q, keys]
        if not self.eager:
            return mask
        zeros = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
        return zeros.masked_fill(~mask, torch.finfo(self.dtype).min)


class _GrowingLayer(DynamicLayer):
    """A cache layer with spare room: a beam round appends a few tokens, where DynamicLayer's
    torch.cat would copy the whole prompt cache every round."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.used, self.room = 0, None
        used, n = self.used, key_states.shape[-2]
        if self.room is None or used + n > self.room[0].shape[-2]:
            size = used + n + max(512, (used + n) // 2)
            room = tuple(x.new_empty((*x.shape[:-2], size, x.shape[-1])) for x in (key_states, value_states))
            if used:
                room[0][..., :used, :], room[1][..., :used, :] = self.keys, self.values
            self.room = room
        self.room[0][..., used:used + n, :] = key_states
        self.room[1][..., used:used + n, :] = value_states
        self.used = used + n
        self.keys, self.values = self.room[0][..., :self.used, :], self.room[1][..., :self.used, :]
        return self.keys, self.values


def _growing_cache() -> Cache:
    """Made without the model's config, it keeps every position in every layer: a sliding-window
    layer's own cache would evict by count, and beams are extra positions (_Tree applies windows)."""
    return Cache(layer_class_to_replicate=_GrowingLayer)


def _grouped_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """sdpa for beam rounds. Given a mask, transformers' sdpa copies every cached key and value
    once per query-head group (repeat_kv); folding the groups into the query length reads each
    one once. Windows and padding are in the mask."""
    b, h, q, d = query.shape
    groups = h // key.shape[1]
    query = query.reshape(b, key.shape[1], groups * q, d)
    if attention_mask is not None and groups > 1:
        m = attention_mask
        attention_mask = m.unsqueeze(2).expand(m.shape[0], m.shape[1], groups, q, m.shape[-1]).reshape(
            m.shape[0], m.shape[1], groups * q, m.shape[-1])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


GROUPED_SDPA = "gemel_grouped_sdpa"
AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)


@contextlib.contextmanager
def _beam_attention(llm: PreTrainedModel) -> Iterator[None]:
    """Beam rounds of an sdpa model use `_grouped_sdpa`; the prefill and everything else keep sdpa."""
    impl = llm.config._attn_implementation
    if impl != "sdpa":
        yield
        return
    llm.set_attn_implementation(GROUPED_SDPA)
    try:
        yield
    finally:
        llm.set_attn_implementation(impl)


def _prefill(model: Gemel, batch: Batch) -> tuple[Cache, torch.Tensor]:
    """The prompts' KV cache, left-padded, and each prompt's next-token log-probabilities.

    On a CPU each prompt runs alone and the caches are stacked: padding would cost compute and
    push attention off its causal fast path. A GPU runs the padded batch in one pass. Either way
    the cache has room for the beams' tokens (`_growing_cache`)."""
    dev = model.device
    attn = batch.attention_mask
    n, width = attn.shape
    if dev.type != "cpu" or n == 1:
        cache = _growing_cache()
        h = model.forward_hidden(batch, cache=cache, use_cache=True).last_hidden_state[:, -1]
        return cache, torch.log_softmax(model.logits(h), dim=-1)
    embeds = model.embed(batch)
    caches, last = [], []
    for b in range(n):
        start = int(width - attn[b].sum())
        cache = DynamicCache()
        h = model.llm.base_model(inputs_embeds=embeds[b:b + 1, start:], cache=cache, use_cache=True,
                                 position_ids=torch.arange(width - start, device=dev)[None]).last_hidden_state
        caches.append(cache)
        last.append(h[0, -1])
    stacked = _growing_cache()
    for layer in range(len(caches[0].layers)):
        parts = []
        for kind in ("keys", "values"):
            first = getattr(caches[0].layers[layer], kind)
            x = first.new_zeros((n, first.shape[1], width, first.shape[3]))
            for b, c in enumerate(caches):
                part = getattr(c.layers[layer], kind)
                x[b, :, width - part.shape[2]:] = part[0]
                setattr(c.layers[layer], kind, None)  # free as we go
            parts.append(x)
        stacked.update(parts[0], parts[1], layer)
    return stacked, torch.log_softmax(model.logits(torch.stack(last)), dim=-1)


def _forced_chain(trie: Trie, node: int, budget: int) -> list[int]:
    """Tokens the trie forces after `node` (single child, not the EOS that ends a name)."""
    chain: list[int] = []
    while len(chain) < budget:
        toks, nodes = trie.children(node)
        if len(toks) != 1 or trie.value(int(nodes[0])) >= 0:
            break
        chain.append(int(toks[0]))
        node = int(nodes[0])
    return chain


@torch.inference_mode()
def beam_search(model: Gemel, batch: Batch, trie: Trie, num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0) -> list[list[Hypothesis]]:
    """The best `num_beams` finished names of each prompt in `batch`, best first."""
    dev = model.device
    n = batch.ids.shape[0]
    cache, first = _prefill(model, batch)
    vocab = first.shape[-1]
    tree = _Tree(model, batch.attention_mask)
    live = [[_Beam(ROOT, 0.0, row=first[b])] for b in range(n)]
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)

    for step in range(max_new_tokens):
        width = max(len(bs) for bs in live)
        beams = [bs[j] if j < len(bs) else None for bs in live for j in range(width)]
        nodes = np.array([bm.node if bm else -1 for bm in beams], dtype=np.int64)
        rows = torch.stack([bm.row if bm and not bm.forced else first.new_zeros(vocab) for bm in beams])
        scores = torch.tensor([bm.score if bm else 0.0 for bm in beams], device=dev)
        cand = (scores[:, None] + rows).masked_fill(~trie.allowed_mask(nodes, vocab).to(dev), float("-inf"))
        for i, bm in enumerate(beams):
            if bm and bm.forced:  # its node has this one child: the row needed is that one log-p
                cand[i, bm.forced[0][1]] = bm.score + bm.forced[0][2]
        top_s, top_i = cand.view(n, -1).topk(min(2 * num_beams, width * vocab), dim=1)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy()
        norm = float(step + 1) ** length_penalty
        for b in range(n):
            chosen: list[_Beam] = []
            for j in range(top_s.shape[1]):
                if done[b] or len(chosen) == num_beams or not np.isfinite(top_s[b, j]):
                    break
                parent, t = live[b][int(top_i[b, j] // vocab)], int(top_i[b, j] % vocab)
                node = trie.step(parent.node, t)
                if trie.value(node) >= 0:  # EOS closed a name: a finished hypothesis
                    if j < num_beams:
                        finished[b].append(Hypothesis(trie.value(node), float(top_s[b, j]) / norm))
                    continue
                s = float(top_s[b, j])
                if parent.forced:  # already fed: take it from the pass that fed it
                    chosen.append(_Beam(node, s, parent.forced[0][0], parent.row, parent.forced[1:]))
                else:
                    chosen.append(_Beam(node, s, parent.last,
                                        feed=[t] + _forced_chain(trie, node, max_new_tokens - step - 2)))
            best = max((bm.score for bm in chosen), default=float("-inf"))
            done[b] = done[b] or not chosen or _cannot_improve(finished[b], best, norm, num_beams)
            live[b] = [] if done[b] else chosen  # a finished prompt feeds nothing more
        if done.all():
            break
        if any(bm.feed for bs in live for bm in bs):
            _feed(model, tree, cache, live, step)
    return [sorted(f, key=lambda h: -h.score)[:num_beams] for f in finished]


@torch.inference_mode()
def score_sequences(model: Gemel, batch: Batch, seqs: list[list[list[int]]], length_penalty: float = 1.0
                    ) -> list[np.ndarray]:
    """The exact score of every given answer sequence (name + EOS) of each prompt: sum of token
    log-probabilities / length ** length_penalty, as beam search scores a finished name.

    One prefill, then one pass that feeds the sequences' prefix trie (every distinct prefix once)
    as parallel positions after its prompt, under the tree attention of beam search: exact
    scores for every candidate, where a beam could miss one."""
    dev = model.device
    cache, first = _prefill(model, batch)
    tree = _Tree(model, batch.attention_mask)
    out = [np.zeros(len(per), dtype=np.float64) for per in seqs]
    # The candidates of a prompt as a trie: each distinct prefix is fed once, as one slot whose
    # parent is its prefix's slot (names often share their first tokens). Per target token, the
    # slot whose output predicts it; the LM head then runs once over all of them.
    feeds: list[list[tuple[int, int, list[int]]]] = []
    rows_b, rows_col, targets, owner = [], [], [], []
    g = tree.pos.shape[1]
    for b, per in enumerate(seqs):
        node: dict[tuple[int, ...], int] = {}  # prefix -> its column among this prompt's new slots
        feed: list[tuple[int, int, list[int]]] = []
        for c, s in enumerate(per):
            out[b][c] = float(first[b, s[0]])
            for m in range(1, len(s)):  # the output after prefix s[:m] predicts token m
                prefix = tuple(s[:m])
                if prefix not in node:
                    node[prefix] = len(feed)
                    parent = node[prefix[:-1]] + g if m > 1 else -1
                    feed.append((parent, m - 1, [s[m - 1]]))
                rows_b.append(b)
                rows_col.append(node[prefix])
                targets.append(s[m])
                owner.append((b, c))
        feeds.append(feed)
    if targets:
        ids, pos, masks, slot = tree.add(feeds)
        with _beam_attention(model.llm):
            h = model.llm.base_model(input_ids=torch.from_numpy(ids).to(dev), attention_mask=masks,
                                     position_ids=torch.from_numpy(pos).to(dev), cache=cache,
                                     use_cache=True).last_hidden_state
        h = h[torch.tensor(rows_b, device=dev), torch.tensor(rows_col, device=dev)]
        tgt = torch.tensor(targets, device=dev)
        logp = torch.cat([torch.log_softmax(model.logits(h[i:i + 512]).float(), dim=-1)
                          .gather(1, tgt[i:i + 512, None])[:, 0] for i in range(0, len(tgt), 512)]).cpu().numpy()
        for (b, c), lp in zip(owner, logp):
            out[b][c] += float(lp)
    for b, per in enumerate(seqs):
        out[b] /= np.array([float(len(s)) ** length_penalty for s in per]) if per else 1.0
    return out


def score_candidates(model: Gemel, examples: Sequence[Example], features: np.ndarray, pad_id: int,
                     seqs: Sequence[list[list[int]]], length_penalty: float = 1.0, batch_size: int = 8,
                     progress: bool = False) -> list[np.ndarray]:
    """score_sequences over many prompts, each with its own candidate sequences; in input order."""
    from tqdm import tqdm

    results: list[np.ndarray] = [np.zeros(0) for _ in examples]
    chunks = list(batches_by_length(examples, batch_size))
    for idx in tqdm(chunks, desc="score candidates", unit="batch", disable=not progress):
        batch = collate([examples[i] for i in idx], features, pad_id)
        for i, scores in zip(idx, score_sequences(model, batch, [list(seqs[i]) for i in idx], length_penalty)):
            results[i] = scores
    return results


def _feed(model: Gemel, tree: _Tree, cache: Cache, live: list[list[_Beam]], step: int) -> None:
    """One LLM pass over every beam's new token and forced chain; fills in their slots, the forced
    tokens' log-probabilities and the row after each chain."""
    dev = model.device
    feeding = [[bm for bm in bs if bm.feed] for bs in live]
    ids, pos, masks, slot = tree.add([[(bm.last, step, bm.feed) for bm in f] for f in feeding])
    with _beam_attention(model.llm):
        h = model.llm.base_model(input_ids=torch.from_numpy(ids).to(dev), attention_mask=masks,
                                 position_ids=torch.from_numpy(pos).to(dev), cache=cache,
                                 use_cache=True).last_hidden_state
    real = slot >= 0
    logp = torch.log_softmax(model.logits(h[torch.from_numpy(real).to(dev)]), dim=-1)
    flat = slot[real]  # h[real] and `flat` run prompt by prompt, beam by beam, as `feeding` does
    i = 0
    for f in feeding:
        for bm in f:
            k = len(bm.feed)
            rows, slots = logp[i:i + k], flat[i:i + k]
            bm.last, bm.row = int(slots[0]), rows[-1]
            bm.forced = [(int(slots[m]), bm.feed[m], float(rows[m - 1, bm.feed[m]])) for m in range(1, k)]
            bm.feed = []
            i += k


def _cannot_improve(finished: list[Hypothesis], best_alive: float, norm: float, num_beams: int) -> bool:
    """Enough names are finished and no live beam, at its current length, scores above the worst."""
    if len(finished) < num_beams:
        return False
    worst = sorted(h.score for h in finished)[-num_beams]
    return best_alive / norm <= worst


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
