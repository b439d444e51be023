"""One mention + its demonstrations -> the interleaved sequence of image slots and text tokens.

Per example (the paper's template), with k image slots where the image's mapped vectors go:
    [IMG x k][Text]{text}\n[Question]What does {mention} mentioned in the text refer to?\n[Answer]
Each demonstration is followed by its answer (`llm.answer_ids`: name + EOS); the question's
answer is the training target, or what decoding generates. Demonstrations come least similar
first, so the most similar stands right before the question.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from gemel.llm import answer_ids, start_ids

IMAGE = -1  # placeholder token id of an image slot; the model writes mapped vectors there
NO_IMAGE = -1  # feature row of an image that is missing: its vector is zero

TEMPLATE = "[Text]{text}\n[Question]What does {mention} mentioned in the text refer to?\n[Answer]"


@dataclass(frozen=True)
class Example:
    id: str
    ids: list[int]  # token ids, IMAGE at image slots
    images: list[int]  # one feature row per image, in order (k slots each)
    target: list[int]  # answer ids (name + EOS); empty when decoding
    query_start: int = 0  # index in `ids` where the question's own part (its image slots) begins


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # [B, T] left-padded; IMAGE at image slots
    attention_mask: torch.Tensor  # [B, T]
    images: torch.Tensor  # [N, D]: the vectors of every slot group, in row-major slot order
    target_mask: torch.Tensor  # [B, T] True where a target token sits
    query_start: torch.Tensor  # [B] column where each row's question part begins
    query_images: torch.Tensor  # [N] True for the question's own image (the last of each row)


class PromptBuilder:
    """Tokenizes every mention once, then assembles examples by concatenating token lists."""

    def __init__(self, mentions: pd.DataFrame, demos: pd.DataFrame, image_rows: dict[str, int],
                 tokenizer: PreTrainedTokenizerBase, prefix_tokens: int, use_image: bool, num_demos: int):
        self.k = prefix_tokens if use_image else 0
        self.num_demos = num_demos
        self.tokenizer = tokenizer
        self.start = start_ids(tokenizer)
        self.question: dict[str, list[int]] = {}
        self.answer: dict[str, list[int]] = {}
        self.image: dict[str, int] = {}
        self.demos: dict[str, list[str]] = {}
        self.add(mentions, demos, image_rows)

    def add(self, mentions: pd.DataFrame, demos: pd.DataFrame, image_rows: dict[str, int]) -> None:
        """Tokenize more mentions (columns id, text, mention, image, entity_name; a new input has
        no entity_name) and record their demonstrations and image rows."""
        if not len(mentions):
            return
        m = mentions.set_index("id", drop=False)
        texts = [TEMPLATE.format(text=t, mention=s) for t, s in zip(m["text"], m["mention"])]
        self.question.update(zip(m["id"], self.tokenizer(texts, add_special_tokens=False).input_ids))
        named = m[m["entity_name"].notna()]
        self.answer.update((i, answer_ids(self.tokenizer, n)) for i, n in zip(named["id"], named["entity_name"]))
        self.image.update((i, image_rows.get(p, NO_IMAGE) if isinstance(p, str) else NO_IMAGE)
                          for i, p in zip(m["id"], m["image"]))
        if self.num_demos:
            self.demos.update(zip(demos["id"], (list(d) for d in demos["demo_ids"])))

    def forget(self, ids: Sequence[str]) -> None:
        """Drop mentions added for one batch of new inputs."""
        for table in (self.question, self.answer, self.image, self.demos):
            for i in ids:
                table.pop(i, None)

    def example(self, mention_id: str, with_target: bool) -> Example:
        # The retrieve stage keeps top_k, least similar first: the n most similar are the last n.
        chosen = self.demos.get(mention_id, [])[-self.num_demos:] if self.num_demos else []
        ids, images = list(self.start), []
        for d in chosen:
            self._append(ids, images, d)
            ids += self.answer[d]
        query_start = len(ids)
        self._append(ids, images, mention_id)
        target = self.answer[mention_id] if with_target else []
        return Example(mention_id, ids, images, target, query_start)

    def _append(self, ids: list[int], images: list[int], mention_id: str) -> None:
        if self.k:
            ids += [IMAGE] * self.k
            images.append(self.image[mention_id])
        ids += self.question[mention_id]


def collate(examples: Sequence[Example], features: np.ndarray, pad_id: int) -> Batch:
    """Left-pad (so every prompt ends at the last column, as decoding needs) and gather the
    image vectors in the order their slots appear, row by row."""
    seqs = [e.ids + e.target for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    query_start = torch.tensor([width - len(s) + e.query_start for e, s in zip(examples, seqs)])
    for row, (e, s) in enumerate(zip(examples, seqs)):
        ids[row, width - len(s):] = torch.tensor(s)
        attn[row, width - len(s):] = 1
        if e.target:
            target[row, width - len(e.target):] = True
    rows = [r for e in examples for r in e.images]
    query_images = torch.tensor([i == len(e.images) - 1 for e in examples for i in range(len(e.images))],
                                dtype=torch.bool)  # the question's image is each row's last
    dim = features.shape[1]
    vectors = np.zeros((len(rows), dim), dtype=np.float32)
    present = np.array([r != NO_IMAGE for r in rows], dtype=bool)
    if present.any():
        vectors[present] = features[np.array(rows)[present]]
    return Batch(ids, attn, torch.from_numpy(vectors), target, query_start, query_images)
