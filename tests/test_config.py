"""The typed config is the single source of params: the schema and the dataclasses of gemel.config
agree key by key (names, allowed values, defaults against params.yaml), and the schema ships with
the package, so a non-editable install validates params too."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from gemel import config
from gemel.config import (
    RETRIEVAL_METHODS,
    ConfigError,
    RetrieveParams,
    load_params,
    load_schema,
    prepare_params,
    section,
)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"sample": config.SampleParams, "features": config.FeaturesParams, "retrieve": config.RetrieveParams,
            "candidates": config.CandidatesParams, "trie": config.TrieParams, "model": config.ModelParams,
            "train": config.TrainParams, "decode": config.DecodeParams, "evaluate": config.EvaluateParams,
            "summarize": config.SummarizeParams}


def schema_of(name: str) -> dict:
    return load_schema()["properties"][name]


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_schema_key_is_a_typed_field_and_back(name):
    fields = {f.name for f in dataclasses.fields(SECTIONS[name])}
    assert fields == set(schema_of(name)["properties"]), name


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_literal_choices_are_the_schema_enums(name):
    hints = typing.get_type_hints(SECTIONS[name])
    props = schema_of(name)["properties"]
    for field, hint in hints.items():
        enum = props[field].get("enum")
        if typing.get_origin(hint) is typing.Literal:
            assert enum is not None and set(typing.get_args(hint)) == set(enum), f"{name}.{field}"
        else:
            assert enum is None, f"{name}.{field}: the schema restricts it to {enum}; type it as a Literal"


def test_the_schema_lists_the_retrieval_methods_of_the_code():
    """The schema's YAML cannot import RETRIEVAL_METHODS: its enum is a copy, kept equal here."""
    assert schema_of("retrieve")["properties"]["method"]["enum"] == list(RETRIEVAL_METHODS)
    assert typing.get_args(typing.get_type_hints(RetrieveParams)["method"]) == RETRIEVAL_METHODS


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_params_yaml_sets_the_class_defaults(name):
    """params.yaml is the defaults, commented: a section read through its class equals the class's
    own defaults, field by field (one place to change a default, and a test if the other drifts)."""
    params = load_params(ROOT / "params.yaml")
    got, want = section(params, name, SECTIONS[name]), SECTIONS[name]()
    for f in dataclasses.fields(want):
        value = getattr(got, f.name)
        value = tuple(value) if isinstance(value, list) else value
        assert value == getattr(want, f.name), f"{name}.{f.name}: params.yaml {value!r}, class {getattr(want, f.name)!r}"


def test_prepare_params_merge_the_preset():
    params = load_params(ROOT / "params.yaml", ["dataset=richpedia"])
    p = prepare_params(params)
    assert (p.format, p.input, p.invalid_records, p.out) == ("melbench", "data/raw/richpedia-mel", "skip", "data/prepared")
    preset_keys = set(load_schema()["properties"]["datasets"]["additionalProperties"]["properties"]) - {"source"}
    prepare_keys = set(schema_of("prepare")["properties"])
    assert preset_keys | prepare_keys | {"dataset"} == {f.name for f in dataclasses.fields(config.PrepareParams)}


@pytest.mark.parametrize("override, key", [("train.precision=fp16", "precision"), ("decode.candidates=all", "candidates"),
                                           ("trie.outdir=x", "outdir")])
def test_a_value_the_schema_forbids_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_params(ROOT / "params.yaml", [override])


def test_the_schema_ships_inside_a_non_editable_install(tmp_path):
    """Build the wheel, install it into a bare folder, and load params from there."""
    src = tmp_path / "src"  # a copy: setuptools builds in the source tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("gemel", "stages"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    *map(str, wheels.glob("gemel-*.whl"))], check=True, capture_output=True, timeout=300)
    code = ("import sys; from gemel import config; assert config.SCHEMA_PATH.is_file(), config.SCHEMA_PATH; "
            "assert str(config.SCHEMA_PATH).startswith(sys.argv[1]), config.SCHEMA_PATH; "
            f"config.load_params({str(ROOT / 'params.yaml')!r}); print('ok')")
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert yaml.safe_load(config.SCHEMA_PATH.read_text())["type"] == "object"
