"""Tiny random LLMs of each architecture family the registry covers: Llama (SmolLM2), Gemma 3
(sliding-window layers, here a window shorter than the prompt) and OPT, with sdpa and eager
attention. Tree-attention beam search is checked against a naive beam search that re-runs the
whole prompt for every beam at every step, and the question-only loss (a cached prefix) against
the one-pass loss. The real-model test in test_model.py checks scores against teacher forcing.
GEMEL_TEST_DEVICE=cuda runs them on a GPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, OPTConfig

from gemel.generation.decoding import Hypothesis, beam_search, decode, score_candidates
from gemel.generation.model import Gemel
from gemel.generation.prompt import IMAGE, Example, collate
from gemel.generation.trie import ROOT, Trie

VOCAB, EOS, PAD, DIM, K = 48, 1, 0, 8, 2
DEVICE = os.environ.get("GEMEL_TEST_DEVICE", "cpu")


def tiny_llm(arch: str, attn: str):
    common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, max_position_embeddings=256,
                  eos_token_id=EOS, pad_token_id=PAD, bos_token_id=2, initializer_range=0.4)
    if arch == "llama":
        config = LlamaConfig(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, **common)
    elif arch == "gemma3":
        config = Gemma3TextConfig(intermediate_size=64, num_hidden_layers=4, num_key_value_heads=2, head_dim=8,
                                  sliding_window=6, layer_types=["sliding_attention", "full_attention"] * 2, **common)
    else:
        config = OPTConfig(ffn_dim=64, num_hidden_layers=2, word_embed_proj_dim=32, **common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).to(DEVICE).eval().requires_grad_(False)


def names_trie() -> tuple[Trie, list[list[int]]]:
    """Names that share prefixes (branching) and have long single continuations (forced chains)."""
    names = [[5, 6], [5, 6, 7, 8, 9], [5, 6, 7, 8, 10], [5, 11, 12, 13, 14, 15], [16], [16, 17, 18, 19],
             [20, 21, 22, 23, 24, 25, 26], [20, 27], [28, 29, 30]]
    return Trie.build([n + [EOS] for n in names]), names


def examples(rng: np.random.Generator) -> list[Example]:
    """Prompts of different lengths (so a batch is left-padded), longer than the sliding window."""
    out = []
    for i, n in enumerate((11, 19, 14)):
        text = rng.integers(31, VOCAB, size=n).tolist()
        out.append(Example(f"q{i}", [IMAGE] * K + text[:5] + [IMAGE] * K + text[5:], [i, i + 1], []))
    return out


def naive_beam_search(model: Gemel, e: Example, features: np.ndarray, trie: Trie, num_beams: int,
                      max_new_tokens: int, length_penalty: float = 1.0) -> list[Hypothesis]:
    """Textbook constrained beam search: one full forward per beam per step, no cache. A name of
    n tokens scores (sum of log-probabilities) / n ** length_penalty."""
    beams: list[tuple[list[int], float, int]] = [([], 0.0, ROOT)]
    finished: list[Hypothesis] = []
    for step in range(max_new_tokens):
        cand = []
        for toks, score, node in beams:
            batch = collate([Example(e.id, e.ids + toks, e.images, [])], features, PAD)
            with torch.no_grad():
                logp = torch.log_softmax(model.logits(model.forward_hidden(batch).last_hidden_state[0, -1]), -1)
            cand += [(score + float(logp[t]), toks + [int(t)], trie.step(node, int(t))) for t in trie.children(node)[0]]
        cand.sort(key=lambda c: -c[0])
        beams = []
        for j, (score, toks, node) in enumerate(cand[:2 * num_beams]):
            if len(beams) == num_beams:
                break
            if trie.value(node) >= 0:
                if j < num_beams:
                    finished.append(Hypothesis(trie.value(node), score / (step + 1) ** length_penalty))
            else:
                beams.append((toks, score, node))
        worst = sorted(h.score for h in finished)[-num_beams] if len(finished) >= num_beams else None
        if not beams or (worst is not None and max(b[1] for b in beams) / (step + 1) ** length_penalty <= worst):
            break
    return sorted(finished, key=lambda h: -h.score)[:num_beams]


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("gemma3", "sdpa"), ("opt", "sdpa"), ("llama", "eager"),
                                       ("gemma3", "eager")])
def test_tree_beam_search_matches_naive_beam_search(arch: str, attn: str) -> None:
    model = Gemel(tiny_llm(arch, attn), DIM, K).to(DEVICE)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(4, DIM)).astype(np.float32)
    trie, names = names_trie()
    prompts = examples(rng)
    for beams in (1, 3, len(names)):
        batched = decode(model, prompts, features, PAD, trie, beams, 12, batch_size=3)
        for e, got in zip(prompts, batched, strict=True):
            want = naive_beam_search(model, e, features, trie, beams, 12)
            assert [h.value for h in got] == [h.value for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
            alone = beam_search(model, collate([e], features, PAD), trie, beams, 12)[0]
            assert [h.value for h in alone] == [h.value for h in got]
    # with a beam per name, every name is found
    everything = beam_search(model, collate(prompts[:1], features, PAD), trie, len(names), 12)[0]
    assert sorted(h.value for h in everything) == list(range(len(names)))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_question_only_loss_equals_one_pass_loss(arch: str) -> None:
    """The prefix-cached pass of demo_image_grad=False computes the same loss, also across a
    sliding window and with left padding."""
    model = Gemel(tiny_llm(arch, "sdpa"), DIM, K).to(DEVICE)
    rng = np.random.default_rng(2)
    features = rng.normal(size=(4, DIM)).astype(np.float32)
    prompts = [Example(e.id, e.ids, e.images, [7, 8, EOS], 5 + K) for e in examples(rng)]
    batch = collate(prompts, features, PAD)
    with torch.no_grad():
        assert model.loss(batch, demo_image_grad=False).item() == pytest.approx(model.loss(batch).item(), rel=1e-5)


def naive_sequence_score(model: Gemel, e: Example, features: np.ndarray, seq: list[int]) -> float:
    """Teacher forcing, one full forward per sequence: sum of log p of its tokens / its length."""
    batch = collate([Example(e.id, e.ids + seq[:-1], e.images, [])], features, PAD)
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.forward_hidden(batch).last_hidden_state[0]), -1)
    start = len(e.ids) - 1  # the output at the prompt's last token predicts the first answer token
    return float(sum(logp[start + i, t] for i, t in enumerate(seq))) / len(seq)


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("gemma3", "sdpa"), ("opt", "sdpa"), ("gemma3", "eager")])
def test_candidate_scores_match_teacher_forcing(arch: str, attn: str) -> None:
    """Candidate-aware decoding scores every candidate of each prompt in one pass after the
    prefill; each score must equal that candidate's teacher-forced score, whatever the others."""
    model = Gemel(tiny_llm(arch, attn), DIM, K).to(DEVICE)
    rng = np.random.default_rng(3)
    features = rng.normal(size=(4, DIM)).astype(np.float32)
    _, names = names_trie()
    prompts = examples(rng)
    # Each prompt its own candidates: shared prefixes, different counts, a one-token name.
    seqs = [[n + [EOS] for n in names[:4]], [n + [EOS] for n in names[3:]], [[16, EOS], [5, 6, EOS]]]
    got = score_candidates(model, prompts, features, PAD, seqs, batch_size=3)
    for e, per, scores in zip(prompts, seqs, got, strict=True):
        assert scores.tolist() == pytest.approx([naive_sequence_score(model, e, features, s) for s in per], abs=1e-4)
    # Batched and alone agree, and the order of the candidates does not change a score.
    alone = score_candidates(model, prompts[:1], features, PAD, [seqs[0][::-1]], batch_size=1)[0]
    assert alone.tolist() == pytest.approx(got[0][::-1].tolist(), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_length_penalty_matches_naive_beam_search_and_reorders_names(arch: str) -> None:
    """Beam search at length penalties other than 1 (0: raw sums, favouring short names; 2:
    favouring long ones), and with a token budget that cuts long names off, against the naive beam
    search; with a beam per name, the ranking is every name by its teacher-forced
    sum / length ** penalty, and it changes with the penalty."""
    model = Gemel(tiny_llm(arch, "sdpa"), DIM, K).to(DEVICE)
    rng = np.random.default_rng(4)
    features = rng.normal(size=(4, DIM)).astype(np.float32)
    trie, names = names_trie()
    prompts = examples(rng)
    for penalty in (0.0, 0.5, 2.0):
        for beams, budget in ((1, 12), (3, 12), (3, 4)):
            batched = decode(model, prompts, features, PAD, trie, beams, budget, length_penalty=penalty, batch_size=3)
            for e, got in zip(prompts, batched, strict=True):
                want = naive_beam_search(model, e, features, trie, beams, budget, penalty)
                assert [h.value for h in got] == [h.value for h in want], (penalty, beams, budget)
                assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
    seqs = [n + [EOS] for n in names]
    rankings: dict[float, list[list[int]]] = {}
    for penalty in (0.0, 1.0, 2.0):
        got = decode(model, prompts, features, PAD, trie, len(names), 12, length_penalty=penalty, batch_size=3)
        rankings[penalty] = []
        for e, hyps in zip(prompts, got, strict=True):
            sums = [naive_sequence_score(model, e, features, s) * len(s) for s in seqs]
            reference = [s / len(q) ** penalty for s, q in zip(sums, seqs, strict=True)]
            assert [h.score for h in hyps] == pytest.approx(sorted(reference, reverse=True), abs=1e-4)
            assert [h.value for h in hyps] == sorted(range(len(names)), key=lambda i: -reference[i])
            rankings[penalty].append([h.value for h in hyps])
    # The penalty does reorder these names: each pair of penalties ranks them differently.
    assert rankings[0.0] != rankings[1.0] and rankings[1.0] != rankings[2.0] and rankings[0.0] != rankings[2.0]
