"""Entity-linking metrics over the decode stage's predictions.

Keys of `compute_metrics` (rates are fractions in [0, 1], rounded to 4 decimals; null when no
mention was evaluated):
  accuracy               exact string match of pred_name with gold_name over the non-NIL mentions
                         (GEMEL's metric; NIL mentions are removed, as in the paper)
  hits@k                 share of evaluated mentions whose gold_name is among the first k beams
  mrr                    mean of 1/rank of gold_name in the beams (0 when absent); ranks follow the
                         beam order as given (best first), equal beam scores are not merged
  accuracy_with_image    accuracy over evaluated mentions that had their image, and
  accuracy_without_image over those where a zero vector stood in (only when both groups exist)
  evaluated              non-NIL mentions (the denominator of every rate)
  nil_removed            NIL mentions left out
  missing_image          evaluated mentions without their image
  gold_unreachable       evaluated mentions whose gold_name is no KB name: constrained decoding can
                         never produce it, so they count as errors and bound accuracy from above
  total                  all rows
  baselines              copy_mention and alias_prior accuracy on the same mentions (see `baselines`)
  breakdown              accuracy per bucket: gold seen in training or not, mention equal to the gold
                         name or not, gold inside or outside the candidates, with or without image
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gemel.data.tables import (
    PREDICTIONS_REQUIRED,
    linked_training,
    read_json,
    read_kb,
    read_mentions,
    read_schema,
    read_table,
)
from gemel.errors import GemelError
from gemel.paths import DECODE_REPORT, PREDICTIONS, Artifacts

if TYPE_CHECKING:
    from gemel.search.candidates import AliasTable, NameIndex

DECIMALS = 4


class MetricsError(GemelError, ValueError):
    """Predictions or KB unreadable or malformed; the message names the file, column or row."""


def read_predictions(path: str | Path) -> pd.DataFrame:
    """The decode stage's table (a checksummed read), with the columns evaluate needs."""
    names = read_schema(path, "decode").names
    missing = [c for c in PREDICTIONS_REQUIRED if c not in names]
    if missing:
        raise MetricsError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(names)})")
    pred = read_table(path, "decode", columns=PREDICTIONS_REQUIRED)
    check_predictions(pred, str(path))
    return pred


def check_predictions(pred: pd.DataFrame, source: str = "predictions") -> None:
    """Flags must be set, and a non-NIL mention must carry its gold name."""
    for col in ("is_nil", "has_image"):
        if pred[col].isna().any():
            row = pred.loc[pred[col].isna(), "id"].iloc[0]
            raise MetricsError(f"{source}: row id '{row}': column '{col}' is null")
    no_gold = ~pred["is_nil"].astype(bool) & pred["gold_name"].isna()
    if no_gold.any():
        raise MetricsError(f"{source}: row id '{pred.loc[no_gold, 'id'].iloc[0]}': column 'gold_name' "
                           f"is null but is_nil is false")


def gold_rank(gold: str, beams: Sequence[str] | None) -> int:
    """1-based position of the first beam equal to gold; 0 when no beam is."""
    for rank, name in enumerate([] if beams is None else beams, start=1):
        if name == gold:
            return rank
    return 0


def _rate(x: np.ndarray) -> float | None:
    return round(float(np.mean(x)), DECIMALS) if len(x) else None


def compute_metrics(pred: pd.DataFrame, kb_names: set[str], hits_at: Sequence[int]) -> dict[str, Any]:
    """The metrics above, as one flat dict (what `dvc metrics show` tabulates)."""
    if any(k < 1 for k in hits_at):
        raise MetricsError(f"evaluate.hits_at: every k must be >= 1, got {list(hits_at)}")
    check_predictions(pred)
    nil = pred["is_nil"].to_numpy(dtype=bool)
    ev = pred.loc[~nil]
    gold = ev["gold_name"].tolist()
    correct = np.array([p == g for p, g in zip(ev["pred_name"], gold)], dtype=bool)  # null pred: wrong
    ranks = np.array([gold_rank(g, b) for g, b in zip(gold, ev["beams"])], dtype=np.int64)
    has_image = ev["has_image"].to_numpy(dtype=bool)

    out: dict[str, Any] = {"accuracy": _rate(correct)}
    for k in sorted(set(hits_at)):
        out[f"hits@{k}"] = _rate((ranks >= 1) & (ranks <= k))
    out["mrr"] = _rate(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0))
    if has_image.any() and not has_image.all():
        out["accuracy_with_image"] = _rate(correct[has_image])
        out["accuracy_without_image"] = _rate(correct[~has_image])
    out.update({
        "evaluated": int(len(ev)),
        "nil_removed": int(nil.sum()),
        "missing_image": int((~has_image).sum()),
        "gold_unreachable": int(sum(g not in kb_names for g in gold)),
        "total": int(len(pred)),
    })
    return out


# ---------------------------------------------------------------- reference baselines

def alias_prior_names(mentions: Sequence[str], alias: AliasTable, index: NameIndex, names: Sequence[str],
                      id_names: dict[str, str]) -> list[str]:
    """The alias rule: the training split's most frequent entity for the (case-folded) mention,
    else the shortest KB name containing all the mention's words, else the mention itself. Case
    folding only, as when it was first measured: `alias` and `index` are built unfolded."""
    out = []
    for m in mentions:
        top = alias.most_frequent(m)
        if top is not None and top in id_names:
            out.append(id_names[top])
            continue
        rows = index.containing_all(index.keys(m))
        out.append(names[int(rows[0])] if len(rows) else m)
    return out


