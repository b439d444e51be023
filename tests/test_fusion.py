"""Fusion of the LLM's scores with the candidate prior (gemel.link.fusion): the one-weight rule, the
learned listwise fusion, its cross-validated report and its record for `gemel link`."""
from __future__ import annotations

import numpy as np
import pytest

from gemel.config import DecodeParams
from gemel.link.fusion import FEATURES, Fusion, FusionError, Scored, choose_weight, cross_validate, fit, learn


def test_weighted_score_is_the_formula_and_the_weight_is_chosen_by_dev_accuracy() -> None:
    s = Scored(["A", "B", "C"], np.array([-0.1, -2.0, -0.5]), np.array([-1.0, -0.5, -3.0]))
    assert Fusion("weight", weight=0.0).score(s).tolist() == s.llm.tolist()
    assert Fusion("weight", weight=2.0).score(s).tolist() == pytest.approx((s.llm + 2.0 * s.prior).tolist())
    # w=0 picks B (the LLM), w>=1 picks A (-1.1 against -2.5): gold A -> the smallest winning weight
    w, acc = choose_weight([s], ["A"], [0.0, 1.0, 4.0])
    assert (w, acc) == (1.0, {"0.0": 0.0, "1.0": 1.0, "4.0": 1.0})
    assert choose_weight([s], ["B"], [0.0, 1.0, 4.0])[0] == 0.0


def _mentions(n: int, seed: int) -> tuple[list[Scored], list[str]]:
    """Mentions where the prior's first is right half the time; otherwise the gold is the one whose
    description explains the text (`described`), and the LLM's name score is noise. A weight on the
    name score cannot see the descriptions; the learned fusion can."""
    rng = np.random.default_rng(seed)
    prior = np.log(np.array([0.3, 0.25, 0.2, 0.15, 0.1]))
    scored, gold = [], []
    for i in range(n):
        names = [f"m{i}e{j}" for j in range(5)]
        right = 0 if rng.random() < 0.5 else int(rng.integers(1, 5))
        described = rng.normal(0.0, 0.2, 5)
        described[right] += 2.0 if right else rng.uniform(-1.0, 2.0)
        scored.append(Scored(names, prior, rng.normal(-3.0, 1.0, 5), described))
        gold.append(names[right])
    return scored, gold


def test_learned_fusion_beats_the_ranker_and_the_best_single_weight_out_of_sample() -> None:
    train, gold = _mentions(300, 0)
    test, test_gold = _mentions(300, 1)
    learned = learn(train, gold)
    assert learned.kind == "learned" and len(learned.weights) == len(FEATURES)
    assert learned == learn(train, gold)  # deterministic
    w, _ = choose_weight(train, gold, DecodeParams().fusion_grid)

    def acc(f: Fusion) -> float:
        return float(np.mean([s.names[int(np.argmax(f.score(s)))] == g for s, g in zip(test, test_gold)]))

    ranker = float(np.mean([s.names[0] == g for s, g in zip(test, test_gold)]))
    assert acc(learned) > max(ranker, acc(Fusion("weight", weight=w))) + 0.3
    assert acc(learned) > 0.85


def test_cross_validation_reports_the_three_on_the_same_mentions() -> None:
    scored, gold = _mentions(100, 2)
    cv = cross_validate(scored, gold, DecodeParams())
    assert cv["mentions"] == 100 and cv["folds"] == 5
    assert cv["ranker_alone"] == pytest.approx(np.mean([s.names[0] == g for s, g in zip(scored, gold)]), abs=1e-4)
    assert cv["llm_alone"] == pytest.approx(
        np.mean([s.names[int(np.argmax(s.llm))] == g for s, g in zip(scored, gold)]), abs=1e-4)
    assert cv["fused"] > cv["ranker_alone"]
    assert "fused" not in cross_validate(scored[:3], gold[:3], DecodeParams())  # fewer mentions than folds


def test_fit_follows_the_settings() -> None:
    scored, gold = _mentions(50, 3)
    assert fit(scored, gold, DecodeParams(fusion="weight", fusion_weight=2.0)) == (Fusion("weight", weight=2.0), {})
    auto, extra = fit(scored, gold, DecodeParams(fusion="weight"))
    assert auto.kind == "weight" and set(extra["dev_accuracy_by_weight"]) == {str(w) for w in DecodeParams().fusion_grid}
    assert fit(scored, gold, DecodeParams(fusion="learned"))[0].kind == "learned"


def test_the_record_rebuilds_the_fusion_and_a_partial_one_is_a_clear_error() -> None:
    learned = learn(*_mentions(50, 4))
    for f in (learned, Fusion("weight", weight=0.5)):
        assert Fusion.from_record(f.record(), "r.json") == f
    assert Fusion.from_record({"mode": "paper"}, "r.json") is None
    with pytest.raises(FusionError, match="r.json: fusion_weights lacks llm_softmax, llm_top, described"):
        Fusion.from_record({"fusion": "learned", "fusion_weights": {"prior": 1.0, "llm": 1.0}}, "r.json")


def test_features_of_a_mention() -> None:
    s = Scored(["A", "B"], np.array([-0.2, -1.7]), np.array([-1.0, -2.0]), described=np.array([0.5, 0.0]))
    f = s.features()
    assert f.shape == (2, len(FEATURES))
    np.testing.assert_allclose(f[:, FEATURES.index("llm_softmax")], np.array([-1.0, -2.0]) - np.logaddexp(-1.0, -2.0))
    assert f[:, FEATURES.index("llm_top")].tolist() == [1.0, 0.0]
    assert f[:, FEATURES.index("described")].tolist() == [0.5, 0.0]
    assert Scored(["A"], np.array([0.0]), np.array([-1.0])).features()[0, FEATURES.index("described")] == 0.0


def test_the_llm_keeps_its_say_only_where_it_earned_it_on_dev() -> None:
    from gemel.link.fusion import RANKER_ALONE, earned

    learned = learn(*_mentions(50, 5))
    assert earned(learned, {"ranker_alone": 0.80, "fused": 0.85}) == (learned, True)
    assert earned(learned, {"ranker_alone": 0.80, "fused": 0.80}) == (learned, True)  # a tie keeps it
    assert earned(learned, {"ranker_alone": 0.85, "fused": 0.80}) == (RANKER_ALONE, False)
    # Too few scored dev mentions to cross-validate: no evidence for the LLM, so the ranker links.
    assert earned(learned, {"ranker_alone": 0.5, "llm_alone": 0.5, "mentions": 2}) == (RANKER_ALONE, False)
    weight = Fusion("weight", weight=1.0)
    assert earned(weight, {"ranker_alone": 0.85, "fused": 0.80}) == (weight, True)  # a fixed rule stays
    assert RANKER_ALONE.ranker_only and not learned.ranker_only
    s = Scored(["A", "B"], np.array([-0.1, -2.0]), np.array([-5.0, -0.1]))
    assert RANKER_ALONE.score(s).tolist() == s.prior.tolist()
    assert Fusion.from_record(RANKER_ALONE.record(), "r.json") == RANKER_ALONE

