"""Candidate-aware fusion: a mention's candidates, each with the LLM's score of its name and its
prior from the candidates stage (the ranker's log-softmax), become one ranking. `decode.fusion`:

- `weight`: LLM score + w * prior, one number per dataset (`decode.fusion_weight`; `auto`: the
  best of `fusion_grid` on the dev split);
- `learned`: a listwise softmax over FEATURES fitted on the dev split's scored mentions, so that
  the LLM's say is earned per dataset and described by more than one number: its score, its
  preference among this mention's candidates, and with `decode.describe` how much each
  candidate's description explains the text (gemel.generation.describe).

`cross_validate` measures on dev, by k-fold, what the ranker alone, the LLM alone and the fusion
score on the same mentions: the LLM's share, measured rather than assumed. Where the learned fusion
scores below the ranker alone there, `earned` keeps the ranker alone, and the LLM is not run.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemel.config import DecodeParams
from gemel.errors import GemelError
from gemel.search import listwise

FEATURES = ("prior", "llm", "llm_softmax", "llm_top", "described")
FOLDS = 5
L2 = 1e-2  # a few hundred dev mentions fit five weights: a light pull towards 0 keeps them stable


class FusionError(GemelError, ValueError):
    """A decode report whose fusion cannot be rebuilt."""


@dataclass(frozen=True)
class Scored:
    """One mention's candidates, best prior first, with what fusion reads about each."""
    names: Sequence[str]
    prior: np.ndarray  # log p(candidate | mention) from the candidates stage
    llm: np.ndarray  # the LLM's length-normalised log-probability of the name
    described: np.ndarray | None = None  # decode.describe: gemel.generation.describe's score, 0 where not computed

    def features(self) -> np.ndarray:
        """[K, len(FEATURES)]."""
        llm = np.asarray(self.llm, dtype=np.float64)
        k = len(llm)
        softmax = llm - np.logaddexp.reduce(llm) if k else llm
        top = (llm == llm.max()).astype(np.float64) if k else llm
        described = np.zeros(k) if self.described is None else np.asarray(self.described, dtype=np.float64)
        return np.stack([np.asarray(self.prior, dtype=np.float64), llm, softmax, top, described], axis=1)


@dataclass(frozen=True)
class Fusion:
    kind: str  # weight | learned
    weight: float = 0.0  # weight: LLM + weight * prior
    weights: tuple[float, ...] = ()  # learned: one per FEATURES

    def score(self, s: Scored) -> np.ndarray:
        if self.kind == "weight":
            return np.asarray(s.llm, dtype=np.float64) + self.weight * np.asarray(s.prior, dtype=np.float64)
        return s.features() @ np.asarray(self.weights, dtype=np.float64)

    @property
    def ranker_only(self) -> bool:
        """The LLM has no say: its scores need not be computed."""
        return self.kind == "learned" and not any(self.weights[1:])

    def record(self) -> dict[str, Any]:
        """What the decode report keeps, so that `gemel link` fuses the same way."""
        if self.kind == "weight":
            return {"fusion": "weight", "fusion_weight": self.weight}
        return {"fusion": "learned", "fusion_weights": dict(zip(FEATURES, self.weights))}

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> Fusion | None:
        """The fusion a decode report records; None when it records none (the paper's mode, or a
        report older than the choice)."""
        if record.get("fusion") == "learned":
            weights = record.get("fusion_weights") or {}
            missing = [f for f in FEATURES if f not in weights]
            if missing:
                raise FusionError(f"{source}: fusion_weights lacks {', '.join(missing)} (written by another version: "
                                  "rerun the decode stage)")
            return cls("learned", weights=tuple(float(weights[f]) for f in FEATURES))
        if record.get("fusion_weight") is not None:
            return cls("weight", weight=float(record["fusion_weight"]))
        return None


def gold_positions(scored: Sequence[Scored], gold: Sequence[str]) -> list[int]:
    return [list(s.names).index(g) if g in list(s.names) else -1 for s, g in zip(scored, gold)]


def hits(scored: Sequence[Scored], gold: Sequence[str], score: Callable[[Scored], np.ndarray]) -> np.ndarray:
    """Per mention, whether its best candidate by `score` is the gold name (ties: the first)."""
    return np.array([len(s.names) > 0 and s.names[int(np.argmax(score(s)))] == g for s, g in zip(scored, gold)],
                    dtype=bool)


def accuracy(scored: Sequence[Scored], gold: Sequence[str], score: Callable[[Scored], np.ndarray]) -> float:
    h = hits(scored, gold, score)
    return round(float(h.mean()), 4) if len(h) else 0.0


