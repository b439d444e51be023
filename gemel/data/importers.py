"""Importers: one function per raw MEL layout, chosen by name; each yields normalised rows.

Every importer returns mention rows (dicts with the MENTIONS columns) and KB rows, and reports
bad records through `Problems`, which either raises a DataError naming file, record and field, or
(with invalid_records: skip) drops the record and keeps a count. Layout errors (the wrong kind of
file) always raise, saying what was expected and what was found.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemel.data.raw import DataError, found, read_json, read_json_lines
from gemel.data.splits import read_split_file

NIL_MARKERS = {"nil", "NIL", "Nil", ""}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclass
class Problems:
    """The invalid-record policy: `error` raises at the first bad record, `skip` counts it."""

    policy: str = "error"
    skipped: list[dict[str, str]] = field(default_factory=list)

    def bad(self, file: Path | str, record: str, field_: str, reason: str) -> None:
        msg = f"{file}: record {record}: field '{field_}': {reason}"
        if self.policy == "error":
            raise DataError(msg + " (set datasets.<name>.invalid_records: skip to drop such records)")
        self.skipped.append({"file": str(file), "record": record, "field": field_, "reason": reason})


@dataclass
class Imported:
    mentions: list[dict[str, Any]]
    kb: list[dict[str, Any]]
    records: dict[str, int]  # raw records read per split, before any is skipped
    duplicate_ids: int = 0
    # Datasets with a split file: what the published files disagree on, counted rather than fatal.
    records_in_no_split: int = 0
    split_ids_not_in_annotations: dict[str, int] = field(default_factory=dict)
    split_overlaps: dict[str, int] = field(default_factory=dict)  # "train+test" -> ids (kept in test)
    split_ids_repeated: int = 0
    kb_names_merged: int = 0  # KB built from the data: ids that carried several names
    gold_names_from_kb: int = 0  # mentions whose given entity name was replaced by the KB's name


@dataclass(frozen=True)
class Source:
    """Where a dataset's files are: the importer's input plus its optional companions."""

    input: Path
    kb: Path | None = None
    images: Path | None = None
    split_file: Path | None = None
    split_key: str | None = None  # the dataset's entry in a split file that nests several datasets


def read_kb_file(path: Path, descriptions: Path | None = None) -> list[dict[str, Any]]:
    """A KB file: JSON object id -> name, or text with one name a line (the name is its id)."""
    if path.suffix == ".txt":
        names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
        return [{"entity_id": n, "name": n, "description": None} for n in dict.fromkeys(names)]
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping entity id -> name")
    desc = read_descriptions(descriptions) if descriptions is not None and descriptions.exists() else {}
    rows = []
    for eid, name in data.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: entity {eid}: field 'name': expected a non-empty string")
        rows.append({"entity_id": str(eid), "name": name, "description": desc.get(str(eid))})
    return rows


def read_descriptions(path: Path) -> dict[str, str]:
    """A descriptions file (qid2abs.json): JSON object id -> text. Null or blank is no description;
    anything else that is not a string stops the import, since a KB silently missing its
    descriptions would only show as weaker candidates."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping entity id -> description; found {found(data)}")
    out: dict[str, str] = {}
    for eid, text in data.items():
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path}: entity {eid}: field 'description': expected a string or null; "
                            f"found {found(text)}")
        if text is not None and text.strip():
            out[str(eid)] = text
    return out


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
    if src.kb is None:  # no KB file: the entity names the data mentions
        names = sorted({r["entity_name"] for r in rows if r["entity_name"]})
        kb = [{"entity_id": n, "name": n, "description": None} for n in names]
        for r in rows:
            if r["entity_name"]:
                r["entity_id"] = r["entity_name"]
    return Imported(rows, kb, seen.records, seen.duplicates)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- records with mention lists

