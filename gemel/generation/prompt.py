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

from gemel.generation.llm import answer_ids, start_ids

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


@dataclass(frozen=True)
class Question:
    """One mention as a prompt holds it: its question's token ids, its answer's (name + EOS; empty
    when unknown, as for a new input) and its image's feature row (NO_IMAGE: none)."""
    ids: list[int]
    answer: list[int]
    image: int


def build_example(mention_id: str, question: Question, demos: Sequence[Question], start: list[int], k: int,
                  with_target: bool) -> Example:
    """One example from explicit parts: the demonstrations (least similar first, each followed by
    its answer), then the question; `k` image slots before each text (0: a text-only run)."""
    ids, images = list(start), []
    for d in demos:
        _append(ids, images, d, k)
        ids += d.answer
    query_start = len(ids)
    _append(ids, images, question, k)
    return Example(mention_id, ids, images, question.answer if with_target else [], query_start)


def _append(ids: list[int], images: list[int], q: Question, k: int) -> None:
    if k:
        ids += [IMAGE] * k
        images.append(q.image)
    ids += q.ids


class PromptBuilder:
    """The pipeline's mentions tokenized once (read-only afterwards), and examples assembled from
    them by concatenating token lists; a new input's question is tokenized on its own (`question`)."""

    def __init__(self, mentions: pd.DataFrame, demos: pd.DataFrame, image_rows: dict[str, int],
                 tokenizer: PreTrainedTokenizerBase, prefix_tokens: int, use_image: bool, num_demos: int):
        self.k = prefix_tokens if use_image else 0
        self.num_demos = num_demos
        self.tokenizer = tokenizer
        self.start = start_ids(tokenizer)
        self.questions: dict[str, Question] = {}
        self.demos: dict[str, list[str]] = {}
        if len(mentions):
            m = mentions.set_index("id", drop=False)
            # One call for every mention: the same ids as one at a time (no padding), much faster.
            texts = [TEMPLATE.format(text=t, mention=s) for t, s in zip(m["text"], m["mention"])]
            named = m["entity_name"].notna()
            self.questions = {
                i: Question(q, answer_ids(tokenizer, n) if has else [], _row(image_rows, p))
                for i, q, n, has, p in zip(m["id"], tokenizer(texts, add_special_tokens=False).input_ids,
                                           m["entity_name"], named, m["image"])}
        if num_demos:
            self.demos = dict(zip(demos["id"], (list(d) for d in demos["demo_ids"])))

    def question(self, text: str, mention: str, image_row: int) -> Question:
        """A new input's question (no answer), tokenized as the pipeline's mentions are."""
        return Question(self.tokenizer(TEMPLATE.format(text=text, mention=mention), add_special_tokens=False).input_ids,
                        [], image_row)

    def chosen(self, demo_ids: Sequence[str]) -> list[Question]:
        """The demonstrations a prompt shows of the retrieve stage's top_k (least similar first):
        the num_demos most similar, i.e. the last ones."""
        return [self.questions[d] for d in demo_ids[-self.num_demos:]] if self.num_demos else []

    def build(self, mention_id: str, question: Question, demo_ids: Sequence[str], with_target: bool) -> Example:
        return build_example(mention_id, question, self.chosen(demo_ids), self.start, self.k, with_target)

    def example(self, mention_id: str, with_target: bool) -> Example:
        """A pipeline mention's example, with the retrieve stage's demonstrations."""
        return self.build(mention_id, self.questions[mention_id], self.demos.get(mention_id, []), with_target)


def _row(image_rows: dict[str, int], path: object) -> int:
    return image_rows.get(path, NO_IMAGE) if isinstance(path, str) else NO_IMAGE


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
