"""The train stage's logic: a run's mapper trained on the pipeline's own examples (the linker's
prompts and features), kept by its accuracy on the dev split, with the frozen LLM checked unchanged.
The loop itself is gemel.generation.training."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from gemel.config import DecodeParams, TrainParams
from gemel.generation.training import History, train
from gemel.link.linker import Linker


def dev_decode_params(p: TrainParams) -> DecodeParams:
    """How the dev evaluation links: train's own settings, so that changing decode.* never retrains."""
    # The LLM alone, on every dev mention: it is the LLM (and its mapper) that is being chosen.
    return DecodeParams(num_beams=p.dev_num_beams, candidates=p.dev_candidates, num_candidates=p.dev_num_candidates,
                        describe=0, ranker_sure=None)


@dataclass
class Fit:
    history: History
    report: dict[str, Any]  # train_report.json


class FrozenLLMError(RuntimeError):
    """A weight of the frozen LLM changed during training: a bug, never an input problem."""


def fit(linker: Linker, mentions: pd.DataFrame, p: TrainParams, use_image: bool, progress: bool = True) -> Fit:
    """Train the linker's mapper on the train split's linked mentions, keeping the best mapper by
    accuracy on the dev split (its first `dev_limit`). A text-only run has no image slots, so there
    is nothing to learn or choose: it trains 0 epochs and evaluates nothing (the decode report
    measures the LLM alone on dev, beside the ranker and the fusion)."""
    linked = mentions[~mentions["is_nil"]]
    train_ids = list(linked.loc[linked["split"] == "train", "id"])
    dev = linked[linked["split"] == "dev"]
    dev = dev.head(p.dev_limit) if p.dev_limit else dev
    examples = [linker.prompts.example(i, with_target=True) for i in train_ids]
    dp = dev_decode_params(p)
    dev_examples, gold = linker.examples(dev), list(dev["entity_name"])
    evaluate = ((lambda: linker.ranker.accuracy(dev_examples, gold, linker.features, dp))
                if len(dev) and use_image else None)
    if not use_image:
        p = dataclasses.replace(p, epochs=0)
    llm = linker.model.llm
    # Every in-place update bumps a tensor's version counter: unchanged counters prove the LLM was
    # not touched, without copying its weights.
    versions = [t._version for t in llm.parameters()]
    t0 = time.perf_counter()
    hist = train(linker.model, examples, linker.features, linker.ranker.pad_id, p, evaluate, progress)
    if [t._version for t in llm.parameters()] != versions or any(t.requires_grad for t in llm.parameters()):
        raise FrozenLLMError("the frozen LLM's weights changed during training")
    report = {"train_examples": len(examples), "dev_mentions": len(dev), "optimizer_steps": len(hist.loss),
              "first_loss": hist.loss[0]["loss"] if hist.loss else None,
              "last_loss": hist.loss[-1]["loss"] if hist.loss else None,
              "best_dev_accuracy": hist.best_accuracy if hist.dev else None, "best_step": hist.best_step,
              "examples_per_s": round(hist.examples_per_s, 3), "train_s": round(time.perf_counter() - t0, 1)}
    return Fit(hist, report)
