"""What a file is, by content: the one sha256 every cache key and run record uses (image features,
the image encoder's weights, the LLM's GGUF, a run's artifacts)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file's bytes (read in blocks: a GGUF is hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
