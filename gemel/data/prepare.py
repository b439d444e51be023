"""Raw dataset -> the normalised mentions and KB tables, a deterministic dev split, a report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gemel.config import PrepareParams
from gemel.data.distractors import grow
from gemel.data.importers import Imported, Problems, Source, get_importer, split_files
from gemel.data.raw import DataError
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


def check_limit(limit: Any) -> dict[str, int | None]:
    """prepare.limit as split -> int|None (the schema says so too; this guards direct callers)."""
    if limit is None:
        return {}
    if not isinstance(limit, dict):
        raise DataError(f"prepare.limit: expected null or a mapping split -> integer|null; found {limit!r}")
    for split, n in limit.items():
        if split not in SPLITS:
            raise DataError(f"prepare.limit: unknown split '{split}' (use {', '.join(SPLITS)})")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DataError(f"prepare.limit.{split}: expected an integer >= 1 or null; found {n!r}")
    return dict(limit)


def apply_limit(mentions: pd.DataFrame, limit: dict[str, int | None]) -> pd.DataFrame:
    """Keep the first N mentions of each limited split, in row order (the importer's file or
    split-list order), so the same params always give the same subset."""
    keep = pd.Series(True, index=mentions.index)
    for split, n in limit.items():
        if n is not None:
            in_split = mentions["split"] == split
            keep &= ~in_split | (in_split.cumsum() <= n)
    return mentions[keep].reset_index(drop=True)


def check_files(p: PrepareParams, root: Path = Path("."), source: str | None = None) -> None:
    """Stop before reading anything when a file the preset names is absent, saying where it goes
    and where the public copy lives (nothing is downloaded at run time)."""
    for key in ("input", "kb", "split_file"):
        path = getattr(p, key)
        if path and not (root / path).exists():
            where = f"; the public copy: {source}" if source else ""
            raise DataError(f"dataset '{p.dataset}': {path} not found (datasets.{p.dataset}.{key}). Put the "
                            f"published file there, or point datasets.{p.dataset}.{key} at it{where}")


def split_source(src: Source, split: str) -> Path:
    """The file a split's records come from, for messages: the split file, else the split's own
    file in the input folder, else the input."""
    if src.split_file is not None:
        return src.split_file
    if src.input.is_dir():
        return split_files(src.input, (".json", ".jsonl")).get(split, src.input)
    return src.input


def check_tables(mentions: pd.DataFrame, kb: pd.DataFrame, src: Source) -> None:
    """What every later stage relies on, whatever the importer: train and test have mentions (the
    mapper's examples and demonstrations; what decode links), and the KB has entities, each with
    a name (the trie's answers). An empty dev split is allowed: training then runs without dev
    evaluation (dev_fraction 0, or a train split too small to carve one from)."""
    for split in ("train", "test"):
        if not (mentions["split"] == split).any():
            raise DataError(f"{split_source(src, split)}: split '{split}' has no mentions "
                            f"(every stage after prepare needs {split} mentions)")
    kb_file = src.kb or src.input
    if kb.empty:
        raise DataError(f"{kb_file}: the KB has no entities (nothing to link to)")
    blank = ~kb["name"].map(lambda n: isinstance(n, str) and bool(n.strip()))
    if blank.any():
        first = kb.loc[blank, "entity_id"].iloc[0]
        raise DataError(f"{kb_file}: entity {first}: field 'name': empty or only whitespace "
                        f"({int(blank.sum())} such entities; a name is what the LLM generates)")


def prepare(p: PrepareParams, root: Path = Path("."), source: str | None = None) -> Prepared:
    check_files(p, root, source)
    if p.invalid_records not in ("error", "skip"):
        raise DataError(f"datasets.<name>.invalid_records must be error or skip, not '{p.invalid_records}'")
    limit = check_limit(p.limit)
    src = Source(
        input=root / p.input,
        kb=root / p.kb if p.kb else None,
        images=root / p.images if p.images else None,
        split_file=root / p.split_file if p.split_file else None,
        split_key=p.split_key,
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
    check_tables(mentions, kb, src)
    kb = grow(kb, p.distractors, p.seed)
    # The limit comes last: after the overlap policy (importer) and the carved dev split, so a
    # subset is the head of the same splits a full run has.
    before = {split: int((mentions["split"] == split).sum()) for split in SPLITS}
    mentions = apply_limit(mentions, limit)
    report = make_report(mentions, kb, problems, imported, dev_carved=not has_dev)
    report = {"dataset": p.dataset, **report}
    report["limit"] = limit or None
    report["distractors"] = p.distractors
    report["mentions_before_limit"] = before
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
        "kb_described": int(kb["description"].notna().sum()),
        "splits": per_split,
        "nil": int(mentions["is_nil"].sum()),
        "missing_image": int(image_missing.sum()),
        "gold_not_in_kb": int(absent.sum()),
        "duplicate_ids": imported.duplicate_ids,
        "skipped_records": len(skipped_records),
        "skipped": problems.skipped[:50],  # the first few, with file, record, field and reason
        "dev_carved_from_train": dev_carved,
        "records_in_no_split": imported.records_in_no_split,
        "split_ids_not_in_annotations": imported.split_ids_not_in_annotations,
        "split_overlaps": imported.split_overlaps,
        "split_ids_repeated": imported.split_ids_repeated,
        "kb_names_merged": imported.kb_names_merged,
        "gold_names_from_kb": imported.gold_names_from_kb,
    }
