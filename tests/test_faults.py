"""The fault suite: stage CLIs killed with SIGKILL in the middle of their work, then rerun; damaged
Parquet inputs; damaged images. (prepare's checks of empty splits, an empty KB and blank names
are in tests/test_prepare_cli.py, with that stage's other bad inputs.)

A kill happens at a point read from the stage's own progress bar (at least one batch or step
done, most of them not), never after a blind sleep. What must hold after it: no output that a
later stage or `gemel link` could take as finished (none, or the previous complete one,
byte for byte); the rerun completes; the features rerun encodes only what the killed run had not
checkpointed.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemel.config import FeaturesParams, load_params
from gemel.data.sample import generate_sample
from gemel.data.tables import read_mentions
from gemel.paths import DECODE_REPORT, MAPPER, PREDICTIONS, RUN_RECORD, TRAIN_REPORT, Artifacts
from gemel.vision.encoders import build_image_encoder
from gemel.vision.features import encode_images, encode_mentions, read_features
from tests.conftest import TEST_SEED

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds for one stage; generous: other jobs may share the 2 cores


@dataclass
class Project:
    """A small pipeline in its own folder, every stage run as `python -m stages.<name>`."""
    base: Path
    sets: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, base: Path, *sets: str) -> Project:
        params = load_params(ROOT / "params.yaml")
        folders = [f"sample.out={base}/sample", f"datasets.sample.input={base}/sample",
                   f"datasets.sample.kb={base}/sample/kb.json", f"datasets.sample.images={base}/sample/images",
                   f"prepare.out={base}/prepared", f"features.out={base}/features", f"retrieve.out={base}/demos",
                   f"candidates.out={base}/candidates", f"train.out={base}/results"]
        if "trie" in params:
            folders.append(f"trie.out={base}/tries")
        return cls(base, folders + list(sets))

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts.of(load_params(ROOT / "params.yaml", self.sets))

    def argv(self, stage: str) -> list[str]:
        return [sys.executable, "-m", f"stages.{stage}", "--params", str(ROOT / "params.yaml"),
                *(a for s in self.sets for a in ("--set", s))]

    def run(self, stage: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(stage), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)

    def ok(self, stage: str) -> subprocess.CompletedProcess[str]:
        result = self.run(stage)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
        return result

    def kill_midway(self, stage: str, bar: str) -> tuple[int, int]:
        """Start `stage`, SIGKILL it as soon as its tqdm bar `bar` shows done/total with
        0 < done < total, and return (done, total) as last shown. tqdm redraws with '\\r', so
        stderr is read as it comes, not line by line."""
        proc = subprocess.Popen(self.argv(stage), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pattern = re.compile(rf"{re.escape(bar)}[^:\r|]*:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)".encode())
        seen, deadline = b"", time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stderr], [], [], 1.0)
                if not ready:
                    continue
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break  # the stage ended before the kill
                seen += chunk
                shown = [(int(a), int(b)) for a, b in pattern.findall(seen)]
                if shown and shown[-1][0] >= 1:
                    done, total = shown[-1]
                    assert done < total, f"{stage} was already at {done}/{total}: too fast to kill midway"
                    os.kill(proc.pid, signal.SIGKILL)
                    assert proc.wait(TIMEOUT) == -signal.SIGKILL
                    return done, total
            pytest.fail(f"{stage}: no '{bar}' progress with a step done before it ended or timed out:\n"
                        f"{seen.decode(errors='replace')[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def snapshot(*paths: Path) -> dict[str, bytes | None]:
    return {p.name: p.read_bytes() if p.exists() else None for p in paths}


def visible(folder: Path) -> set[str]:
    """The files of a folder that a reader could take for outputs (temporary files are hidden)."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


