"""The LLM reads what it chooses between: for each of a mention's first candidates that has a KB
description, how much better the LLM predicts the words around the mention after

    [Entity]{name}: {description}\\n[Text]

than after `[Text]` alone: log p(text | entity) - log p(text), a pointwise mutual information
between the text and the entity as the KB describes it. A footballer's description makes a
sentence about a match likelier; a politician's does not. The score is a feature of the learned
fusion (gemel.link.fusion, `described`), 0 for a candidate without a description or not read.

The direction matters: scoring the text given the description compares the same words under
each candidate, whereas scoring each description given the text compares different texts and
favours short, common descriptions (on WikiMEL dev, 0.85 alone against 0.21). Its cost is one
prompt per candidate read, so only the first `top` candidates by prior are read.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from gemel.generation.decoding import score_candidates
from gemel.generation.llm import start_ids
from gemel.generation.model import Gemel
from gemel.generation.prompt import Example

WINDOW = 48  # text tokens scored, around the mention: its context, not the whole document
DESCRIPTION_CHARS = 120  # a description's opening: sex, lifetime and occupation come first in these KBs
# A candidate whose prior is under 1% is not read: on WikiMEL dev, reading them changed no answer
# and cost a third of the reading (5.1 candidates read per mention instead of 8).
MIN_PRIOR = 0.01
ENTITY = "[Entity]{name}: {description}\n[Text]"
TEXT = "[Text]"


def window(tokenizer: PreTrainedTokenizerBase, text: str, mention: str, width: int = WINDOW) -> list[int]:
    """The tokens of `text` around the first occurrence of `mention`: a third of the width before
    it where the text allows, the rest from it on (the text's start when the mention is absent)."""
    def tok(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False).input_ids

    at = text.find(mention)
    if at < 0:
        return tok(text)[:width]
    left, rest = tok(text[:at]), tok(text[at:])
    keep = min(len(left), max(width // 3, width - len(rest)))
    return (left[len(left) - keep:] + rest)[:width]


def described_scores(model: Gemel, tokenizer: PreTrainedTokenizerBase, pad_id: int,
                     contexts: Sequence[tuple[str, str]], descriptions: Sequence[Sequence[str | None]],
                     names: Sequence[Sequence[str]], top: int, priors: Sequence[np.ndarray] | None = None,
                     batch_size: int = 16) -> list[np.ndarray]:
    """Per mention ((text, mention) in `contexts`), one score per candidate (`names`, with their
    `descriptions` and log `priors`): the pointwise mutual information above for the first `top`
    candidates that have a description and a prior of at least MIN_PRIOR, 0 for the others. A
    mention with none of them to read costs nothing."""
    start = start_ids(tokenizer)
    features = np.zeros((0, 1), dtype=np.float32)  # text only: no image slots
    examples: list[Example] = []
    seqs: list[list[list[int]]] = []
    owner: list[tuple[int, int]] = []  # (mention, candidate); candidate -1: the text alone
    floor = np.log(MIN_PRIOR)
    for i, ((text, mention), descs, cands) in enumerate(zip(contexts, descriptions, names)):
        read = [j for j, d in enumerate(descs[:top]) if d and (priors is None or priors[i][j] >= floor)]
        if not read:
            continue
        words = window(tokenizer, text, mention)
        if not words:
            continue
        prompts = [TEXT] + [ENTITY.format(name=cands[j], description=descs[j][:DESCRIPTION_CHARS]) for j in read]
        for j, prompt in zip([-1, *read], prompts):
            examples.append(Example(f"{i}:{j}", start + tokenizer(prompt, add_special_tokens=False).input_ids, [], []))
            seqs.append([words])
            owner.append((i, j))
    out = [np.zeros(len(c), dtype=np.float64) for c in names]
    if not examples:
        return out
    scores = score_candidates(model, examples, features, pad_id, seqs, length_penalty=0.0, batch_size=batch_size)
    alone = {i: float(s[0]) for (i, j), s in zip(owner, scores) if j < 0}
    for (i, j), s in zip(owner, scores):
        if j >= 0:
            out[i][j] = float(s[0]) - alone[i]
    return out
