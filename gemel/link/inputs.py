"""New inputs for `gemel link` and `Linker.link`: one record (text, mention, optional image and
id) validated into a NewMention, the output record of one that cannot be linked, and batching
that lets error records ride along with the valid ones."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemel.errors import GemelError


class InputError(GemelError, ValueError):
    """A new input that cannot be linked; the message names the record (or line) and the field."""


@dataclass(frozen=True)
class NewMention:
    """One validated new input."""
    id: str
    text: str
    mention: str
    image: str | None = None


FIELDS = ("text", "mention")


def parse_input(obj: Any, default_id: str, where: str = "") -> NewMention:
    """One input record -> NewMention, or InputError naming `where` (e.g. "line 3: ") and the field.
    text and mention are required non-empty strings; image (a path) and id (string or integer,
    default `default_id`) are optional."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}expected a JSON object with text and mention, got {type(obj).__name__}")
    for name in FIELDS:
        if name not in obj or obj[name] is None:
            raise InputError(f"{where}missing field '{name}'")
        if not isinstance(obj[name], str):
            raise InputError(f"{where}field '{name}': expected a string, got {type(obj[name]).__name__}")
        if not obj[name].strip():
            raise InputError(f"{where}field '{name}' is empty")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise InputError(f"{where}field 'image': expected a path (string), got {type(image).__name__}")
    return NewMention(input_id(obj, default_id, where), obj["text"], obj["mention"], image or None)


def input_id(obj: Any, default_id: str, where: str = "") -> str:
    rid = obj.get("id") if isinstance(obj, dict) else None
    if rid is None:
        return default_id
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise InputError(f"{where}field 'id': expected a string or an integer, got {type(rid).__name__}")
    return str(rid)


def error_record(obj: Any, rid: str, error: str, mode: str | None = None) -> dict[str, Any]:
    """The output record of an input that could not be linked."""
    mention = obj.get("mention") if isinstance(obj, dict) and isinstance(obj.get("mention"), str) else None
    return {"id": rid, "mention": mention, "entities": [], "mode": mode, "image_used": False, "image_reason": None,
            "mention_in_text": None, "error": error}


def chunks(entries: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive batches holding `size` valid inputs each (error records ride along)."""
    out: list[list[Any]] = [[]]
    valid = 0
    for e in entries:
        if valid == size:
            out.append([])
            valid = 0
        out[-1].append(e)
        valid += isinstance(e, NewMention)
    return [c for c in out if c]
