"""The decode stage's logic: choose the fusion on the dev split (candidate-aware mode), rank every
mention of one split, and write down what was done: the predictions table and the report whose
`settings` and fusion `gemel link` reads back (`decode_settings`) to link new inputs the same way."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from gemel.config import DecodeParams
from gemel.data.tables import read_json
from gemel.link.examples import LinkExample
from gemel.link.fusion import LLM_ALONE, Fusion, chosen_on_dev
from gemel.link.ranking import LinkError, LLMRanker, Ranked, sure
from gemel.paths import DECODE_REPORT

MODES = {"none": "paper", "constrained": "candidates"}  # decode.candidates -> the mode a link reports
# What decoding was run with (decode_report.json's `settings`): `Linker.from_run` links new inputs the same way.
DECODE_SETTINGS = ("candidates", "num_candidates", "fusion", "fusion_weight", "fusion_grid", "describe", "ranker_sure",
                   "length_penalty", "num_beams", "max_new_tokens", "batch_size")


class Parts(Protocol):
    """What the decode stage links with (a gemel.link.linker.Linker): the ranker, the features and the
    pipeline's mentions as examples."""
    ranker: LLMRanker
    features: np.ndarray
    image_ok: np.ndarray | None

    def examples(self, mentions: pd.DataFrame) -> list[LinkExample]: ...


def choose_fusion(ranker: LLMRanker, dev: list[LinkExample], gold: list[str], features: np.ndarray,
                  p: DecodeParams) -> tuple[Fusion, dict[str, Any]]:
    """The fusion decode.* asks for: a fixed weight, or fitted or chosen on the dev split's linked
    mentions (`dev`, with their `gold` names), whose LLM scores are computed once; and its report."""
    if p.fusion == "weight" and p.fusion_weight != "auto":
        return Fusion("weight", weight=float(p.fusion_weight)), {"fusion": "weight",
                                                                 "fusion_weight": float(p.fusion_weight),
                                                                 "chosen_on": None}
    if not len(dev):
        raise LinkError(f"decode.fusion: {p.fusion} is fitted on the dev split's linked mentions, and this dataset "
                        "has none: set decode.fusion to weight and decode.fusion_weight to a number (e.g. --set "
                        "decode.fusion=weight --set decode.fusion_weight=1.0)")
    by_prior = np.array(sure(dev, p), dtype=bool)
    asked = [j for j in range(len(dev)) if not by_prior[j]]
    scored = ranker.scored([dev[j] for j in asked], features, p, p.fusion == "learned")
    first_right = np.array([len(e.candidates.names) > 0 and e.candidates.names[0] == g for e, g in zip(dev, gold)],
                           dtype=bool)
    return chosen_on_dev(scored, [gold[j] for j in asked], first_right, by_prior, p)


def predictions(mentions: pd.DataFrame, examples: list[LinkExample], ranked: list[Ranked],
                image_ok: np.ndarray | None) -> pd.DataFrame:
    """The decode stage's table (gemel.data.tables.PREDICTIONS_SCHEMA): gold, prediction, and the
    ranked entities of every mention."""
    return pd.DataFrame({
        "id": mentions["id"].tolist(), "split": mentions["split"].tolist(), "mention": mentions["mention"].tolist(),
        "gold_id": mentions["entity_id"].tolist(), "gold_name": mentions["entity_name"].tolist(),
        "is_nil": mentions["is_nil"].tolist(),
        # A missing or unreadable image is no row (missing_image: drop), or a row whose ok is False.
        "has_image": [bool(e.image_row >= 0 and (image_ok is None or image_ok[e.image_row])) for e in examples],
        "pred_id": [r.ids[0] if r.ids else None for r in ranked],
        "pred_name": [r.names[0] if r.names else None for r in ranked],
        "beams": [r.names for r in ranked], "beam_ids": [r.ids for r in ranked],
        "beam_scores": [r.scores for r in ranked],
        "llm_scores": [r.llm_scores for r in ranked], "cand_priors": [r.priors for r in ranked],
    })


def decode_split(linker: Parts, mentions: pd.DataFrame, p: DecodeParams,
                 progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The decode stage: link every mention of split `p.split` (candidate-aware: with the fusion
    chosen on the dev split's linked mentions). Returns the predictions table and the report: the
    settings, the chosen fusion, accuracy and speed."""
    report: dict[str, Any] = {"split": p.split, "mode": MODES[p.candidates],
                              "settings": {k: getattr(p, k) for k in DECODE_SETTINGS}}
    report["settings"]["fusion_grid"] = list(p.fusion_grid)
    fusion = None
    if p.candidates != "none":
        dev = mentions[(mentions["split"] == "dev") & ~mentions["is_nil"]]
        fusion, chosen = choose_fusion(linker.ranker, linker.examples(dev), list(dev["entity_name"]),
                                       linker.features, p)
        report.update(chosen)
    split = mentions[mentions["split"] == p.split].reset_index(drop=True)
    examples = linker.examples(split)
    t0 = time.perf_counter()
    ranked = linker.ranker.rank(examples, linker.features, p, fusion, progress=progress)
    seconds = time.perf_counter() - t0
    pred = predictions(split, examples, ranked, linker.image_ok)
    linked = pred[~pred["is_nil"]]
    report.update({"mentions": len(pred), "seconds": round(seconds, 1),
                   "mentions_per_s": round(len(pred) / max(seconds, 1e-9), 3),
                   "accuracy": round(float((linked["pred_name"] == linked["gold_name"]).mean()), 4)
                   if len(linked) else None})
    return pred, report


def decode_settings(run_dir: Path) -> tuple[DecodeParams, Fusion, list[str]]:
    """How the run's decode stage linked (its decode_report.json: settings and, candidate-aware, the
    fusion fitted or chosen on dev), so new inputs link the same way; with a note whenever that
    record is missing and defaults stand in."""
    report = run_dir / DECODE_REPORT
    data = read_json(report, "decode") if report.is_file() else {}
    if "settings" not in data:
        return DecodeParams(), LLM_ALONE, [f"{report}: no record of the decode stage's settings (run the decode "
                                           "stage): linking in the paper's mode with the default decode settings"]
    p = DecodeParams(**{**data["settings"], "fusion_grid": tuple(data["settings"]["fusion_grid"])})
    if p.candidates == "none":
        return p, LLM_ALONE, []
    recorded = Fusion.from_record(data, str(report))
    if recorded is not None:
        return p, recorded, []
    if p.fusion == "weight" and p.fusion_weight != "auto":
        return p, Fusion("weight", weight=float(p.fusion_weight)), []
    return p, LLM_ALONE, [f"fusion weight 0 (the LLM alone chooses among candidates): {report} records no fusion"]
