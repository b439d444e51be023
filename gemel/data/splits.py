"""Split files: which split each record id of a single annotation file belongs to.

GHMFC's splits.json ({split: [ids]}), a flat {id: split}, or KGMEL's ids_split_mappings.json
({dataset: {split: [ids]}}, one entry picked by datasets.<name>.split_key), resolved to exactly
one split per id: an id listed in several splits stays in the evaluation split, and what the
published files disagree on is counted rather than fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemel.data.raw import DataError, found, read_json
from gemel.data.tables import SPLITS

SPLIT_NAMES = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "test": "test"}
# SPLITS (train, dev, test) is also the overlap policy's priority: an id listed in two splits goes
# to the later one, so an evaluation record never doubles as a training one.
SPLIT_LAYOUTS = "split -> [record ids], dataset name -> {split -> [record ids]}, or record id -> split"


@dataclass
class Splits:
    """A split file resolved to exactly one split per record id, each split in its list order."""

    ids: dict[str, list[str]]  # split -> record ids (as strings), only the splits the file has
    overlaps: dict[str, int]  # "train+test" -> ids listed in both (kept in the later split)
    repeated: int  # ids listed twice in one split's list (kept once)


def read_split_file(path: Path, split_key: str | None = None) -> Splits:
    """GHMFC's {split: [ids]}, {id: split}, or KGMEL's {dataset: {split: [ids]}} picked by split_key.
    Ids are compared as strings: KGMEL lists ints, GHMFC strings."""
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a JSON object ({SPLIT_LAYOUTS}); found {found(data)}")
    values = list(data.values())
    where = str(path)
    if all(isinstance(v, dict) for v in values):
        names = ", ".join(map(str, data))
        if split_key is None:
            raise DataError(f"{path} nests splits under dataset names {names}: set datasets.<name>.split_key")
        if split_key not in data:
            raise DataError(f"{path} nests splits under dataset names {names}: "
                            f"datasets.<name>.split_key '{split_key}' is not one of them")
        lists, where = data[split_key], f"{path} [{split_key}]"
        if not all(isinstance(v, list) for v in lists.values()):
            raise DataError(f"{where}: expected split -> [record ids]; found {found(lists)}")
    elif all(isinstance(v, list) for v in values):
        lists = data
    elif all(isinstance(v, str) for v in values):
        lists = {}
        for rid, split in data.items():
            lists.setdefault(split, []).append(rid)
    else:
        kinds = ", ".join(sorted({type(v).__name__ for v in values}))
        raise DataError(f"{path}: expected a JSON object ({SPLIT_LAYOUTS}); found one whose values are {kinds}")
    return resolve_splits(normalise_splits(lists, where))


def normalise_splits(lists: dict[str, list[Any]], where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, ids in lists.items():
        split = SPLIT_NAMES.get(name)
        if split is None:
            raise DataError(f"{where}: unknown split name '{name}': expected train, dev (or val, valid) and test; "
                            f"found {', '.join(map(str, lists))}")
        if split in out:
            raise DataError(f"{where}: two lists name the {split} split; found {', '.join(map(str, lists))}")
        for i, rid in enumerate(ids):
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise DataError(f"{where}: {name}[{i}]: expected a record id (a string or an integer); "
                                f"found {found(rid)}")
        out[split] = [str(rid) for rid in ids]
    return out


def resolve_splits(lists: dict[str, list[str]]) -> Splits:
    unique = {s: list(dict.fromkeys(lists[s])) for s in SPLITS if s in lists}
    repeated = sum(len(lists[s]) - len(ids) for s, ids in unique.items())
    listed_in: dict[str, list[str]] = {}
    for split, ids in unique.items():
        for rid in ids:
            listed_in.setdefault(rid, []).append(split)
    overlaps: dict[str, int] = {}
    for splits in listed_in.values():
        if len(splits) > 1:
            key = "+".join(splits)
            overlaps[key] = overlaps.get(key, 0) + 1
    kept = {s: [rid for rid in ids if listed_in[rid][-1] == s] for s, ids in unique.items()}
    return Splits(kept, dict(sorted(overlaps.items())), repeated)
