"""Linking new inputs without an LLM: the missing-image policy of a new input (a missing file as
well as an unreadable one), through encode_inputs and through Linker.link_mentions with stand-in
parts; and `gemel link` refusing a run whose mapper changed since run.json recorded it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemel.config import DecodeParams, load_params
from gemel.generation.prompt import Example, Question, build_example
from gemel.link.examples import LinkExample
from gemel.link.fusion import LLM_ALONE, Fusion
from gemel.link.inputs import NewMention
from gemel.link.linker import Linker, NewInputs
from gemel.link.ranking import Ranked
from gemel.vision.encoders import ImageEncoder
from gemel.vision.features import encode_inputs

ROOT = Path(__file__).resolve().parent.parent
DIM = 3


def mean_colour_encoder() -> ImageEncoder:
    return ImageEncoder(name="mean-colour", dim=DIM, model=torch.nn.Identity(),
                        transform=lambda im: torch.from_numpy(np.asarray(im, np.float32).mean(axis=(0, 1))))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    return {"good": str(good), "missing": str(tmp_path / "gone.png"), "unreadable": str(bad)}


@pytest.mark.parametrize("policy", ["zero", "drop", "error"])
def test_new_inputs_follow_the_runs_missing_image_policy(images: dict[str, str], policy: str) -> None:
    paths = [images["good"], images["missing"], images["unreadable"], None]
    vectors, why, errors = encode_inputs(paths, mean_colour_encoder(), batch_size=2, missing_image=policy)
    assert why == [None, "missing", "unreadable", "none given"]
    np.testing.assert_allclose(vectors, [[10, 20, 30], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    if policy == "error":  # a missing file is an error as much as an unreadable one; no image given is not
        assert errors[0] is None and errors[3] is None
        assert errors[1] == f"image {images['missing']} is missing (the run's features.missing_image is error)"
        assert errors[2] == f"image {images['unreadable']} is unreadable (the run's features.missing_image is error)"
    else:
        assert errors == [None] * 4


class StubPrompts:
    """The prompt builder's part that new inputs touch: k visual tokens, no demonstrations."""
    k, num_demos = 4, 0

    def question(self, text: str, mention: str, image_row: int) -> Question:
        return Question([1, 2], [], image_row)

    def build(self, mention_id: str, question: Question, demo_ids: list[str], with_target: bool) -> Example:
        return build_example(mention_id, question, [], [0], self.k, with_target)


class StubRanker:
    """Records each batch's image rows and feature matrix instead of asking an LLM."""

    def __init__(self) -> None:
        self.linked: list[tuple[list[int], np.ndarray]] = []

    def rank(self, examples: list[LinkExample], features: np.ndarray, p: DecodeParams, fusion: Fusion) -> list[Ranked]:
        self.linked.append(([e.image_row for e in examples], features))
        return [Ranked(["E1"], ["Mercury"], [-0.5]) for _ in examples]


def stub_linker(policy: str) -> Linker:
    base = np.ones((2, DIM), np.float32)  # the run's own features
    new = NewInputs(decode=DecodeParams(), mode="paper", fusion=LLM_ALONE, image_encoder=mean_colour_encoder(),
                    missing_image=policy, image_batch_size=2, pool=None, text_encoder=None, retrieve_top_k=8,
                    retrieve_batch_size=8, generator=None, ranker=None, cand_top_k=4, notes=[])
    return Linker(ranker=StubRanker(), prompts=StubPrompts(), features=base, new=new)


def test_link_mentions_turns_a_missing_image_into_that_inputs_error(images: dict[str, str]) -> None:
    """Under missing_image: error, the input whose image file does not exist gets an error record
    (the others in its batch are linked); under zero it is linked without its image. The batch's
    image goes after the run's features in a matrix of its own: the linker's are untouched."""
    items = [NewMention("a", "Mercury rising.", "Mercury", images["good"]),
             NewMention("b", "Mercury rising.", "Mercury", images["missing"]),
             NewMention("c", "Mercury rising.", "Mercury", None)]
    linker = stub_linker("error")
    out = linker.link_mentions(items)
    assert [r["id"] for r in out] == ["a", "b", "c"]
    assert out[1]["entities"] == [] and "missing" in out[1]["error"] and images["missing"] in out[1]["error"]
    assert "error" not in out[0] and "error" not in out[2]
    assert (out[0]["image_used"], out[2]["image_used"], out[2]["image_reason"]) == (True, False, "none given")
    ((rows, features),) = linker.ranker.linked
    assert rows == [2, -1]  # b never reaches the LLM; a's image is row 2
    np.testing.assert_allclose(features[2], [10, 20, 30])
    assert linker.features.shape == (2, DIM)
    zero = stub_linker("zero").link_mentions(items)
    assert "error" not in zero[1] and (zero[1]["image_used"], zero[1]["image_reason"]) == (False, "missing")


def test_link_refuses_a_run_whose_mapper_changed(tmp_path: Path, capsys) -> None:
    """run.json records the mapper's sha256; a different mapper file makes `gemel link` exit 2
    with one line naming it, before any model is loaded."""
    from gemel.cli import main
    from gemel.link.run import check_run, read_run_record, write_run_record

    params = load_params(ROOT / "params.yaml", [f"{s}.out={tmp_path / s}" for s in
                                                ("prepare", "features", "retrieve", "candidates", "trie")]
                         + [f"train.out={tmp_path / 'results'}"])
    (tmp_path / "prepare").mkdir()
    (tmp_path / "prepare" / "kb.parquet").write_bytes(b"kb")
    (tmp_path / "trie").mkdir()
    (tmp_path / "trie" / f"{params['model']['llm']}.npz").write_bytes(b"trie")
    run = tmp_path / "results" / params["model"]["llm"]
    run.mkdir(parents=True)
    (run / "mapper.safetensors").write_bytes(b"the trained mapper")
    write_run_record(params, run)
    record = read_run_record(run)
    assert check_run(record, run) == []
    (run / "mapper.safetensors").write_bytes(b"another mapper")
    (diff,) = check_run(record, run)
    assert diff.startswith(f"mapper {run / 'mapper.safetensors'}: sha256 ") and "when the run was trained" in diff
    assert main(["link", str(run), "--text", "Mercury rising.", "--mention", "Mercury"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gemel link: error: run {run} no longer matches")
    assert "mapper.safetensors" in err
