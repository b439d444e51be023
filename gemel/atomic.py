"""Atomic output files, the one way every stage writes: a temporary file beside the target, then a
rename. A killed run leaves the previous complete file or none, never a half-written one that
looks finished.

The temporary file is created with mode 0666 and the process umask applies, as for any file a
program creates (0644 under the usual umask 022), so a colleague on a shared cluster can read the
outputs; `tempfile.mkstemp` would give 0600. It keeps the target's suffix, because some writers
pick the format from it (matplotlib) or append one when it is missing (np.savez).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _create_temp(path: Path) -> Path:
    """A new empty file `.<name>.<random>.tmp<suffix>` beside `path` (hidden: no glob of the
    outputs picks it up), created exclusively so two writers never share one."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to, by any writer; it replaces `path` when the
    block ends without error and is removed otherwise. The content is flushed to disk before the
    rename, so a power loss too leaves the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    """UTF-8 text, newlines as given (no platform translation: outputs are byte-identical everywhere)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
