"""The converted-LLM cache (gemel.generation.llm_cache) on the real SmolLM2 GGUF, in a temporary GEMEL_CACHE.

Two real conversions (the direct GGUF load, the first cached load) are the cost; the damage and
concurrency tests replace the conversion by a copy of the real entry, since what they test is the
cache's bookkeeping, not transformers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf.gguf_reader
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gemel.config import load_params
from gemel.generation import llm_cache
from gemel.generation.llm import _from_pretrained, _gguf_location, get_spec

PROMPT = "Freddie Mercury was the lead singer of"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMEL_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("GEMEL_LLM_CACHE", "1")
        yield mp


@pytest.fixture(scope="module")
def spec() -> Any:
    return get_spec(load_params()["llms"], "smollm2-135m")


@pytest.fixture(scope="module")
def gguf_path(spec: Any) -> Path:
    folder, file = _gguf_location(spec)
    return folder / file


def _parses(mp: pytest.MonkeyPatch) -> list[str]:
    """Every GGUFReader construction from now on (a full parse of the file's metadata)."""
    seen: list[str] = []
    init = gguf.gguf_reader.GGUFReader.__init__

    def counted(self: Any, path: Any, *a: Any, **kw: Any) -> None:
        seen.append(str(path))
        init(self, path, *a, **kw)
    mp.setattr(gguf.gguf_reader.GGUFReader, "__init__", counted)
    return seen


def _logits(tokenizer: Any, model: Any) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids[0].tolist(), model(ids).logits


@pytest.fixture(scope="module")
def reference(env: pytest.MonkeyPatch, spec: Any, gguf_path: Path) -> dict[str, Any]:
    """The direct GGUF load (cache off): tokenizer and model share one parse and write no entry."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMEL_LLM_CACHE", "0")
        llm_cache.forget_parses(gguf_path)
        parses = _parses(mp)
        tokenizer = _from_pretrained(AutoTokenizer, spec)
        model = _from_pretrained(AutoModelForCausalLM, spec, dtype=torch.float32)
        llm_cache.forget_parses(gguf_path)
    ids, logits = _logits(tokenizer, model)
    return {"parses": len(parses), "ids": ids, "logits": logits, "state": model.state_dict(),
            "special": tokenizer("", add_special_tokens=True).input_ids, "eos": tokenizer.eos_token_id}


@pytest.fixture(scope="module")
def built(env: pytest.MonkeyPatch, reference: dict[str, Any], gguf_path: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first cached load builds the entry (one parse), and a pristine copy of it (hard links)
    for the tests below. Tests damage files by replacing them, never in place, so the copy stays whole."""
    with pytest.MonkeyPatch.context() as mp:
        parses = _parses(mp)
        tokenizer = llm_cache.load(AutoTokenizer, gguf_path)
    entry = llm_cache.ensure_entry(gguf_path)
    pristine = tmp_path_factory.mktemp("pristine") / "entry"
    shutil.copytree(entry, pristine, copy_function=os.link)
    (pristine / llm_cache.MANIFEST).unlink()
    return {"parses": len(parses), "entry": entry, "pristine": pristine, "tokenizer": tokenizer}


@pytest.fixture
def fake_convert(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """convert() replaced by a copy of the real entry's files; returns the folders it filled."""
    calls: list[Path] = []

    def copy(gguf: Path, out: Path) -> None:
        calls.append(out)
        for f in built["pristine"].iterdir():
            os.link(f, out / f.name)
    monkeypatch.setattr(llm_cache, "convert", copy)
    return calls


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_cache_off_loads_the_gguf_once_and_writes_nothing(reference: dict[str, Any]) -> None:
    assert reference["parses"] == 1
    assert not llm_cache.llm_dir().exists() or not any(llm_cache.llm_dir().glob("SmolLM2*"))


def test_first_load_builds_the_entry_with_one_parse(built: dict[str, Any], gguf_path: Path) -> None:
    entry = built["entry"]
    assert built["parses"] == 1
    assert entry.parent == llm_cache.llm_dir()
    assert entry.name.startswith(f"SmolLM2-135M-Instruct.Q4_1-{llm_cache.gguf_sha256(gguf_path)[:16]}-transformers")
    assert entry.name.endswith(f"-c{llm_cache.CONVERSION}")
    assert {"model.safetensors", "config.json", "tokenizer.json", llm_cache.MANIFEST} <= {p.name for p in entry.iterdir()}
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    assert not list(entry.parent.glob(".tmp-*"))


def test_entry_loads_without_converting_and_gives_the_gguf_logits(
        built: dict[str, Any], reference: dict[str, Any], gguf_path: Path, spec: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_cache, "convert", lambda *a: pytest.fail("the entry was converted again"))
    parses = _parses(monkeypatch)
    tokenizer = _from_pretrained(AutoTokenizer, spec)  # the registry's path, as the stages load
    model = _from_pretrained(AutoModelForCausalLM, spec, dtype=torch.float32)
    assert not parses
    assert Path(model.name_or_path) == built["entry"]
    ids, logits = _logits(tokenizer, model)
    assert ids == reference["ids"]
    assert torch.equal(logits, reference["logits"])
    state = model.state_dict()
    assert state.keys() == reference["state"].keys()
    for k, v in reference["state"].items():
        assert state[k].dtype == v.dtype == torch.float32 and torch.equal(state[k], v), k
    assert tokenizer("", add_special_tokens=True).input_ids == reference["special"]
    assert tokenizer.eos_token_id == reference["eos"]
    assert tokenizer.get_vocab() == built["tokenizer"].get_vocab()


@pytest.mark.parametrize("damage", ["missing config", "truncated weights", "garbled config", "no manifest"])
def test_damaged_entry_is_rebuilt(damage: str, built: dict[str, Any], fake_convert: list[Path],
                                  gguf_path: Path) -> None:
    entry = built["entry"]
    if damage == "missing config":
        (entry / "config.json").unlink()
    elif damage == "truncated weights":
        _replace(entry / "model.safetensors", (entry / "model.safetensors").read_bytes()[:1000])
    elif damage == "garbled config":  # same size: passes the cheap check, fails to load
        _replace(entry / "config.json", b"{" * (entry / "config.json").stat().st_size)
    else:
        (entry / llm_cache.MANIFEST).unlink()
    model = llm_cache.load(AutoModelForCausalLM, gguf_path, dtype=torch.float32)
    assert len(fake_convert) == 1
    assert llm_cache.check_entry(entry, json.loads((entry / llm_cache.MANIFEST).read_text())["identity"]) is None
    assert model.config.vocab_size == 49152
    assert not list(entry.parent.glob(".tmp-*")) and not list(entry.parent.glob(".trash-*"))


@pytest.mark.parametrize("theirs_whole", [True, False])
def test_entry_published_by_another_process_during_the_build(
        theirs_whole: bool, built: dict[str, Any], fake_convert: list[Path], gguf_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process renames its entry into place between our conversion and our rename: ours is
    dropped and theirs used when it is whole; a damaged one is replaced by ours."""
    entry = built["entry"]
    shutil.rmtree(entry)
    convert = llm_cache.convert

    def convert_then_other_publishes(gguf: Path, out: Path) -> None:
        convert(gguf, out)
        theirs = entry.with_name(".other")
        shutil.copytree(out, theirs, copy_function=os.link)
        if theirs_whole:
            shutil.copy(out.parent / ".manifest-of-theirs", theirs / llm_cache.MANIFEST)
        os.rename(theirs, entry)
    identity = llm_cache._identity(gguf_path, llm_cache.gguf_sha256(gguf_path))
    files = {p.name: p.stat().st_size for p in built["pristine"].iterdir()}
    (entry.parent / ".manifest-of-theirs").write_text(json.dumps({"identity": identity, "files": files}))
    monkeypatch.setattr(llm_cache, "convert", convert_then_other_publishes)
    assert llm_cache.ensure_entry(gguf_path) == entry
    (entry.parent / ".manifest-of-theirs").unlink()
    assert llm_cache.check_entry(entry, identity) is None
    assert not list(entry.parent.glob(".tmp-*")) and not list(entry.parent.glob(".trash-*"))
    assert llm_cache.load(AutoTokenizer, gguf_path).eos_token_id == built["tokenizer"].eos_token_id


def test_file_hash_is_remembered_until_the_file_changes(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights")
    assert llm_cache.gguf_sha256(f) == hashlib.sha256(b"weights").hexdigest()
    sidecar, = (llm_cache.llm_dir() / ".sha256").glob("model.gguf.*.json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(record | {"sha256": "remembered"}))
    assert llm_cache.gguf_sha256(f) == "remembered"  # not read again
    f.write_bytes(b"other weights")
    assert llm_cache.gguf_sha256(f) == hashlib.sha256(b"other weights").hexdigest()


def test_cache_folder_and_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GEMEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert llm_cache.cache_root() == Path.home() / ".cache" / "gemel"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llm_cache.cache_root() == tmp_path / "xdg" / "gemel"
    monkeypatch.setenv("GEMEL_CACHE", str(tmp_path / "mine"))
    assert llm_cache.cache_root() == tmp_path / "mine"
    for value, on in [("0", False), ("off", False), ("1", True)]:
        monkeypatch.setenv("GEMEL_LLM_CACHE", value)
        assert llm_cache.enabled() is on
    monkeypatch.delenv("GEMEL_LLM_CACHE")
    assert llm_cache.enabled()


def test_unwritable_cache_loads_the_gguf_directly(tmp_path: Path, gguf_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("GEMEL_CACHE", str(blocker))
    calls: list[tuple[Any, dict[str, Any]]] = []

    class Recorder:
        @classmethod
        def from_pretrained(cls, where: Any, **kw: Any) -> str:
            calls.append((where, kw))
            return "model"
    assert llm_cache.load(Recorder, gguf_path, dtype=torch.float32) == "model"
    assert calls == [(gguf_path.parent, {"gguf_file": gguf_path.name, "dtype": torch.float32})]
    assert "cannot use the cache" in capsys.readouterr().err
