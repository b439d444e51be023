"""Importers: one function per raw MEL layout, chosen by name; each yields normalised rows.

Every importer returns mention rows (dicts with the MENTIONS columns) and KB rows, and reports
bad records through `Problems`, which either raises a DataError naming file, record and field, or
(with invalid_records: skip) drops the record and keeps a count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

NIL_MARKERS = {"nil", "NIL", "Nil", ""}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


class DataError(ValueError):
    """A raw record is unusable. The message names the file, the record and the field."""


@dataclass
class Problems:
    """The invalid-record policy: `error` raises at the first bad record, `skip` counts it."""

    policy: str = "error"
    skipped: list[dict[str, str]] = field(default_factory=list)

    def bad(self, file: Path | str, record: str, field_: str, reason: str) -> None:
        msg = f"{file}: record {record}: field '{field_}': {reason}"
        if self.policy == "error":
            raise DataError(msg + " (set prepare.invalid_records: skip to drop such records)")
        self.skipped.append({"file": str(file), "record": record, "field": field_, "reason": reason})


@dataclass
class Imported:
    mentions: list[dict[str, Any]]
    kb: list[dict[str, Any]]
    records: dict[str, int]  # raw records read per split, before any is skipped
    duplicate_ids: int = 0


@dataclass(frozen=True)
class Source:
    """Where a dataset's files are: the importer's input plus its optional companions."""

    input: Path
    kb: Path | None = None
    images: Path | None = None
    split_file: Path | None = None


# ---------------------------------------------------------------- shared readers

def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_kb_file(path: Path, descriptions: Path | None = None) -> list[dict[str, Any]]:
    """A KB file: JSON object id -> name, or text with one name a line (the name is its id)."""
    if path.suffix == ".txt":
        names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
        return [{"entity_id": n, "name": n, "description": None} for n in dict.fromkeys(names)]
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping entity id -> name")
    desc = read_json(descriptions) if descriptions is not None and descriptions.exists() else {}
    rows = []
    for eid, name in data.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: entity {eid}: field 'name': expected a non-empty string")
        d = desc.get(eid)
        rows.append({"entity_id": str(eid), "name": name, "description": d if isinstance(d, str) else None})
    return rows


def text_field(obj: dict[str, Any], key: str, file: Path, rid: str, problems: Problems) -> str | None:
    """A required, non-empty string field; None (after reporting) when it is not one."""
    if key not in obj:
        problems.bad(file, rid, key, "missing required field")
        return None
    value = obj[key]
    if not isinstance(value, str):
        problems.bad(file, rid, key, f"expected a string, got {type(value).__name__}")
        return None
    if not value.strip():
        problems.bad(file, rid, key, "empty")
        return None
    return value


def is_nil(answer: Any) -> bool:
    return answer is None or (isinstance(answer, str) and answer.strip() in NIL_MARKERS)


def span(text: str, mention: str) -> tuple[int | None, int | None]:
    """Character offsets of the mention's first occurrence; unknown when it is not in the text."""
    start = text.find(mention)
    return (start, start + len(mention)) if start >= 0 else (None, None)


def image_by_id(folder: Path, rid: str) -> str:
    """Datasets that name images by record id: the file that exists, else the expected .jpg."""
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{rid}{suffix}"
        if candidate.exists():
            return str(candidate)
    return str(folder / f"{rid}.jpg")


def row(mid: str, record: str, split: str, text: str, mention: str, image: str | None,
        entity_id: str | None, entity_name: str | None) -> dict[str, Any]:
    """One mention row; `record` (its source record) keeps a record's mentions in one split."""
    start, end = span(text, mention)
    nil = entity_id is None and entity_name is None
    return {"id": mid, "record": record, "split": split, "text": text, "mention": mention, "start": start, "end": end,
            "image": image, "entity_id": entity_id, "entity_name": entity_name, "is_nil": nil}


class Seen:
    """Records read per split, and duplicate record ids across all files of a dataset."""

    def __init__(self) -> None:
        self.ids: dict[str, Path] = {}
        self.records: dict[str, int] = {}
        self.duplicates = 0

    def first(self, rid: str, file: Path, split: str, problems: Problems) -> bool:
        self.records[split] = self.records.get(split, 0) + 1
        if rid in self.ids:
            self.duplicates += 1
            problems.bad(file, rid, "id", f"duplicate record id (first seen in {self.ids[rid]})")
            return False
        self.ids[rid] = file
        return True


