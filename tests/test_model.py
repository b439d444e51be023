"""The GEMEL model on the real SmolLM2-135M: prompt assembly, the answer-only loss, trie-constrained
beam search, a short training run and the mapper checkpoint."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gemel.config import TrainParams, load_params
from gemel.generation.decoding import beam_search, decode
from gemel.generation.kb_trie import build_entity_trie
from gemel.generation.llm import answer_ids, get_spec, load_llm, load_tokenizer
from gemel.generation.model import Gemel
from gemel.generation.prompt import IMAGE, Example, PromptBuilder, collate
from gemel.generation.training import lr_factor, optimizer_steps, train
from gemel.link.examples import LinkExample
from tests.conftest import TEST_SEED

NAMES = ["Mercury (planet)", "Mercury (element)", "Freddie Mercury", "Jordan", "Jordan River",
         "Michael Jordan", "Apple Inc.", "Apple", "Mercury Records"]
DIM = 16


@pytest.fixture(scope="module")
def spec():
    return get_spec(load_params()["llms"], "smollm2-135m")


@pytest.fixture(scope="module")
def tokenizer(spec):
    return load_tokenizer(spec)


@pytest.fixture(scope="module")
def llm(spec):
    return load_llm(spec)


@pytest.fixture(scope="module")
def trie(tokenizer):
    return build_entity_trie(NAMES, [f"E{i}" for i in range(len(NAMES))], tokenizer, "smollm2-135m")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Eight mentions whose gold entity only the image tells apart, and demonstrations."""
    gold = ["Mercury (planet)", "Freddie Mercury", "Mercury (element)", "Mercury (planet)",
            "Jordan River", "Michael Jordan", "Jordan", "Michael Jordan"]
    rows = [{"id": f"m{i}", "split": "train", "text": f"A photo of {g.split()[0] if 'Mercury' in g else 'Jordan'} today.",
             "mention": "Mercury" if "Mercury" in g else "Jordan", "image": f"img{i}.png",
             "entity_id": f"E{NAMES.index(g)}", "entity_name": g, "is_nil": False} for i, g in enumerate(gold)]
    mentions = pd.DataFrame(rows)
    demos = pd.DataFrame({"id": mentions["id"],
                          "demo_ids": [[f"m{(i + 2) % 8}", f"m{(i + 1) % 8}"] for i in range(8)],
                          "demo_scores": [[0.5, 0.9]] * 8})
    features = np.random.default_rng(0).normal(size=(8, DIM)).astype(np.float32)
    return mentions, demos, features


def builder(data, tokenizer, use_image: bool = True, num_demos: int = 2) -> PromptBuilder:
    mentions, demos, _ = data
    return PromptBuilder(mentions, demos, {f"img{i}.png": i for i in range(8)}, tokenizer, 4, use_image, num_demos)


def model_for(llm, seed: int = 0) -> Gemel:
    torch.manual_seed(seed)
    return Gemel(llm, DIM, 4)


def test_prompt_layout(data, tokenizer) -> None:
    b = builder(data, tokenizer)
    e = b.example("m0", with_target=True)
    # two demonstrations and the question, each with its own k = 4 image slots and image
    assert e.ids.count(IMAGE) == 3 * 4 and e.images == [2, 1, 0]
    assert e.target == answer_ids(tokenizer, "Mercury (planet)") and e.target[-1] == tokenizer.eos_token_id
    text = tokenizer.decode([t for t in e.ids if t != IMAGE])
    # the most similar demonstration (m1, score 0.9) stands right before the question
    assert text.index("Freddie Mercury") > text.index("Mercury (element)")
    assert text.endswith("[Question]What does Mercury mentioned in the text refer to?\n[Answer]")
    assert "m0" not in b.demos["m0"][-2:]
    no_image = builder(data, tokenizer, use_image=False).example("m0", with_target=False)
    assert IMAGE not in no_image.ids and no_image.images == [] and no_image.target == []
    assert builder(data, tokenizer, num_demos=0).example("m0", False).ids.count(IMAGE) == 4


def test_answer_loss_matches_full_logits(data, tokenizer, llm) -> None:
    model = model_for(llm)
    e = builder(data, tokenizer).example("m1", with_target=True)
    batch = collate([e], data[2], tokenizer.eos_token_id)
    with torch.no_grad():
        logits = llm(inputs_embeds=model.embed(batch)).logits[0]
        n = len(e.target)
        reference = torch.nn.functional.cross_entropy(logits[-n - 1:-1], torch.tensor(e.target))
        assert model.loss(batch).item() == pytest.approx(reference.item(), rel=1e-4)