def choose_weight(scored: Sequence[Scored], gold: Sequence[str], grid: Sequence[float]
                  ) -> tuple[float, dict[str, float]]:
    """The grid weight with the best accuracy; ties go to the smaller weight, which leaves the LLM
    the larger say. Returns it and the accuracy of every weight."""
    acc = {str(w): accuracy(scored, gold, Fusion("weight", weight=w).score) for w in grid}
    return float(max(grid, key=lambda w: (acc[str(w)], -w))), acc


def learn(scored: Sequence[Scored], gold: Sequence[str]) -> Fusion:
    w = listwise.fit([s.features() for s in scored], gold_positions(scored, gold), len(FEATURES), L2)
    return Fusion("learned", weights=tuple(round(float(x), 6) for x in w))


def fit(scored: Sequence[Scored], gold: Sequence[str], p: DecodeParams) -> tuple[Fusion, dict[str, Any]]:
    """The fusion decode.* asks for, fitted (or its weight chosen) on these scored mentions, and
    what the report says of the choice."""
    if p.fusion == "learned":
        return learn(scored, gold), {}
    if p.fusion_weight != "auto":
        return Fusion("weight", weight=float(p.fusion_weight)), {}
    weight, acc = choose_weight(scored, gold, p.fusion_grid)
    return Fusion("weight", weight=weight), {"dev_accuracy_by_weight": acc}


RANKER_ALONE = Fusion("learned", weights=(1.0,) + (0.0,) * (len(FEATURES) - 1))
LLM_ALONE = Fusion("weight", weight=0.0)  # candidate-aware without a prior: the LLM alone chooses


def earned(fusion: Fusion, cv: dict[str, Any]) -> tuple[Fusion, bool]:
    """The learned fusion if it scored at least the ranker alone on the cross-validated dev
    mentions, else the ranker alone (the LLM has not earned a say on this dataset), as when too few
    dev mentions were scored to cross-validate at all: a fusion fitted on a handful of mentions is
    noise (on RichpediaMEL the ranker is sure of 198 of 200 dev mentions, and a fusion fitted on
    the other 2 cost 0.2 points on test). Returns the fusion kept and whether the LLM kept its say."""
    if fusion.kind != "learned" or ("fused" in cv and cv["fused"] >= cv["ranker_alone"]):
        return fusion, True
    return RANKER_ALONE, False


def cross_validate(scored: Sequence[Scored], gold: Sequence[str], p: DecodeParams, folds: int = FOLDS
                   ) -> dict[str, Any]:
    """On these (dev) mentions, each fold scored by the fusion fitted on the other folds, beside the
    ranker alone (the prior's first) and the LLM alone (its best name): the three on the same
    mentions. Fewer mentions than folds: the fused score is left out."""
    out: dict[str, Any] = {"mentions": len(scored),
                           "ranker_alone": accuracy(scored, gold, lambda s: np.asarray(s.prior)),
                           "llm_alone": accuracy(scored, gold, lambda s: np.asarray(s.llm))}
    if len(scored) < folds:
        return out
    fold = np.arange(len(scored)) % folds
    right = 0
    for f in range(folds):
        train = [i for i in range(len(scored)) if fold[i] != f]
        test = [i for i in range(len(scored)) if fold[i] == f]
        fusion, _ = fit([scored[i] for i in train], [gold[i] for i in train], p)
        right += int(hits([scored[i] for i in test], [gold[i] for i in test], fusion.score).sum())
    return {**out, "folds": folds, "fused": round(right / len(scored), 4)}


def chosen_on_dev(scored: Sequence[Scored], gold: Sequence[str], first_right: np.ndarray, by_prior: np.ndarray,
                  p: DecodeParams) -> tuple[Fusion, dict[str, Any]]:
    """The fusion decode.* asks for, fitted (`learned`) or chosen (weight `auto`) on the dev
    mentions, and its report, with the ranker alone, the LLM alone and the fusion cross-validated.
    `scored`, `gold`: the dev mentions the LLM scored; `first_right`, `by_prior`: per dev mention,
    whether the prior's first is the gold name, and whether the ranker is sure of it (not scored)."""
    fusion, extra = fit(scored, gold, p)
    cv = cross_validate(scored, gold, p)
    fusion, kept = earned(fusion, cv)
    if not kept:
        extra["llm_kept"] = False  # below the ranker alone on dev, or too few scored to tell: the ranker links
    # The same dev mentions whole: those the ranker is sure of count with the prior's first.
    n, sure_right = len(first_right), int(first_right[by_prior].sum())
    whole: dict[str, Any] = {"mentions": n, "ranker_sure": int(by_prior.sum()),
                             "ranker_alone": round(float(first_right.mean()), 4)}
    if "fused" in cv:
        whole["fused"] = round((sure_right + round(cv["fused"] * len(scored))) / n, 4)
    return fusion, {**fusion.record(), "chosen_on": f"dev ({n} mentions, {len(scored)} scored by the LLM)",
                    **extra, "dev_cross_validated": {**whole, "llm_scored": cv}}