@dataclass(frozen=True)
class Layout:
    """A layout whose records hold a text and parallel mention / entity name / answer fields
    (lists, or scalars for one mention): MELBench/GHMFC and KGMEL differ in names and the NIL rule."""

    format: str
    mentions: str
    names: str
    keyed: bool  # records are a JSON object keyed by record id, else a list with an `id` field
    # A NIL entity name makes the mention NIL whatever its answer field holds (KGMEL's WikiDiverse
    # marks out-of-KB mentions in `entity`). Otherwise a NIL name is NIL only when the KB does not
    # know the answer, since there is nothing to link it to.
    nil_name_is_nil: bool = False
    text: str = "sentence"
    answers: str = "answer"

    @property
    def shape(self) -> str:
        record = f'{{"{self.text}", "{self.mentions}": [...], "{self.names}": [...], "{self.answers}": [...]}}'
        return f'a JSON object keyed by record id, {{"<id>": {record}}}' if self.keyed \
            else f'a JSON list of records, [{{"id", {record[1:]}]'


MELBENCH = Layout("melbench", mentions="mentions", names="entities", keyed=True)
KGMEL = Layout("kgmel_wikidiverse", mentions="mention", names="entity", keyed=False, nil_name_is_nil=True)
ImageOf = Callable[[str, dict[str, Any]], str | None]
# (split, file, record id, raw record) in row order: what the two file layouts list.
Listed = Iterable[tuple[str, Path, str, Any]]


