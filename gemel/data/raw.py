"""Raw dataset files: the DataError every reader of them raises, and the JSON readers and the
layout-message helper that the importers and the split files share."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gemel.errors import GemelError


class DataError(GemelError, ValueError):
    """A raw record is unusable. The message names the file, the record and the field."""


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


def found(value: Any) -> str:
    """What a layout check found, for its error message."""
    if isinstance(value, dict) and not value:
        return "an empty JSON object"
    if isinstance(value, dict):
        return f"a JSON object with keys {', '.join(map(str, list(value)[:6]))}" + (", ..." if len(value) > 6 else "")
    if isinstance(value, list):
        return f"a JSON list of {len(value)} item(s)"
    return f"a JSON {type(value).__name__} ({value!r:.40})"
