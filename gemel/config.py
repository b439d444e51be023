"""params.yaml: read once, validate against the one schema, hand each stage its typed section."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"


class ConfigError(ValueError):
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


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    validate(params, str(path))
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
