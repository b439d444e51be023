"""Raw dataset -> the normalised mentions and KB tables, a deterministic dev split, a report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gemel.config import PrepareParams
from gemel.data.importers import DataError, Imported, Problems, Source, get_importer
from gemel.data.tables import KB, MENTIONS, SPLITS


@dataclass
class Prepared:
    mentions: pd.DataFrame
    kb: pd.DataFrame
    report: dict[str, Any]


def carve_dev(mentions: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Move a seeded share of train records to dev. Records are ordered by id first, so the
    split does not depend on file order; all mentions of one record stay together."""
    train = mentions["split"] == "train"
    records = np.array(sorted(mentions.loc[train, "record"].unique()))
    n_dev = int(round(fraction * len(records)))
    if n_dev == 0:
        return mentions
    chosen = set(np.random.default_rng(seed).permutation(records)[:n_dev])
    out = mentions.copy()
    out.loc[train & out["record"].isin(chosen), "split"] = "dev"
    return out


def prepare(p: PrepareParams, root: Path = Path(".")) -> Prepared:
    if p.invalid_records not in ("error", "skip"):
        raise DataError(f"prepare.invalid_records must be error or skip, not '{p.invalid_records}'")
    src = Source(
        input=root / p.input,
        kb=root / p.kb if p.kb else None,
        images=root / p.images if p.images else None,
        split_file=root / p.split_file if p.split_file else None,
    )
    problems = Problems(p.invalid_records)
    imported = get_importer(p.format)(src, problems)
    mentions = pd.DataFrame(imported.mentions, columns=["record", *(c for c in MENTIONS.names if c != "dataset")])
    mentions.insert(1, "dataset", p.dataset)
    mentions[["start", "end"]] = mentions[["start", "end"]].astype("Int64")
    has_dev = (mentions["split"] == "dev").any()
    if not has_dev:
        mentions = carve_dev(mentions, p.dev_fraction, p.seed)
    unknown = set(mentions["split"]) - set(SPLITS)
    if unknown:
        raise DataError(f"{src.split_file or src.input}: unknown split name(s) {sorted(unknown)}; use {SPLITS}")
    mentions = mentions.drop(columns="record")
    kb = pd.DataFrame(imported.kb, columns=KB.names)
    report = make_report(mentions, kb, problems, imported, dev_carved=not has_dev)
    return Prepared(mentions, kb, report)


def make_report(mentions: pd.DataFrame, kb: pd.DataFrame, problems: Problems,
                imported: Imported, dev_carved: bool) -> dict[str, Any]:
    image_missing = mentions["image"].isna() | ~mentions["image"].map(
        lambda p: isinstance(p, str) and Path(p).is_file())
    absent = ~mentions["is_nil"] & ~mentions["entity_id"].isin(set(kb["entity_id"]))
    per_split = {}
    for split in SPLITS:
        m = mentions["split"] == split
        per_split[split] = {
            "mentions": int(m.sum()),
            "nil": int((m & mentions["is_nil"]).sum()),
            "missing_image": int((m & image_missing).sum()),
            "gold_not_in_kb": int((m & absent).sum()),
        }
    skipped_records = {(s["file"], s["record"]) for s in problems.skipped}
    return {
        "records_read": imported.records,
        "mentions": int(len(mentions)),
        "kb_entities": int(len(kb)),
        "splits": per_split,
        "nil": int(mentions["is_nil"].sum()),
        "missing_image": int(image_missing.sum()),
        "gold_not_in_kb": int(absent.sum()),
        "duplicate_ids": imported.duplicate_ids,
        "skipped_records": len(skipped_records),
        "skipped": problems.skipped[:50],  # the first few, with file, record, field and reason
        "dev_carved_from_train": dev_carved,
    }
