"""The features stage: real EfficientNet-Lite0 weights, the incremental cache, every missing-image
policy, and open_clip on a tiny random ViT (no weights exist offline for the real ones)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from gemel.config import FeaturesParams
from gemel.data.tables import MENTIONS, write_parquet_atomic
from gemel.vision.encoders import EncoderError, ImageEncoder, _cached_tag_file, build_image_encoder
from gemel.vision.features import (
    Checkpoint,
    ImageError,
    encode_images,
    encode_mentions,
    image_sha256,
    load_features,
    previous_table,
    read_features,
    write_features,
)
from stages import features as features_stage

TINY_VIT = Path(__file__).parent / "fixtures" / "gemel-tiny-vit.json"


@pytest.fixture(scope="session")
def effnet() -> ImageEncoder:
    return build_image_encoder(FeaturesParams())


def tiny_clip(output: str, pretrained: str | None = None) -> ImageEncoder:
    return build_image_encoder(FeaturesParams(encoder="open_clip", open_clip_model=str(TINY_VIT),
                                              open_clip_pretrained=pretrained, open_clip_output=output))


def draw(path: Path, seed: int, size: int = 96) -> str:
    """A sample-like image: a coloured background, a few shapes and some noise."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2, 2)
        x1, y1 = rng.integers(size // 2, size, 2)
        d.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    return [draw(tmp_path / f"img{i}.png", seed=i) for i in range(3)]


def vectors(table: pd.DataFrame) -> dict[str, np.ndarray]:
    return dict(zip(table["image"], table["vector"], strict=True))


def test_efficientnet_real_weights(effnet: ImageEncoder, images: list[str], tmp_path: Path) -> None:
    twin = str(tmp_path / "twin.png")
    shutil.copy(images[0], twin)
    table, report = encode_images(images + [twin], effnet, batch_size=2)
    assert effnet.dim == 1280 and report["dim"] == 1280 and report["encoded"] == 4
    v = vectors(table)
    assert all(x.dtype == np.float32 and x.shape == (1280,) and np.abs(x).sum() > 1 for x in v.values())
    assert table["ok"].all()
    # Two different images differ; the same pixels give the same vector, here in another batch.
    assert not np.allclose(v[images[0]], v[images[1]], atol=1e-3)
    np.testing.assert_allclose(v[images[0]], v[twin], rtol=1e-5, atol=1e-6)
    # The pretrained features of these images are far from random: cosine between them is high
    # (they share a style), yet below 1.
    a, b = v[images[0]], v[images[1]]
    assert 0.3 < float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 0.999


def test_incremental_cache(effnet: ImageEncoder, images: list[str], tmp_path: Path) -> None:
    path = tmp_path / "f" / "images.parquet"
    first, report = encode_images(images[:2], effnet)
    assert (report["encoded"], report["reused"]) == (2, 0)
    write_features(first, path)
    schema = pq.read_schema(path)
    vector_type = schema.field("vector").type
    assert pa.types.is_fixed_size_list(vector_type) and vector_type.list_size == 1280
    assert vector_type.value_type == pa.float32()
    assert schema.metadata[b"gemel.encoder"].decode() == effnet.name
    assert schema.field("sha256").type == pa.string()
    assert pq.read_table(path)["sha256"].to_pylist() == [image_sha256(p) for p in images[:2]]

    cache = read_features(path)
    again, report = encode_images(images[:2], effnet, cache=cache)
    assert (report["encoded"], report["reused"]) == (0, 2)
    for p in images[:2]:
        np.testing.assert_array_equal(vectors(again)[p], vectors(first)[p])

    more, report = encode_images(images, effnet, cache=cache)
    assert (report["encoded"], report["reused"], report["images"]) == (1, 2, 3)

    cache.attrs["encoder"] = "some-other-encoder"
    _, report = encode_images(images, effnet, cache=cache)
    assert (report["encoded"], report["reused"]) == (3, 0)


def test_an_image_replaced_at_the_same_path_is_encoded_again(effnet: ImageEncoder, images: list[str],
                                                              tmp_path: Path) -> None:
    first, _ = encode_images(images, effnet)
    write_features(first, tmp_path / "images.parquet")
    cache = read_features(tmp_path / "images.parquet")
    draw(Path(images[1]), seed=99)  # another sample draw under the same name
    twin = str(tmp_path / "renamed.png")
    shutil.copy(images[0], twin)  # the same bytes under a new name: the cache is keyed by content
    table, report = encode_images(images + [twin], effnet, cache=cache)
    assert (report["encoded"], report["reused"], report["stale"], report["images"]) == (1, 3, 1, 4)
    old, new = vectors(first), vectors(table)
    assert not np.allclose(new[images[1]], old[images[1]], atol=1e-3)
    fresh, _ = encode_images([images[1]], effnet)
    np.testing.assert_allclose(new[images[1]], vectors(fresh)[images[1]], rtol=1e-5, atol=1e-6)
    # Unchanged images keep their cached vectors bit for bit: they were not encoded again.
    for p in (images[0], images[2]):
        np.testing.assert_array_equal(new[p], old[p])
    np.testing.assert_array_equal(new[twin], old[images[0]])
    assert table.set_index("image").loc[images[1], "sha256"] == image_sha256(images[1])


def test_a_table_without_hashes_is_recomputed(effnet: ImageEncoder, images: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    table, _ = encode_images(images[:1], effnet)
    path = tmp_path / "images.parquet"
    write_features(table, path)
    pq.write_table(pq.read_table(path).drop_columns(["sha256"]), path)  # the layout before the hash column
    assert previous_table(path) is None and "no column(s) sha256" in capsys.readouterr().err
    assert load_features(path).index == {images[0]: 0}  # train and decode still read it until features reruns


def test_load_features_keeps_the_ok_mask(effnet: ImageEncoder, images: list[str], tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.png")
    table, _ = encode_images(images + [gone], effnet, missing_image="zero")
    write_features(table, tmp_path / "images.parquet")
    f = load_features(tmp_path / "images.parquet")
    assert (f.dim, f.encoder) == (1280, effnet.name) and f.matrix.dtype == np.float32 and f.matrix.shape == (4, 1280)
    np.testing.assert_array_equal(f.matrix[f.index[images[1]]], vectors(table)[images[1]])
    # The missing image has a row (a zero vector) but is flagged: it is no image to the prompts.
    assert f.ok.tolist() == [True, True, True, False] and not f.matrix[f.index[gone]].any()


def test_checkpoint_resumes_whole_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(1, 3)).astype(np.float32)
    first = Checkpoint(tmp_path / "partial", "enc", 3)
    first.append(["a0", "a1"], ["ha0", "ha1"], a)
    first.append(["b0"], ["hb0"], b)
    # Read while the writer is still open, as after a kill -9: every appended batch is on disk.
    got = Checkpoint(tmp_path / "partial", "enc", 3).read()
    assert got["image"].tolist() == ["a0", "a1", "b0"] and got["ok"].all() and got.attrs == {"encoder": "enc", "dim": 3}
    assert got["sha256"].tolist() == ["ha0", "ha1", "hb0"]
    np.testing.assert_array_equal(np.stack(got["vector"]), np.concatenate([a, b]))
    assert Checkpoint(tmp_path / "partial", "another encoder", 3).read() is None
    # A stream cut in the middle of its last batch gives the batches before it.
    (stream,) = (tmp_path / "partial").iterdir()
    stream.write_bytes(stream.read_bytes()[:-8])
    assert Checkpoint(tmp_path / "partial", "enc", 3).read()["image"].tolist() == ["a0", "a1"]
    # A second unfinished run appends its own stream; clear() removes them all.
    second = Checkpoint(tmp_path / "partial", "enc", 3)
    second.append(["c0"], ["hc0"], b)
    assert Checkpoint(tmp_path / "partial", "enc", 3).read()["image"].tolist() == ["a0", "a1", "c0"]
    second.clear()
    assert not (tmp_path / "partial").exists()


def test_resumed_rows_are_not_encoded_again(effnet: ImageEncoder, images: list[str], tmp_path: Path) -> None:
    full, _ = encode_images(images, effnet, batch_size=2)
    partial = Checkpoint(tmp_path / "partial", effnet.name, effnet.dim)
    encode_images(images[:2], effnet, batch_size=2, on_batch=partial.append)
    table, report = encode_images(images, effnet, batch_size=2, resume=partial.read())
    assert (report["encoded"], report["resumed"], report["reused"]) == (1, 2, 0)
    assert table["image"].tolist() == images
    np.testing.assert_allclose(np.stack(table["vector"]), np.stack(full["vector"]), rtol=1e-5, atol=1e-6)


def test_a_resume_encodes_an_image_replaced_since_the_kill(effnet: ImageEncoder, images: list[str],
                                                           tmp_path: Path) -> None:
    partial = Checkpoint(tmp_path / "partial", effnet.name, effnet.dim)
    encode_images(images[:2], effnet, batch_size=2, on_batch=partial.append)
    draw(Path(images[0]), seed=99)
    table, report = encode_images(images, effnet, batch_size=2, resume=partial.read())
    assert (report["encoded"], report["resumed"]) == (2, 1)  # images[0] again, images[2]; images[1] resumed
    fresh, _ = encode_images(images[:1], effnet)
    np.testing.assert_allclose(vectors(table)[images[0]], vectors(fresh)[images[0]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["zero", "drop"])
def test_missing_and_unreadable_images(effnet: ImageEncoder, images: list[str], tmp_path: Path, policy: str) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a picture" * 10)
    missing = str(tmp_path / "missing.jpg")
    table, report = encode_images([images[0], missing, str(garbage), images[1]], effnet, missing_image=policy)
    assert (report["images"], report["encoded"], report["missing"], report["unreadable"]) == (4, 2, 1, 1)
    if policy == "zero":
        assert report["zero_vectors"] == 2 and report["dropped"] == 0
        assert table["image"].tolist() == [images[0], missing, str(garbage), images[1]]
        assert table["ok"].tolist() == [True, False, False, True]
        assert not vectors(table)[missing].any() and vectors(table)[images[1]].any()
    else:
        assert report["dropped"] == 2 and report["zero_vectors"] == 0
        assert table["image"].tolist() == [images[0], images[1]] and table["ok"].all()


def mentions_frame(rows: list[tuple[str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"id": i, "dataset": "t", "split": "train", "text": "x", "mention": "x", "start": 0,
                          "end": 1, "image": img, "entity_id": "Q1", "entity_name": "X", "is_nil": False}
                         for i, img in rows])


def test_error_policy_names_image_and_mention(effnet: ImageEncoder, images: list[str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    for bad in (str(tmp_path / "missing.jpg"), str(garbage)):
        mentions = mentions_frame([("m1", images[0]), ("m2", bad), ("m3", bad)])
        with pytest.raises(ImageError, match=rf"{bad}.*mention m2.*(missing|unreadable)"):
            encode_mentions(mentions, effnet, missing_image="error")


def test_mentions_without_image_are_counted(effnet: ImageEncoder, images: list[str]) -> None:
    mentions = mentions_frame([("m1", images[0]), ("m2", None), ("m3", images[0]), ("m4", images[1])])
    table, report = encode_mentions(mentions, effnet)
    assert (report["mentions"], report["no_image"], report["images"], report["rows"]) == (4, 1, 2, 2)
    assert table["image"].tolist() == images[:2]


def test_stage_is_incremental(effnet: ImageEncoder, images: list[str], tmp_path: Path, capsys) -> None:
    write_parquet_atomic(mentions_frame([("m1", images[0]), ("m2", images[1]), ("m3", None)]),
                         tmp_path / "prepared" / "mentions.parquet", MENTIONS)
    argv = ["--params", str(Path(__file__).parent.parent / "params.yaml"),
            "--set", f"prepare.out={tmp_path / 'prepared'}", "--set", f"features.out={tmp_path / 'features'}"]
    assert features_stage.main(argv) == 0
    report = json.loads((tmp_path / "features" / "report.json").read_text())
    assert (report["encoded"], report["no_image"], report["encoder"]) == (2, 1, effnet.name)
    assert features_stage.main(argv) == 0
    report = json.loads((tmp_path / "features" / "report.json").read_text())
    assert (report["encoded"], report["reused"], report["stale"]) == (0, 2, 0)
    assert len(read_features(tmp_path / "features" / "images.parquet")) == 2
    draw(Path(images[1]), seed=99)  # as `dvc exp run -S sample.seed=1` redraws under the same names
    assert features_stage.main(argv) == 0
    report = json.loads((tmp_path / "features" / "report.json").read_text())
    assert (report["encoded"], report["reused"], report["stale"]) == (1, 1, 1)


def test_unknown_encoder_lists_known() -> None:
    with pytest.raises(EncoderError, match="efficientnet_lite0, open_clip"):
        build_image_encoder(FeaturesParams(encoder="resnet"))


def test_open_clip_pooled_and_projected(images: list[str]) -> None:
    pooled, projected = tiny_clip("pooled"), tiny_clip("projected")
    assert (pooled.dim, projected.dim) == (48, 16)  # the tower's width vs the joint embedding
    assert pooled.name != projected.name
    p_table, _ = encode_images(images, pooled)
    q_table, _ = encode_images(images, projected)
    p, q = np.stack(p_table["vector"]), np.stack(q_table["vector"])
    assert p.shape == (3, 48) and q.shape == (3, 16)
    # pooled is exactly the hidden state that the projection maps to the CLIP embedding.
    np.testing.assert_allclose(p @ projected.model.proj.numpy(), q, rtol=1e-4, atol=1e-5)


def test_open_clip_local_checkpoint(tmp_path: Path, images: list[str]) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    open_clip.add_model_config(TINY_VIT)
    model = open_clip.create_model(TINY_VIT.stem).eval()
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    enc = tiny_clip("projected", pretrained=str(tmp_path / "tiny.safetensors"))
    assert "tiny.safetensors" in enc.name
    x = enc.preprocess(Image.open(images[0])).unsqueeze(0)
    with torch.inference_mode():
        expected = model.encode_image(x)
    np.testing.assert_allclose(enc.encode(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(enc.encode(x).numpy(), tiny_clip("projected").encode(x).numpy(), atol=1e-3)


def test_open_clip_missing_weights_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "nowhere" / "ViT-L-14.safetensors")
    with pytest.raises(EncoderError, match=rf"no such checkpoint file {missing}.*local"):
        build_image_encoder(FeaturesParams(encoder="open_clip", open_clip_pretrained=missing))
    # A tag that is not in the (here: empty) Hugging Face cache fails at once, without network.
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EncoderError, match=r"ViT-L-14 'openai' weights are not available offline.*"
                                           r"ViT-L-14-quickgelu.*open_clip_pretrained to the local"):
        build_image_encoder(FeaturesParams(encoder="open_clip", open_clip_model="ViT-L-14",
                                           open_clip_pretrained="openai"))


def test_open_clip_tag_found_in_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--timm--vit_large_patch14_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    found = _cached_tag_file(open_clip.get_pretrained_cfg("ViT-L-14", "openai"))
    assert found is not None and Path(found) == weights


class CountingModel(torch.nn.Module):
    """A stand-in image model: mean colour per channel, counting the images it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen += len(batch)
        return batch.mean(dim=(2, 3))


def counting_encoder() -> ImageEncoder:
    return ImageEncoder(name="counting", dim=3, model=CountingModel(),
                        transform=lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), np.float32)).permute(2, 0, 1))


def test_stage_resume_encodes_only_what_the_checkpoint_lacks(tmp_path: Path) -> None:
    """update_features (the stage) after a killed run: the checkpoint's vectors are taken as they
    are, only the other images are encoded, and the checkpoint goes once the table is written."""
    from gemel.vision.features import CHECKPOINT_DIR, image_sha256, update_features

    paths = [draw(tmp_path / f"img{i}.png", seed=i, size=16) for i in range(4)]
    encoder = counting_encoder()
    table_path = tmp_path / "features" / "images.parquet"
    done = np.full((2, 3), 7.0, np.float32)  # not what the model gives: proves they were not re-encoded
    killed = Checkpoint(table_path.parent / CHECKPOINT_DIR, encoder.name, encoder.dim)
    killed.append(paths[:2], [image_sha256(p) for p in paths[:2]], done)
    killed.close()
    mentions = mentions_frame([(f"m{i}", p) for i, p in enumerate(paths)])
    report = update_features(mentions, table_path, encoder, batch_size=1, missing_image="zero")
    assert encoder.model.seen == 2
    assert (report["resumed"], report["encoded"], report["reused"]) == (2, 2, 0)
    table = read_features(table_path)
    assert table["image"].tolist() == paths
    np.testing.assert_array_equal(np.stack(table["vector"][:2]), done)
    assert not (table_path.parent / CHECKPOINT_DIR).exists()