def read_records(path: Path, layout: Layout, problems: Problems) -> tuple[dict[str, Any], int]:
    """Record id -> raw record, in file order, and the number of duplicate ids dropped."""
    data = read_json(path)
    if isinstance(data, dict) != layout.keyed or not isinstance(data, (dict, list)):
        raise DataError(f"{path}: format {layout.format} expects {layout.shape}; found {found(data)}")
    if layout.keyed:
        return {str(rid): obj for rid, obj in data.items()}, 0
    records: dict[str, Any] = {}
    position: dict[str, int] = {}
    duplicates = 0
    for index, obj in enumerate(data):
        if not isinstance(obj, dict):
            problems.bad(path, f"#{index}", "(record)", f"expected an object; found {found(obj)}")
            continue
        if "id" not in obj:
            problems.bad(path, f"#{index}", "id", f"missing required field (the record has {', '.join(obj)})")
            continue
        rid = obj["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            problems.bad(path, f"#{index}", "id", f"expected a string or an integer; found {found(rid)}")
            continue
        rid = str(rid)
        if rid in records:
            duplicates += 1
            problems.bad(path, rid, "id", f"duplicate record id (first at list position {position[rid]})")
            continue
        records[rid], position[rid] = obj, index
    return records, duplicates


def record_rows(obj: Any, rid: str, split: str, file: Path, layout: Layout, kb_ids: set[str],
                kb_by_name: dict[str, str], image_of: ImageOf, problems: Problems) -> list[dict[str, Any]]:
    """The mention rows of one record; bad records and mentions go to `problems`."""
    if not isinstance(obj, dict):
        problems.bad(file, rid, "(record)", f"expected an object; found {found(obj)}")
        return []
    text = text_field(obj, layout.text, file, rid, problems)
    missing = [k for k in (layout.mentions, layout.names, layout.answers) if k not in obj]
    if missing:
        problems.bad(file, rid, missing[0], f"missing required field (the record has {', '.join(obj)})")
        return []
    if text is None:
        return []
    mentions, names, answers = (as_list(obj[k]) for k in (layout.mentions, layout.names, layout.answers))
    if not len(mentions) == len(names) == len(answers):
        problems.bad(file, rid, layout.mentions, f"{layout.mentions}, {layout.names} and {layout.answers} differ "
                                                 f"in length ({len(mentions)}, {len(names)}, {len(answers)})")
        return []
    image = image_of(rid, obj)
    several = isinstance(obj[layout.mentions], list)
    rows = []
    for i, (mention, name, answer) in enumerate(zip(mentions, names, answers)):
        at = f"[{i}]" if several else ""
        if not isinstance(mention, str):
            problems.bad(file, rid, layout.mentions + at, f"expected a string; found {found(mention)}")
            continue
        if not mention.strip():
            problems.bad(file, rid, layout.mentions + at, "empty mention")
            continue
        if answer is not None and not isinstance(answer, str):
            problems.bad(file, rid, layout.answers + at,
                         f"expected an entity id or a NIL marker; found {found(answer)}")
            continue
        if name is not None and not isinstance(name, str):
            problems.bad(file, rid, layout.names + at,
                         f"expected an entity name or a NIL marker; found {found(name)}")
            continue
        nil = is_nil(answer) or (is_nil(name) and (layout.nil_name_is_nil or answer not in kb_ids))
        eid = None if nil else resolve_entity(answer, name, kb_ids, kb_by_name)
        mid = f"{rid}-{i}" if several else rid
        rows.append(row(mid, rid, split, text, mention, image, eid, None if nil else name))
    return rows


def kb_from_data(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """A KB from the gold answers when none ships: one name per id, the most frequent (ties: the
    first seen), and how many ids had several names merged."""
    names: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["entity_id"] is not None:
            counts = names.setdefault(r["entity_id"], {})
            counts[r["entity_name"]] = counts.get(r["entity_name"], 0) + 1
    kb = [{"entity_id": eid, "name": max(counts, key=counts.__getitem__), "description": None}
          for eid, counts in sorted(names.items())]
    return kb, sum(len(counts) > 1 for counts in names.values())


def use_kb_names(rows: list[dict[str, Any]], kb: list[dict[str, Any]]) -> int:
    """Gold names become the KB's name of the gold id, so an exact-match answer is the KB name the
    decoder can produce; returns how many mentions' names changed."""
    name_of = {e["entity_id"]: e["name"] for e in kb}
    changed = 0
    for r in rows:
        kb_name = name_of.get(r["entity_id"])
        if kb_name is not None and r["entity_name"] != kb_name:
            r["entity_name"] = kb_name
            changed += 1
    return changed


def link_records(imported: Imported, kb: list[dict[str, Any]] | None) -> Imported:
    """Attach the KB (built from the data when `kb` is None) and align gold names with it."""
    if kb is None:
        kb, imported.kb_names_merged = kb_from_data(imported.mentions)
    imported.kb = kb
    imported.gold_names_from_kb = use_kb_names(imported.mentions, kb)
    return imported


def layout_rows(listed: Listed, layout: Layout, kb: list[dict[str, Any]], image_of: ImageOf,
                problems: Problems) -> list[dict[str, Any]]:
    """The mention rows of every listed record, in listing order."""
    kb_ids, kb_by_name = kb_index(kb)
    return [r for split, file, rid, obj in listed
            for r in record_rows(obj, rid, split, file, layout, kb_ids, kb_by_name, image_of, problems)]


def import_split_folder(folder: Path, layout: Layout, kb: list[dict[str, Any]], image_of: ImageOf,
                        problems: Problems) -> Imported:
    """One annotation file per split (train.json, test.json, maybe dev.json); a record id seen in
    an earlier file is a duplicate."""
    seen = Seen()

    def listed() -> Iterator[tuple[str, Path, str, Any]]:  # lazily: problems come in file order
        for split, path in split_files(folder, (".json",)).items():
            records, _ = read_records(path, layout, problems)
            for rid, obj in records.items():
                if seen.first(rid, path, split, problems):
                    yield split, path, rid, obj

    rows = layout_rows(listed(), layout, kb, image_of, problems)
    return Imported(rows, kb, seen.records, seen.duplicates)


def import_with_split_file(path: Path, src: Source, layout: Layout, kb: list[dict[str, Any]],
                           image_of: ImageOf, problems: Problems) -> Imported:
    """One annotation file for all splits plus a split file. Rows follow the split lists' order;
    listed ids with no record and records in no split are counted, not errors (the published
    files have both)."""
    assert src.split_file is not None
    splits = read_split_file(src.split_file, src.split_key)
    records, duplicates = read_records(path, layout, problems)
    listed = [(split, path, rid, records[rid]) for split, ids in splits.ids.items() for rid in ids if rid in records]
    read = {split: sum(rid in records for rid in ids) for split, ids in splits.ids.items()}
    absent = {split: len(ids) - read[split] for split, ids in splits.ids.items()}
    rows = layout_rows(listed, layout, kb, image_of, problems)
    return Imported(rows, kb, read, duplicates, records_in_no_split=len(records) - len(listed),
                    split_ids_not_in_annotations=absent, split_overlaps=splits.overlaps,
                    split_ids_repeated=splits.repeated)


# Files beside a single annotation file that are not it (KBs, descriptions, split files).
COMPANIONS = ("qid2ne.json", "qid2abs.json", "splits.json", "ids_split_mappings.json")


def annotation_file(src: Source, layout: Layout) -> Path:
    """`input` itself, or the one JSON in the `input` folder that is not a companion file."""
    if src.input.is_file():
        return src.input
    if not src.input.is_dir():
        raise DataError(f"{src.input}: no such file or folder (datasets.<name>.input)")
    own = {p.resolve() for p in (src.split_file, src.kb) if p is not None}
    candidates = sorted(p.name for p in src.input.glob("*.json")
                        if p.name not in COMPANIONS and p.resolve() not in own)
    if len(candidates) != 1:
        raise DataError(f"{src.input}: with datasets.<name>.split_file, format {layout.format} expects one "
                        f"annotation JSON here besides {', '.join(COMPANIONS)} ({layout.shape}), or "
                        f"datasets.<name>.input naming it; found {', '.join(candidates) or 'none'}")
    return src.input / candidates[0]


def import_melbench(src: Source, problems: Problems) -> Imported:
    """MELBench / GHMFC: records keyed by id with sentence, mentions, entities, answer (scalars, or
    parallel lists for several mentions), KB qid2ne.json + qid2abs.json, images named by record id.
    Either a folder with train.json and test.json (RichpediaMEL), or one annotation file for all
    splits plus datasets.<name>.split_file (WikiMEL: Wikidata-MEL.json + splits.json)."""
    folder = src.input.parent if src.input.is_file() else src.input
    if src.split_file is None:
        if src.input.is_file():
            raise DataError(f"{src.input}: one annotation file for all splits (WikiMEL's layout) needs "
                            f"datasets.<name>.split_file (GHMFC's splits.json)")
        if not (folder / "train.json").exists():
            present = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
            raise DataError(f"{folder}: format melbench expects train.json and test.json here (RichpediaMEL), or "
                            f"one annotation JSON plus datasets.<name>.split_file "
                            f"(WikiMEL: Wikidata-MEL.json + splits.json); "
                            f"found {', '.join(present) or 'no JSON file'}")
    path = annotation_file(src, MELBENCH) if src.split_file is not None else None
    kb_path = src.kb or folder / "qid2ne.json"
    kb = read_kb_file(kb_path, descriptions=kb_path.parent / "qid2abs.json")
    images = src.images or folder / "images"

    def image_of(rid: str, obj: dict[str, Any]) -> str:
        return image_by_id(images, rid)

    imported = (import_split_folder(folder, MELBENCH, kb, image_of, problems) if path is None
                else import_with_split_file(path, src, MELBENCH, kb, image_of, problems))
    return link_records(imported, kb)


def import_kgmel_wikidiverse(src: Source, problems: Problems) -> Imported:
    """KGMEL's WikiDiverse: a JSON list of {id, sentence, imgPath, mention, entity, answer} (parallel
    lists) and ids_split_mappings.json (pick the entry with datasets.<name>.split_key). No KB ships: unless
    datasets.<name>.kb names one, the KB is built from the gold answers."""
    if src.split_file is None:
        raise DataError(f"{src.input}: format kgmel_wikidiverse needs datasets.<name>.split_file "
                        f"(ids_split_mappings.json)")
    path = annotation_file(src, KGMEL)
    kb = read_kb_file(src.kb) if src.kb else []
    images = src.images or path.parent

    def image_of(rid: str, obj: dict[str, Any]) -> str | None:
        ref = obj.get("imgPath")
        return str(images / ref) if isinstance(ref, str) and ref else None

    imported = import_with_split_file(path, src, KGMEL, kb, image_of, problems)
    return link_records(imported, kb if src.kb else None)


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