def split_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """train/dev/test files of a folder; dev may be absent (prepare carves it from train)."""
    found: dict[str, Path] = {}
    for split, aliases in (("train", ("train",)), ("dev", ("dev", "valid", "val")), ("test", ("test",))):
        for name in aliases:
            for suffix in suffixes:
                if (folder / f"{name}{suffix}").exists():
                    found.setdefault(split, folder / f"{name}{suffix}")
    for split in ("train", "test"):
        if split not in found:
            raise DataError(f"{folder}: no {split} file ({' or '.join(split + s for s in suffixes)})")
    return found


def resolve_entity(answer: Any, name: str | None, kb_ids: set[str], kb_by_name: dict[str, str]) -> str | None:
    """The entity id of a gold answer: the id itself if the KB has it, else the KB id of the name."""
    if isinstance(answer, str) and answer in kb_ids:
        return answer
    if name is not None and name in kb_by_name:
        return kb_by_name[name]
    return answer if isinstance(answer, str) and answer.strip() and answer != "NIL" else name


def kb_index(kb: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    by_name: dict[str, str] = {}
    for e in kb:
        by_name.setdefault(e["name"], e["entity_id"])
    return {e["entity_id"] for e in kb}, by_name


# ---------------------------------------------------------------- the layouts

def import_gemel_jsonl(src: Source, problems: Problems) -> Imported:
    """GEMEL's preprocessed JSON lines: text, mention, img_url|img_name, target, golden."""
    files = split_files(src.input, (".json", ".jsonl"))
    images = src.images or src.input / "images"
    kb = read_kb_file(src.kb) if src.kb else []
    kb_ids, kb_by_name = kb_index(kb)
    seen, rows = Seen(), []
    for split, path in files.items():
        for lineno, obj in read_json_lines(path):
            rid = str(obj.get("id", f"{split}-{lineno}"))
            if not seen.first(rid, path, split, problems):
                continue
            text = text_field(obj, "text", path, rid, problems)
            mention = text_field(obj, "mention", path, rid, problems)
            target = text_field(obj, "target", path, rid, problems)
            if text is None or mention is None or target is None:
                continue
            image_ref = obj.get("img_name") or obj.get("img_url")
            # WikiDiverse gives a URL: the downloaded file is named by its last path component.
            image = str(images / str(image_ref).rsplit("/", 1)[-1]) if image_ref else None
            nil = is_nil(obj.get("golden", target)) or is_nil(target)
            eid = None if nil else resolve_entity(obj.get("golden"), target, kb_ids, kb_by_name)
            rows.append(row(rid, rid, split, text, mention, image, eid, None if nil else target))
    if not kb:  # no KB file: the entity names the data mentions
        names = sorted({r["entity_name"] for r in rows if r["entity_name"]})
        kb = [{"entity_id": n, "name": n, "description": None} for n in names]
        for r in rows:
            if r["entity_name"]:
                r["entity_id"] = r["entity_name"]
    return Imported(rows, kb, seen.records, seen.duplicates)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def import_melbench(src: Source, problems: Problems) -> Imported:
    """MELBench / GHMFC (RichpediaMEL, WikiMEL): a JSON object keyed by record id with
    sentence, mentions, entities, answer (scalars, or parallel lists for several mentions)."""
    files = split_files(src.input, (".json",))
    kb_path = src.kb or src.input / "qid2ne.json"
    kb = read_kb_file(kb_path, descriptions=kb_path.parent / "qid2abs.json")
    kb_ids, kb_by_name = kb_index(kb)
    images = src.images or src.input / "images"
    seen, rows = Seen(), []
    for split, path in files.items():
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object keyed by record id")
        for key, obj in data.items():
            rid = str(key)
            if not isinstance(obj, dict):
                problems.bad(path, rid, "(record)", f"expected an object, got {type(obj).__name__}")
                continue
            if not seen.first(rid, path, split, problems):
                continue
            text = text_field(obj, "sentence", path, rid, problems)
            missing = [k for k in ("mentions", "entities", "answer") if k not in obj]
            if missing:
                problems.bad(path, rid, missing[0], "missing required field")
                continue
            if text is None:
                continue
            mentions, names, answers = (as_list(obj[k]) for k in ("mentions", "entities", "answer"))
            if not len(mentions) == len(names) == len(answers):
                problems.bad(path, rid, "mentions", "mentions, entities and answer differ in length")
                continue
            image = image_by_id(images, rid)
            several = isinstance(obj["mentions"], list)
            for i, (mention, name, answer) in enumerate(zip(mentions, names, answers)):
                mid = f"{rid}-{i}" if several else rid
                if not isinstance(mention, str) or not mention.strip():
                    problems.bad(path, mid, "mentions", "empty mention")
                    continue
                nil = is_nil(answer)
                eid = None if nil else resolve_entity(answer, name, kb_ids, kb_by_name)
                rows.append(row(mid, rid, split, text, mention, image, eid, None if nil else name))
    return Imported(rows, kb, seen.records, seen.duplicates)


def read_split_file(path: Path) -> dict[str, str]:
    """record id -> split, from either {split: [ids]} or {id: split}."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object (split -> list of ids, or id -> split)")
    if all(isinstance(v, list) for v in data.values()):
        return {str(rid): split for split, ids in data.items() for rid in ids}
    return {str(k): str(v) for k, v in data.items()}


def import_kgmel_wikidiverse(src: Source, problems: Problems) -> Imported:
    """KGMEL's WikiDiverse: a JSON list of {id, sentence, imgPath, mention, entity, answer}
    (parallel lists), plus a split-mapping file."""
    if src.split_file is None:
        raise DataError(f"{src.input}: format kgmel_wikidiverse needs prepare.split_file")
    split_of = read_split_file(src.split_file)
    data = read_json(src.input)
    if not isinstance(data, list):
        raise DataError(f"{src.input}: expected a JSON list of records")
    kb = read_kb_file(src.kb) if src.kb else []
    kb_ids, kb_by_name = kb_index(kb)
    images = src.images or src.input.parent
    seen, rows = Seen(), []
    for index, obj in enumerate(data):
        rid = str(obj.get("id", f"#{index}")) if isinstance(obj, dict) else f"#{index}"
        if not isinstance(obj, dict):
            problems.bad(src.input, rid, "(record)", f"expected an object, got {type(obj).__name__}")
            continue
        split = split_of.get(rid)
        if not seen.first(rid, src.input, split or "(none)", problems):
            continue
        if split is None:
            problems.bad(src.split_file, rid, "split", "record id is in no split")
            continue
        text = text_field(obj, "sentence", src.input, rid, problems)
        missing = [k for k in ("mention", "entity", "answer") if k not in obj]
        if missing:
            problems.bad(src.input, rid, missing[0], "missing required field")
            continue
        if text is None:
            continue
        mentions, names, answers = (as_list(obj[k]) for k in ("mention", "entity", "answer"))
        if not len(mentions) == len(names) == len(answers):
            problems.bad(src.input, rid, "mention", "mention, entity and answer differ in length")
            continue
        image = str(images / obj["imgPath"]) if obj.get("imgPath") else None
        for i, (mention, name, answer) in enumerate(zip(mentions, names, answers)):
            mid = f"{rid}-{i}"
            if not isinstance(mention, str) or not mention.strip():
                problems.bad(src.input, mid, "mention", "empty mention")
                continue
            nil = is_nil(answer) or is_nil(name)
            eid = None if nil else resolve_entity(answer, name, kb_ids, kb_by_name)
            rows.append(row(mid, rid, split, text, mention, image, eid, None if nil else name))
    if not kb:
        pairs = sorted({(r["entity_id"], r["entity_name"]) for r in rows if r["entity_id"]})
        kb = [{"entity_id": eid, "name": name, "description": None} for eid, name in pairs]
    return Imported(rows, kb, seen.records, seen.duplicates)


IMPORTERS: dict[str, Callable[[Source, Problems], Imported]] = {
    "gemel_jsonl": import_gemel_jsonl,
    "melbench": import_melbench,
    "kgmel_wikidiverse": import_kgmel_wikidiverse,
}


def get_importer(fmt: str) -> Callable[[Source, Problems], Imported]:
    try:
        return IMPORTERS[fmt]
    except KeyError:
        raise DataError(f"unknown dataset format '{fmt}' (known: {', '.join(IMPORTERS)})") from None
