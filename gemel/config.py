"""params.yaml: read once, validate against the one schema, hand each stage its typed section.

The schema (gemel/schema/params.schema.yaml, shipped inside the package) checks keys, types and
allowed values once, before anything runs; the dataclasses below give each section its typed view
and the defaults. tests/test_config.py checks that the two agree key by key (names, `Literal`
choices against the schema's enums, defaults against params.yaml), so code need not re-check a
value the schema has already allowed."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import jsonschema
import yaml

from gemel.errors import GemelError

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "params.schema.yaml"


class ConfigError(GemelError, ValueError):
    """params.yaml is unreadable or does not match the schema; the message names the key."""


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def validate(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Raise ConfigError naming the offending key path for the first schema violation."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    err = errors[0]
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        known = sorted(err.schema.get("properties", {}))
        raise ConfigError(f"{source}: {err.message} at '{where}' (known keys: {', '.join(known)})")
    raise ConfigError(f"{source}: key '{where}': {err.message}")


def apply_override(params: dict[str, Any], assignment: str) -> None:
    """`section.key=value` (value parsed as YAML), as `dvc exp run -S` and Snakemake rules pass."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. model.use_image=false")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section of params")
        node = node[part]
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string
    node[leaf] = value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read, apply `section.key=value` overrides, validate: an unknown key or wrong type raises."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for assignment in overrides:
        apply_override(params, assignment)
    validate(params, str(path) + (" with --set " + " ".join(overrides) if overrides else ""))
    return params


T = TypeVar("T")


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """The typed view of one params section; fields the section omits take the class defaults."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in params[name].items() if k in names})


@dataclasses.dataclass(frozen=True)
class SampleParams:
    out: str = "data/sample"
    seed: int = 0
    train_per_entity: int = 4
    dev_per_entity: int = 1
    test_per_entity: int = 2
    image_size: int = 96


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    format: str
    dataset: str
    input: str
    out: str = "data/prepared"
    kb: str | None = None
    images: str | None = None
    split_file: str | None = None
    dev_fraction: float = 0.1
    seed: int = 0
    invalid_records: str = "error"
    split_key: str | None = None  # the dataset's entry in a split file nesting several datasets
    limit: dict[str, int | None] | None = None  # split -> first N mentions (a subset run)
    distractors: int = 0  # KB entities added with names drawn from the KB's words (a scale run)


def prepare_params(params: dict[str, Any]) -> PrepareParams:
    """The `prepare` section with the chosen preset (`dataset`, a name in `datasets`) merged in:
    the preset says where the files are and their layout, `prepare` how to split and subset."""
    name = params.get("dataset", "sample")
    presets = params.get("datasets") or {}
    if name not in presets:
        raise ConfigError(f"dataset: '{name}' is not a preset in datasets (known: {', '.join(presets) or 'none'})")
    preset = {k: v for k, v in presets[name].items() if k != "source"}
    return section({"prepare": {**params["prepare"], **preset, "dataset": name}}, "prepare", PrepareParams)


def preset_source(params: dict[str, Any]) -> str | None:
    """Where the chosen preset's public copy lives (for the missing-file message)."""
    return (params.get("datasets") or {}).get(params.get("dataset", "sample"), {}).get("source")


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    encoder: Literal["efficientnet_lite0", "open_clip"] = "efficientnet_lite0"
    open_clip_model: str = "ViT-L-14"
    open_clip_pretrained: str | None = "openai"
    open_clip_output: Literal["pooled", "projected"] = "pooled"
    batch_size: int = 32
    missing_image: Literal["zero", "drop", "error"] = "zero"
    out: str = "data/features"


# How demonstrations are retrieved (retrieve.method): gemel.search.retrieval implements each, the Snakemake
# rules sweep them, and the schema's enum lists the same (tests/test_config.py checks it).
RetrievalMethod = Literal["simcse", "random", "bm25"]
RETRIEVAL_METHODS: tuple[str, ...] = typing.get_args(RetrievalMethod)


@dataclasses.dataclass(frozen=True)
class RetrieveParams:
    method: RetrievalMethod = "simcse"
    encoder: str = "all-MiniLM-L6-v2"
    query: Literal["mention", "mention_text"] = "mention"
    top_k: int = 16
    batch_size: int = 64
    seed: int = 0
    out: str = "data/demos"


@dataclasses.dataclass(frozen=True)
class CandidatesParams:
    top_k: int = 64
    pool: int = 100
    fit_limit: int | None = None
    ranker_hidden: int = 8  # tanh units beside the ranker's linear part (0: linear)
    fold: bool = True  # accent and compatibility folding of every name and alias key; false: case only
    fuzzy: int = 10  # names the character trigram index adds per mention (0: no char index, char_sim 0)
    acronyms: int = 10  # names whose initials a mention abbreviates ("NYC") added per mention (0: off, acronym 0)
    # Features of the text against each candidate's KB description (0 where there is none):
    overlap: bool = True  # idf-weighted word overlap (desc_overlap)
    years: bool = True  # the text's years before / within / after the years the description names
    pronouns: bool = True  # he/she in the text against the sex the description states
    # The sentence encoder's nearest entities to the mention in context (0: off), and its cosine as a feature:
    dense: int = 20
    dense_sim: bool = True
    encoder: str = "all-MiniLM-L6-v2"  # a name in text_encoders, or a local folder
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the encoder's; auto: bf16 where native (gemel.search.dense)
    out: str = "data/candidates"


@dataclasses.dataclass(frozen=True)
class TrieParams:
    out: str = "data/tries"


@dataclasses.dataclass(frozen=True)
class ModelParams:
    llm: str = "smollm2-135m"
    prefix_tokens: int = 4
    use_image: bool = True
    num_demos: int = 0


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = 5
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    batch_size: int = 4
    eval_every: int = 50
    dev_limit: int | None = None
    dev_candidates: Literal["none", "constrained"] = "none"  # how the dev evaluation links (not decode's settings)
    dev_num_beams: int = 5
    dev_num_candidates: int = 16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    demo_image_grad: bool = True
    seed: int = 0
    out: str = "results"


@dataclasses.dataclass(frozen=True)
class DecodeParams:
    num_beams: int = 5
    max_new_tokens: int = 32
    length_penalty: float = 1.0
    batch_size: int = 8
    split: Literal["train", "dev", "test"] = "test"
    # none: the paper's beam search over every KB name | constrained: the candidates stage's
    candidates: Literal["none", "constrained"] = "none"
    num_candidates: int = 16  # constrained: the first N of each mention's candidates (<= candidates.top_k)
    fusion: Literal["learned", "weight"] = "learned"  # how LLM score and prior combine (gemel.link.fusion)
    fusion_weight: float | str = "auto"  # weight: score = LLM + w * log prior; auto: the best of fusion_grid on dev
    fusion_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    describe: int = 8  # learned fusion: the first N candidates whose descriptions the LLM reads (generation.describe)
    ranker_sure: float | None = 0.9  # a mention whose first candidate has at least this prior is the ranker's alone


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    hits_at: tuple[int, ...] = (1, 3, 5)


@dataclasses.dataclass(frozen=True)
class SummarizeParams:
    kind: Literal["scales", "ablations", "datasets", "seeds"] = "scales"
    metric: str = "accuracy"