def test_left_padding_changes_nothing(data, tokenizer, llm) -> None:
    model = model_for(llm)
    b = builder(data, tokenizer)
    short = b.example("m0", with_target=True)
    extra = [t for t in short.ids if t != IMAGE][:30]
    long = Example("x", extra + short.ids, short.images, short.target)  # a longer prompt pads `short`
    pad = tokenizer.eos_token_id
    with torch.no_grad():
        alone = model.loss(collate([short], data[2], pad)).item()
        together = model.loss(collate([short, long], data[2], pad)).item()
        other = model.loss(collate([long], data[2], pad)).item()
    n = len(short.target)
    assert together == pytest.approx((alone * n + other * n) / (2 * n), rel=1e-4)


def test_question_only_gradient_matches_a_full_pass_with_detached_demonstrations(data, tokenizer, llm) -> None:
    """demo_image_grad=False runs the demonstrations without autograd and backpropagates through the
    question only; loss and gradient must equal a full pass whose demonstration images are detached."""
    model = model_for(llm)
    b = builder(data, tokenizer)
    short, e = b.example("m0", with_target=True), b.example("m5", with_target=True)
    text = [t for t in e.ids if t != IMAGE][:2]
    long = Example("x", text + e.ids, e.images, e.target, e.query_start + 2)  # pads `short` on the left
    batch = collate([short, long], data[2], tokenizer.eos_token_id)
    assert batch.query_images.tolist() == [False, False, True] * 2

    def grads(loss: torch.Tensor) -> tuple[float, torch.Tensor]:
        model.mapper.zero_grad()
        loss.backward()
        return loss.item(), model.mapper.linear.weight.grad.clone()

    fast_loss, fast = grads(model.loss(batch, demo_image_grad=False))
    attn = batch.attention_mask
    hidden = llm.base_model(inputs_embeds=model.embed(batch, demo_image_grad=False), attention_mask=attn,
                            position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    pred = batch.target_mask[:, 1:]
    ref_loss, ref = grads(torch.nn.functional.cross_entropy(model.logits(hidden[:, :-1][pred]), batch.ids[:, 1:][pred]))
    full_loss, full = grads(model.loss(batch))
    assert fast_loss == pytest.approx(ref_loss, rel=1e-5) and full_loss == pytest.approx(ref_loss, rel=1e-5)
    def rel(a: torch.Tensor) -> float:
        return float((a - ref).norm() / ref.norm())

    assert rel(fast) < 1e-4
    assert rel(full) > 1e-2  # the demonstrations' images do carry gradient


def test_beam_search_is_exact_and_yields_kb_names(data, tokenizer, llm, trie) -> None:
    model = model_for(llm)
    b = builder(data, tokenizer)
    examples = [b.example(i, with_target=False) for i in ("m0", "m4", "m5")]
    pad = tokenizer.eos_token_id
    batched = decode(model, examples, data[2], pad, trie.trie, num_beams=4, max_new_tokens=16, batch_size=3)
    for e, hyps in zip(examples, batched, strict=True):
        assert len(hyps) == 4 and all(0 <= h.value < len(NAMES) for h in hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        single = beam_search(model, collate([e], data[2], pad), trie.trie, 4, 16)[0]
        assert [h.value for h in single] == [h.value for h in hyps]
        # each beam's score is its name's mean token log-probability under teacher forcing
        for h in hyps:
            target = answer_ids(tokenizer, NAMES[h.value])
            with torch.no_grad():
                nll = model.loss(collate([Example(e.id, e.ids, e.images, target)], data[2], pad)).item()
            assert h.score == pytest.approx(-nll, abs=1e-3)
    # with as many beams as names, every name is found, and the best is the teacher-forced best
    e = examples[0]
    everything = beam_search(model, collate([e], data[2], pad), trie.trie, len(NAMES), 16)[0]
    assert sorted(h.value for h in everything) == list(range(len(NAMES)))
    with torch.no_grad():
        scores = [-model.loss(collate([Example(e.id, e.ids, e.images, answer_ids(tokenizer, n))], data[2], pad)).item()
                  for n in NAMES]
    assert everything[0].value == int(np.argmax(scores))


def test_training_lowers_answer_loss_and_leaves_llm_untouched(data, tokenizer, llm) -> None:
    model = model_for(llm, seed=TEST_SEED)
    b = builder(data, tokenizer)
    examples = [b.example(f"m{i}", with_target=True) for i in range(8)]
    pad = tokenizer.eos_token_id
    before_llm = {k: v.clone() for k, v in llm.state_dict().items()}
    before_mapper = model.mapper.linear.weight.detach().clone()

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([model.loss(collate([e], data[2], pad)).item() for e in examples]))

    start = mean_loss()
    p = TrainParams(epochs=2, lr=1e-3, batch_size=4, grad_accum=1, warmup=0.1, seed=TEST_SEED)
    hist = train(model, examples, data[2], pad, p, progress=False)
    assert len(hist.loss) == optimizer_steps(8, p) == 4
    # Lower, with no margin read off one seed: 0.8x held for seeds 0, 2 and 3 but not 1 (0.803x).
    assert mean_loss() < start
    assert not torch.equal(model.mapper.linear.weight, before_mapper)
    assert all(torch.equal(v, before_llm[k]) for k, v in llm.state_dict().items())
    assert not any(q.requires_grad for q in llm.parameters())


def test_mapper_round_trip(tmp_path, data, tokenizer, llm) -> None:
    model = model_for(llm, seed=1)
    model.mapper.fit(torch.from_numpy(data[2]))
    path = tmp_path / "mapper.safetensors"
    model.save_mapper(path, {"llm": "smollm2-135m"})
    other = model_for(llm, seed=2)
    assert not torch.equal(other.mapper.linear.weight, model.mapper.linear.weight)
    other.load_mapper(path)
    assert all(torch.equal(a, b) for a, b in zip(other.mapper.state_dict().values(), model.mapper.state_dict().values(), strict=True))
    assert other.mapper.scale.item() != 1.0  # the fitted standardisation travels with the weights
    e = builder(data, tokenizer).example("m3", with_target=True)
    batch = collate([e], data[2], tokenizer.eos_token_id)
    with torch.no_grad():
        assert other.loss(batch).item() == model.loss(batch).item()
    with pytest.raises(ValueError, match="does not fit this model"):
        Gemel(llm, DIM + 1, 4).load_mapper(path)


def test_lr_schedule_warms_up_then_decays() -> None:
    total, warmup = 100, 10
    f = [lr_factor(s, warmup, total) for s in range(total)]
    assert f[0] > 0  # the original's first step used lr 0
    assert f[warmup - 1] == 1.0 and max(f) == 1.0  # warm-up ends after `warmup` optimizer steps
    assert all(a < b for a, b in zip(f[:warmup - 1], f[1:warmup], strict=True))
    assert all(a > b for a, b in zip(f[warmup:-1], f[warmup + 1:], strict=True))
    assert f[-1] == pytest.approx(1 / (total - warmup)) and not any(math.isnan(x) for x in f)


def examples_of(data, b: PromptBuilder, cands: pd.DataFrame) -> dict[str, LinkExample]:
    """The mentions of `cands` as examples (gemel.link.examples), by id."""
    from gemel.link.examples import pipeline_examples

    mentions = data[0].set_index("id", drop=False).loc[list(cands["id"])]
    return {e.id: e for e in pipeline_examples(b, mentions, cands)}


def test_candidate_aware_linking_stays_among_candidates_and_fuses_exactly(data, tokenizer, llm, trie) -> None:
    """Candidate-aware mode on the real LLM: every answer is one of the mention's own candidates,
    each candidate's LLM score is its teacher-forced score, and the ranking follows LLM + w * prior."""
    from gemel.config import DecodeParams
    from gemel.link.fusion import Fusion
    from gemel.link.ranking import LLMRanker, sure

    model = model_for(llm)
    b = builder(data, tokenizer)
    cands = pd.DataFrame({
        "id": ["m0", "m4", "m5"],
        "cand_ids": [["E0", "E1", "E2"], ["E3", "E4"], ["E5", "E8", "E6", "E7"]],
        "cand_names": [[NAMES[0], NAMES[1], NAMES[2]], [NAMES[3], NAMES[4]], [NAMES[5], NAMES[8], NAMES[6], NAMES[7]]],
        "cand_scores": [[-0.1, -2.5, -3.0], [-0.7, -0.9], [-3.0, -0.05, -4.0, -5.0]]}).set_index("id", drop=False)
    ranker = LLMRanker(model, trie, tokenizer.eos_token_id, tokenizer)
    features = data[2]
    p = DecodeParams(candidates="constrained", batch_size=2, ranker_sure=None)  # the LLM on every mention
    ids = ["m0", "m4", "m5"]
    by_id = examples_of(data, b, cands)
    examples = [by_id[i] for i in ids]
    llm_scores = ranker.llm_scores(examples, features, p)
    for i, scores in zip(ids, llm_scores, strict=True):
        e = b.example(i, with_target=False)
        assert by_id[i].prompt == e  # the example's prompt is the builder's
        for name, s in zip(cands.at[i, "cand_names"], scores, strict=True):
            target = answer_ids(tokenizer, name)
            with torch.no_grad():
                nll = model.loss(collate([Example(e.id, e.ids, e.images, target)], features, tokenizer.eos_token_id)).item()
            assert s == pytest.approx(-nll, abs=1e-3)
    for w in (0.0, 1.0, 100.0):
        got = ranker.rank(examples, features, p, Fusion("weight", weight=w), llm_scores)
        for i, r, llm_s in zip(ids, got, llm_scores, strict=True):
            c = cands.loc[i]
            assert sorted(r.ids) == sorted(c["cand_ids"])  # nothing outside the candidates, nothing lost
            fused = llm_s + w * np.asarray(c["cand_scores"])
            assert r.scores == pytest.approx(sorted(fused.tolist(), reverse=True))
            assert r.ids[0] == c["cand_ids"][int(np.argmax(fused))]
    # a large weight hands the choice to the prior
    assert [r.ids[0] for r in ranker.rank(examples, features, p, Fusion("weight", weight=100.0), llm_scores)] == [
        "E0", "E3", "E8"]
    # a mention without any candidate falls back to the paper's beam search over the whole trie
    empty = pd.DataFrame({"id": ["m6"], "cand_ids": [[]], "cand_names": [[]], "cand_scores": [[]]}).set_index("id", drop=False)
    m6 = examples_of(data, b, empty)["m6"]
    got = ranker.rank([by_id["m0"], m6], features, p, Fusion("weight", weight=1.0))
    paper = ranker.rank([m6], features, DecodeParams(candidates="none", batch_size=2))[0]
    assert got[1] == paper and len(paper.ids) == p.num_beams and got[1].llm_scores is None
    assert sorted(got[0].ids) == sorted(cands.at["m0", "cand_ids"])
    # A mention the ranker is sure of (first prior >= decode.ranker_sure) keeps the prior's order,
    # and the LLM is not asked about it; the others are fused as before.
    by_prior = DecodeParams(candidates="constrained", batch_size=2, ranker_sure=0.9)  # m0's first: e^-0.1 = 0.905
    assert sure(examples, by_prior) == [True, False, False]
    got = ranker.rank(examples, features, by_prior, Fusion("weight", weight=1.0), llm_scores)
    assert got[0].ids == cands.at["m0", "cand_ids"] and got[0].llm_scores is None
    assert got[0].scores == pytest.approx(cands.at["m0", "cand_scores"])
    assert got[1:] == ranker.rank(examples, features, p, Fusion("weight", weight=1.0), llm_scores)[1:]


def test_described_scores_are_the_text_given_the_entity_against_the_text_alone(tokenizer, llm) -> None:
    """gemel.generation.describe: log p(window | entity prompt) - log p(window | [Text]), teacher-forced, for
    the first `top` described candidates; 0 for the rest; the description that explains the text
    scores higher than one that does not."""
    from gemel.generation.describe import ENTITY, TEXT, described_scores, window
    from gemel.generation.llm import start_ids

    model = model_for(llm)
    model.eval()
    eos = tokenizer.eos_token_id
    text = "In the cup final he scored twice, and the club won the league title with his goals."
    contexts = [(text, "Silva"), ("Silva painted the harbour at dawn.", "Silva")]
    names = [["Silva", "Silva", "Silva", "Silva"], ["Silva"]]
    descs = [["Sex: male. Occupation: association football player.", "Sex: female. Occupation: painter, sculptor.",
              None, "Sex: male. Occupation: association football player."], [None]]
    got = described_scores(model, tokenizer, eos, contexts, descs, names, top=3, batch_size=2)
    assert got[1].tolist() == [0.0]  # nothing described: nothing read
    assert got[0][2] == 0.0 and got[0][3] == 0.0  # no description; beyond top
    assert got[0][0] > got[0][1]  # the footballer explains a match report better than the painter
    priors = [np.log(np.array([0.005, 0.5, 0.3, 0.1])), np.zeros(1)]  # the first under MIN_PRIOR: not read
    cut = described_scores(model, tokenizer, eos, contexts, descs, names, top=3, priors=priors, batch_size=2)
    assert cut[0][0] == 0.0 and cut[0][1] == pytest.approx(got[0][1], abs=1e-4)

    words = window(tokenizer, text, "Silva")
    assert words == tokenizer(text, add_special_tokens=False).input_ids[:48]  # absent mention: the text's start

    def logp(prompt: str) -> float:
        ids = start_ids(tokenizer) + tokenizer(prompt, add_special_tokens=False).input_ids
        with torch.no_grad():
            nll = model.loss(collate([Example("x", ids, [], words)], np.zeros((0, 1), np.float32), eos)).item()
        return -nll * len(words)

    alone = logp(TEXT)
    for j in (0, 1):
        entity = ENTITY.format(name="Silva", description=descs[0][j])
        assert got[0][j] == pytest.approx(logp(entity) - alone, abs=2e-3 * len(words))


def test_window_keeps_the_mention_and_some_left_context(tokenizer) -> None:
    from gemel.generation.describe import window

    text = " ".join(f"w{i}" for i in range(200)) + " Mercury rose."
    ids = window(tokenizer, text, "Mercury", width=12)
    rest = tokenizer(text[text.index("Mercury"):], add_special_tokens=False).input_ids
    assert len(ids) == 12 and ids[-len(rest):] == rest  # the mention and what follows, whole
    assert "w199 Mercury rose." in tokenizer.decode(ids)  # then left context up to the width


def test_learned_fusion_reads_the_descriptions_through_rank(data, tokenizer, llm, trie) -> None:
    """LLMRanker.rank with decode.describe under a learned fusion: the `described` feature is
    gemel.generation.describe's score of the first `describe` described candidates, against the mention's
    own text; a weight fusion reads none."""
    import dataclasses

    from gemel.config import DecodeParams
    from gemel.generation.describe import described_scores
    from gemel.link.fusion import FEATURES, Fusion
    from gemel.link.ranking import LLMRanker

    model = model_for(llm)
    b = builder(data, tokenizer, use_image=False, num_demos=0)
    cands = pd.DataFrame({"id": ["m0", "m5"], "cand_ids": [["E0", "E1", "E2"], ["E3", "E4", "E5"]],
                          "cand_names": [NAMES[0:3], NAMES[3:6]],
                          "cand_scores": [[-0.5, -1.0, -2.0], [-0.4, -1.5, -1.6]]}).set_index("id", drop=False)
    ranker = LLMRanker(model, trie, tokenizer.eos_token_id, tokenizer,
                       {"E0": "The smallest planet of the Solar System.", "E2": "A British singer of Queen.",
                        "E5": "An American basketball player."})
    only_described = Fusion("learned", weights=tuple(1.0 if f == "described" else 0.0 for f in FEATURES))
    p = DecodeParams(candidates="constrained", describe=2, ranker_sure=None, batch_size=2)
    ids = ["m0", "m5"]
    examples = list(examples_of(data, b, cands).values())
    contexts = dict(zip(data[0]["id"], zip(data[0]["text"], data[0]["mention"], strict=True), strict=True))
    assert [e.context for e in examples] == [contexts[i] for i in ids]
    want = described_scores(model, tokenizer, tokenizer.eos_token_id, [contexts[i] for i in ids],
                            [["The smallest planet of the Solar System.", None, "A British singer of Queen."],
                             [None, None, "An American basketball player."]],
                            [NAMES[0:3], NAMES[3:6]], top=2)
    assert want[0][0] != 0.0 and want[0][2] == 0.0 and not want[1].any()  # top=2: E2 and E5 are not read
    got = ranker.rank(examples, data[2], p, only_described)
    for r, w in zip(got, want, strict=True):
        assert r.scores == pytest.approx(sorted(w.tolist(), reverse=True), abs=1e-6)
    s = ranker.scored(examples, data[2], p, read=False)
    assert all(x.described is None for x in s)  # the weight fusion reads no descriptions
    # The ranker alone (the LLM earned no say on dev): the prior's order, and the LLM is not run.
    from gemel.link.fusion import RANKER_ALONE

    alone = dataclasses.replace(ranker, model=None).rank(examples, data[2], p, RANKER_ALONE)  # no LLM to ask
    assert [r.ids for r in alone] == [list(cands.at[i, "cand_ids"]) for i in ids]
    assert all(r.llm_scores is None for r in alone)
