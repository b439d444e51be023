"""train: fit the linear mapper against the frozen LLM -> {train.out}/{model.llm}/mapper.safetensors,
run.json (what the run was built from: what `gemel link` reads), the loss curve and dev accuracy
(DVC plots) and train_report.json."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd

from gemel.candidates import CandidateError
from gemel.config import DecodeParams, ModelParams, TrainParams, section
from gemel.data.tables import read_mentions, write_text_atomic
from gemel.linker import build_linker, load_candidates
from gemel.llm import LLMError
from gemel.run import write_run_record
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    m, p = section(params, "model", ModelParams), section(params, "train", TrainParams)
    dp = section(params, "decode", DecodeParams)
    out = Path(p.out) / m.llm
    mentions = read_mentions(Path(params["prepare"]["out"]) / "mentions.parquet")
    demos = pd.read_parquet(Path(params["retrieve"]["out"]) / "demos.parquet")
    t0 = time.perf_counter()
    # Candidate-aware runs pick the best mapper by the LLM's choice among candidates (fusion weight 0).
    linker = build_linker(params, mentions, demos, Path(params["features"]["out"]) / "images.parquet", out / "trie.npz",
                          load_candidates(params))
    load_s = time.perf_counter() - t0
    linked = mentions[~mentions["is_nil"]]
    train_ids = list(linked.loc[linked["split"] == "train", "id"])
    dev = linked[linked["split"] == "dev"]
    dev = dev.head(p.dev_limit) if p.dev_limit else dev
    examples = linker.examples(train_ids, with_target=True)
    evaluate = (lambda: linker.accuracy(dev, dp)) if len(dev) else None
    from gemel.training import train  # after the data checks: importing torch's optim is not free

    if not m.use_image:  # the text-only ablation: no image slots, so the mapper has nothing to learn
        p = dataclasses.replace(p, epochs=0)
    llm_before = fingerprint(linker.model.llm)
    hist = train(linker.model, examples, linker.features, linker.pad_id, p, evaluate)
    if fingerprint(linker.model.llm) != llm_before:  # only the mapper may change
        raise RuntimeError("the frozen LLM's weights changed during training")
    meta = {"llm": m.llm, "use_image": str(m.use_image), "num_demos": str(m.num_demos)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".mapper.safetensors.tmp"
    linker.model.save_mapper(tmp, meta)
    tmp.replace(out / "mapper.safetensors")
    write_run_record(params, out)  # after the mapper: its hash is part of the record
    write_text_atomic(pd.DataFrame(hist.loss).to_csv(index=False), out / "train_loss.csv")
    write_text_atomic(pd.DataFrame(hist.dev, columns=["step", "accuracy"]).to_csv(index=False), out / "dev_accuracy.csv")
    report = {"llm": m.llm, "train_examples": len(examples), "optimizer_steps": len(hist.loss),
              "first_loss": hist.loss[0]["loss"] if hist.loss else None,
              "last_loss": hist.loss[-1]["loss"] if hist.loss else None,
              "best_dev_accuracy": hist.best_accuracy if hist.dev else None, "best_step": hist.best_step,
              "examples_per_s": round(hist.examples_per_s, 3), "load_s": round(load_s, 1),
              "train_s": round(time.perf_counter() - t0 - load_s, 1)}
    text = json.dumps(report, indent=2)
    write_text_atomic(text + "\n", out / "train_report.json")
    print(text)
    return 0


def fingerprint(module) -> float:
    """A cheap checksum of every LLM parameter, to prove training left them untouched."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum().item() + p.double().abs().sum().item() for p in module.parameters()))


if __name__ == "__main__":
    sys.exit(_cli.run("train", main, errors=(LLMError, CandidateError, FileNotFoundError, ValueError)))