def baselines(pred: pd.DataFrame, mentions: pd.DataFrame, kb: pd.DataFrame
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`copy_mention` and `alias_prior` on the evaluated (non-NIL) mentions of `pred`: their
    accuracies, and the alias rule's answer per mention (for the breakdown)."""
    from gemel.search.candidates import AliasTable, NameIndex

    ev = pred.loc[~pred["is_nil"].astype(bool)]
    alias = AliasTable.from_mentions(mentions, folded=False)
    train = linked_training(mentions)
    id_names = {**dict(zip(train["entity_id"], train["entity_name"])), **dict(zip(kb["entity_id"], kb["name"]))}
    names = kb["name"].tolist()
    rule = (alias_prior_names(ev["mention"].tolist(), alias, NameIndex(names, folded=False), names, id_names)
            if len(kb) else ev["mention"].tolist())
    gold = ev["gold_name"].to_numpy()
    return {
        "copy_mention": {"accuracy": _rate(ev["mention"].to_numpy() == gold)},
        "alias_prior": {"accuracy": _rate(np.asarray(rule, dtype=object) == gold)},
    }, rule


# ---------------------------------------------------------------- error analysis

BUCKETS = {
    "gold_seen_in_training": ("seen", "unseen"),
    "mention_equals_gold_name": ("equal", "different"),
    "gold_in_candidates": ("inside", "outside"),
    "image": ("with", "without"),
}


def bucket_flags(ev: pd.DataFrame, mentions: pd.DataFrame,
                 candidates: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Per evaluated mention (rows of `ev`), True for the first label of each factor of BUCKETS
    (seen, equal, inside, with): what `breakdown` counts and the run report filters by.
    `gold_in_candidates` needs the candidates table (columns id, cand_ids) and is absent without it."""
    seen_ids = set(linked_training(mentions)["entity_id"])
    flags = {
        "gold_seen_in_training": ev["gold_id"].isin(seen_ids).to_numpy(),
        "mention_equals_gold_name": np.array([" ".join(str(m).casefold().split()) == " ".join(str(g).casefold().split())
                                              for m, g in zip(ev["mention"], ev["gold_name"])], dtype=bool),
        "image": ev["has_image"].to_numpy(dtype=bool),
    }
    if candidates is not None:
        cands = candidates.set_index("id")["cand_ids"]
        flags["gold_in_candidates"] = np.array([g in set(cands.get(i, [])) for i, g in zip(ev["id"], ev["gold_id"])],
                                               dtype=bool)
    return {f: flags[f] for f in BUCKETS if f in flags}


def breakdown(pred: pd.DataFrame, mentions: pd.DataFrame, rule: Sequence[str],
              candidates: pd.DataFrame | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy of the model and of the alias rule per bucket of each factor (evaluated mentions
    only). `gold_in_candidates` needs the candidates table and is left out without it."""
    ev = pred.loc[~pred["is_nil"].astype(bool)].reset_index(drop=True)
    correct = (ev["pred_name"] == ev["gold_name"]).to_numpy()
    rule_ok = np.asarray(rule, dtype=object) == ev["gold_name"].to_numpy()
    flags = bucket_flags(ev, mentions, candidates)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for factor in BUCKETS:
        if factor not in flags:
            continue
        yes, no = BUCKETS[factor]
        f = flags[factor]
        out[factor] = {label: {"mentions": int(mask.sum()), "accuracy": _rate(correct[mask]),
                               "alias_prior": _rate(rule_ok[mask])}
                       for label, mask in ((yes, f), (no, ~f))}
    return out


def breakdown_table(b: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The breakdown as a Markdown table (what the README shows)."""
    lines = ["| factor | bucket | mentions | accuracy | alias_prior |", "|---|---|---|---|---|"]
    for factor, buckets in b.items():
        for label, r in buckets.items():
            fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(f"| {factor} | {label} | {r['mentions']} | {fmt(r['accuracy'])} | {fmt(r['alias_prior'])} |")
    return "\n".join(lines) + "\n"


def evaluate_run(a: Artifacts, hits_at: Sequence[int]) -> dict[str, Any]:
    """The evaluate stage: metrics.json of a run from its predictions and the shared tables (the
    candidates table, when present, feeds the breakdown). No timings: equal inputs, equal bytes."""
    pred = read_predictions(a.in_run(PREDICTIONS))
    kb, mentions = read_kb(a.kb), read_mentions(a.mentions)
    cands = read_table(a.candidates, "candidates", columns=["id", "cand_ids"]) if a.candidates.is_file() else None
    metrics = compute_metrics(pred, set(kb["name"].dropna()), hits_at)
    report = a.in_run(DECODE_REPORT)
    if report.is_file():  # what decoding chose: the mode and, candidate-aware, the fusion and its dev record
        d = read_json(report, "decode")
        metrics["decode"] = {k: d[k] for k in ("mode", "split", "fusion", "fusion_weight", "fusion_weights",
                                                "chosen_on", "dev_cross_validated") if k in d}
    metrics["baselines"], rule = baselines(pred, mentions, kb)
    metrics["breakdown"] = breakdown(pred, mentions, rule, cands)
    return metrics