# A small draw of the sample: 12 train mentions (3 steps of 4), 4 dev, 8 test (4 decode batches of 2),
# 24 images encoded one per batch. Random demonstrations: the prompts use none (model.num_demos 0),
# and random retrieval needs no text encoder to load.
SETTINGS = ["prepare.limit.train=12", "prepare.limit.dev=4", "prepare.limit.test=8", "features.batch_size=1",
            "retrieve.method=random", "train.epochs=1", "train.batch_size=4", "train.dev_limit=2",
            "train.eval_every=1000", f"train.seed={TEST_SEED}", "decode.batch_size=2", "decode.num_beams=2"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("faults")
    generate_sample(base / "sample", seed=0, train_per_entity=1, dev_per_entity=1, test_per_entity=1, image_size=32)
    p = Project.make(base, *SETTINGS)
    p.ok("prepare")
    return p


# ------------------------------------------------------------------ kill -9, then rerun

def test_features_killed_midway_resumes_from_its_checkpoint(project: Project) -> None:
    a = project.artifacts
    done, total = project.kill_midway("features", "encoding images")
    assert not a.features.exists() and not a.features_report.exists()  # nothing looks finished

    rerun = project.ok("features")
    report = json.loads(a.features_report.read_text())
    assert report["images"] == total
    # What the killed run had encoded (at least the batches its bar showed) is not encoded again.
    assert report["resumed"] >= done and report["encoded"] == total - report["resumed"] and report["reused"] == 0
    assert "resuming an unfinished run" in rerun.stderr
    assert visible(a.features_dir) == {"images.parquet", "report.json"}  # the checkpoint is gone
    # The resumed table holds the same vectors as one encoding of every image at once.
    table = read_features(a.features)
    reference, _ = encode_mentions(read_mentions(a.mentions), build_image_encoder(FeaturesParams()))
    assert table["image"].tolist() == reference["image"].tolist() and table["ok"].all()
    np.testing.assert_allclose(np.stack(table["vector"]), np.stack(reference["vector"]), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def upstream(project: Project) -> Project:
    """Everything train needs (features only if the features test has not made it)."""
    for stage in ("features", "retrieve", "trie"):
        if stage != "features" or not project.artifacts.features.exists():
            project.ok(stage)
    return project


def test_train_and_decode_killed_midway_then_rerun(upstream: Project) -> None:
    """Killed before any output exists: none appears. Killed while a complete run's outputs
    exist: they stay as they were, byte for byte. The rerun after a kill completes."""
    a = upstream.artifacts
    trained = [a.in_run(MAPPER), a.in_run(RUN_RECORD), a.in_run(TRAIN_REPORT)]
    decoded = [a.in_run(PREDICTIONS), a.in_run(DECODE_REPORT)]

    upstream.kill_midway("train", "train")
    assert snapshot(*trained) == {p.name: None for p in trained}
    upstream.ok("train")
    complete = snapshot(*trained)
    assert None not in complete.values()

    upstream.kill_midway("decode", "decode")
    assert snapshot(*decoded) == {p.name: None for p in decoded}
    upstream.ok("decode")
    assert None not in snapshot(*decoded).values()
    assert json.loads(a.in_run(DECODE_REPORT).read_text())["mentions"] == 8

    upstream.kill_midway("train", "train")
    assert snapshot(*trained) == complete  # the killed run changed none of them


# ------------------------------------------------------------------ damaged Parquet inputs

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def corrupt(path: Path) -> None:
    """Overwrite the middle of the file (column pages) and keep the footer: the file opens, the
    data does not decode."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))


def wrong_table(path: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"id": ["m1"], "name": ["x"]})), path)


@pytest.mark.parametrize("stage, damage, says", [
    ("features", truncate, "unreadable Parquet file"),
    ("features", wrong_table, "not the table expected, no column(s) dataset, split"),
    ("retrieve", corrupt, "unreadable Parquet file"),
])
def test_a_damaged_parquet_input_is_one_line_naming_it(tmp_path: Path, stage: str, damage, says: str) -> None:
    generate_sample(tmp_path / "sample", seed=0, train_per_entity=1, dev_per_entity=1, test_per_entity=1, image_size=16)
    p = Project.make(tmp_path, "prepare.limit.train=200")
    p.ok("prepare")
    mentions = p.artifacts.mentions
    damage(mentions)
    result = p.run(stage)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"{stage}: error: {mentions}: ") and says in lines[0]
    assert "the prepare stage writes it" in lines[0]


# ------------------------------------------------------------------ damaged images

def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring width x height pixels, with almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_corrupt_truncated_and_oversized_images_are_unreadable(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) * 2 // 3])
    corrupt_jpeg = tmp_path / "corrupt.jpg"
    corrupt_jpeg.write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    oversized = tmp_path / "oversized.png"
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1  # past PIL's decompression-bomb limit
    oversized.write_bytes(png_claiming(side, side))
    paths = [str(good), str(truncated), str(corrupt_jpeg), str(oversized), str(tmp_path / "missing.jpg")]

    table, report = encode_images(paths, build_image_encoder(FeaturesParams()), missing_image="zero")
    assert (report["encoded"], report["unreadable"], report["missing"], report["zero_vectors"]) == (1, 3, 1, 4)
    assert table["ok"].tolist() == [True, False, False, False, False]
    assert not np.stack(table["vector"][1:]).any()
