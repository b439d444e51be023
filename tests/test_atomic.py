"""gemel.atomic, the one writer of every output: the usual file mode under the caller's umask
(not mkstemp's 0600), the old file kept whole when writing fails, and no temporary file left."""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemel.atomic import atomic_path, write_text_atomic
from gemel.data.tables import KB, write_parquet_atomic
from gemel.generation.trie import save_npz_atomic
from gemel.vision.features import Checkpoint, write_features


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def features_table() -> pd.DataFrame:
    t = pd.DataFrame({"image": ["a.png"], "sha256": ["0" * 64], "vector": [np.ones(3, np.float32)], "ok": [True]})
    t.attrs.update(encoder="enc", dim=3)
    return t


WRITERS: dict[str, Callable[[Path], None]] = {
    "text": lambda p: write_text_atomic("{}\n", p / "metrics.json"),
    "parquet": lambda p: write_parquet_atomic(pd.DataFrame({"entity_id": ["Q1"], "name": ["X"], "description": [None]}),
                                              p / "kb.parquet", KB),
    "npz": lambda p: save_npz_atomic(p / "trie.npz", {"a": np.arange(3)}),
    "features": lambda p: write_features(features_table(), p / "images.parquet"),
    "png-by-suffix": lambda p: _savefig(p / "plot.png"),
}


def _savefig(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    try:
        with atomic_path(path) as tmp:
            assert tmp.suffix == ".png"  # matplotlib picks the format from it
            fig.savefig(tmp)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kind", WRITERS)
def test_outputs_get_the_usual_mode(tmp_path: Path, umask: int, kind: str) -> None:
    WRITERS[kind](tmp_path)
    (out,) = tmp_path.iterdir()  # the output, and no temporary file beside it
    assert not out.name.startswith(".")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_checkpoint_stream_gets_the_usual_mode(tmp_path: Path, umask: int) -> None:
    c = Checkpoint(tmp_path / "partial", "enc", 2)
    c.append(["a"], ["0" * 64], np.ones((1, 2), np.float32))
    c.close()
    (stream,) = (tmp_path / "partial").iterdir()
    assert stat.S_IMODE(stream.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_text_atomic("old\n", target)
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half of the new con")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    write_text_atomic("new\n", target)
    assert target.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1


def test_parent_folders_are_made(tmp_path: Path) -> None:
    write_text_atomic("x", tmp_path / "a" / "b" / "c.txt")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def test_the_mapper_gets_the_usual_mode(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gemel.generation.model import Gemel, Mapper

    old = os.umask(0o022)
    try:
        stub = SimpleNamespace(mapper=Mapper(3, 8), k=2, embed_dim=4)
        Gemel.save_mapper(stub, tmp_path / "mapper.safetensors", {"llm": "x"})
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["mapper.safetensors"]
    assert stat.S_IMODE((tmp_path / "mapper.safetensors").stat().st_mode) == 0o644


def test_content_is_flushed_to_disk_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is fsynced, whole, before it replaces the target: a power loss after the
    rename must not leave a renamed file whose blocks never reached the disk."""
    events: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", Path(name).name, Path(name).read_bytes()))
        fsync(fd)

    def record_replace(src, dst) -> None:
        events.append(("replace", Path(src).name, Path(dst).name))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    target = tmp_path / "metrics.json"
    write_text_atomic('{"accuracy": 1}\n', target)
    assert [e[0] for e in events] == ["fsync", "replace"]
    (_, synced, content), (_, src, dst) = events
    assert synced == src and src.startswith(".metrics.json.") and dst == "metrics.json"
    assert content == b'{"accuracy": 1}\n'  # the whole new content, not an empty or partial file
    assert target.read_bytes() == content
