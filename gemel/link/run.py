"""The run record: `{train.out}/{llm}/run.json`, written by the train stage beside the mapper, says
what the run was built from, so that `gemel link` and `Linker.from_run` can link new inputs with
nothing but the run folder: the LLM, the image encoder (with a hash of its weights), the prompt
settings, how demonstrations and candidates were made, every artifact the run reads (the shared
trie among them, with sha256 hashes) and the library versions. How the run decodes is the decode
stage's record (decode_report.json), so that changing decode settings never retrains.

Paths of data artifacts are as params.yaml gave them: relative ones are resolved against the
project root, the folder that holds `{train.out}` (found from the run folder's own path), so a run
links from any working directory. The run's own file (mapper.safetensors) is read from the run
folder itself.

`check_run` lists what no longer matches: the image encoder's weights or the features table's
encoder, the KB, the trie or the mapper (these change what a link means: linking refuses). Other
artifacts that changed since training are `drift`: worth a note, not a refusal.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gemel.atomic import write_text_atomic
from gemel.config import CandidatesParams, FeaturesParams, ModelParams, RetrieveParams, section
from gemel.data.tables import read_json
from gemel.errors import GemelError
from gemel.hashing import file_sha256
from gemel.paths import MAPPER, RUN_RECORD, Artifacts
from gemel.stack import versions

FORMAT = "gemel-run/1"
# Linking refuses when one of these differs from the run's record; the others only drift.
STRICT = ("kb", "trie", "mapper")


class RunError(GemelError, ValueError):
    """A run folder that cannot be linked with: no run.json, or artifacts that no longer match it."""


def artifact_paths(params: dict[str, Any]) -> dict[str, str]:
    """The shared artifacts a run reads, as params gives their paths (gemel.paths)."""
    a = Artifacts.of(params)
    return {"mentions": str(a.mentions), "kb": str(a.kb), "features": str(a.features), "demos": str(a.demos),
            "pool": str(a.pool), "candidates": str(a.candidates), "candidates_report": str(a.candidates_report),
            "kb_embeddings": str(a.kb_embeddings), "trie": str(a.trie)}


RUN_FILES = {"mapper": MAPPER}


def _entry(path: Path) -> dict[str, Any]:
    # The candidates report is hashed as a file like the rest: its cost is in cost.json, so equal
    # candidates give equal bytes, and `drift` compares the same hash.
    return {"sha256": file_sha256(path) if path.is_file() else None}


def features_encoder(path: str | Path) -> str | None:
    """The encoder name a features table was written with (its schema metadata), None if unreadable."""
    import pyarrow.parquet as pq

    from gemel.vision.features import ENCODER_KEY

    try:
        return (pq.read_schema(path).metadata or {}).get(ENCODER_KEY, b"").decode() or None
    except (OSError, ValueError):
        return None


def write_run_record(params: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write {out_dir}/run.json for the run these (effective) params trained; returns the record.
    Call it after the mapper is saved: its hash is part of the record."""
    from gemel.vision.encoders import weights_fingerprint

    out_dir = Path(out_dir)
    model, llm = params["model"], params["model"]["llm"]
    fp = section(params, "features", FeaturesParams)
    retrieve = params["retrieve"]
    paths = artifact_paths(params)
    report_path = Path(paths["candidates_report"])
    report = read_json(report_path, "candidates") if report_path.is_file() else {}
    weights, hidden = report.get("weights"), report.get("hidden")
    cp = section(params, "candidates", CandidatesParams)
    record = {
        "format": FORMAT,
        "llm": {"name": llm, "spec": params["llms"][llm]},
        "image_encoder": {**weights_fingerprint(fp), "features_table": features_encoder(paths["features"])},
        "features": {"missing_image": fp.missing_image, "batch_size": fp.batch_size},
        # A key params leave out has its section's default (the dataclass's, as params.yaml's).
        "model": {"llm": llm, **{k: model.get(k, getattr(ModelParams, k)) for k in ("prefix_tokens", "use_image",
                                                                                     "num_demos")}},
        "retrieval": {"method": retrieve["method"], "encoder": retrieve.get("encoder"),
                      "encoder_spec": params.get("text_encoders", {}).get(retrieve.get("encoder")),
                      **{k: retrieve.get(k, getattr(RetrieveParams, k)) for k in ("query", "top_k", "batch_size",
                                                                                   "seed")}},
        # What `gemel link` rebuilds the candidate generator and ranker of new inputs from.
        "candidates": {**{k: v for k, v in dataclasses.asdict(cp).items() if k != "out"},
                       "encoder_spec": params.get("text_encoders", {}).get(cp.encoder), "weights": weights,
                       "hidden": hidden},
        "train": dict(params["train"]),
        "train_out": params["train"]["out"],
        "artifacts": {name: {"path": path, **_entry(Path(path))} for name, path in paths.items()},
        "run_files": {name: {"path": file, **_entry(out_dir / file)} for name, file in RUN_FILES.items()},
        "versions": versions(),
    }
    write_text_atomic(json.dumps(record, indent=2) + "\n", out_dir / RUN_RECORD)
    return record


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise RunError(f"{path}: no run record (a run trained before run.json existed: rerun its train stage)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    if record.get("format") != FORMAT:
        raise RunError(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    return record


def project_root(record: dict[str, Any], run_dir: str | Path) -> Path | None:
    """The folder the run's relative paths are relative to: the one holding {train.out}/{llm},
    found from the run folder's path; None when train.out is absolute or the folder was moved."""
    out = Path(record["train_out"])
    if out.is_absolute():
        return None
    run = Path(run_dir).resolve()
    depth = len(out.parts) + 1
    if len(run.parents) < depth:
        return None
    root = run.parents[depth - 1]
    return root if (root / out / record["llm"]["name"]).resolve() == run else None


def resolve(record: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    """Every artifact's path on this machine: data artifacts under the project root (or as
    recorded), run files in the run folder."""
    root = project_root(record, run_dir)
    out = {}
    for name, entry in record["artifacts"].items():
        p = Path(entry["path"])
        out[name] = p if p.is_absolute() or root is None else root / p
    out.update({name: Path(run_dir) / entry["path"] for name, entry in record["run_files"].items()})
    return out


def _short(h: str | None) -> str:
    return h[:12] if h else "absent"


def check_run(record: dict[str, Any], run_dir: str | Path) -> list[str]:
    """What no longer matches the record, one sentence each (empty: the run can link): the image
    encoder's weights and the features table's encoder, and the KB, trie and mapper hashes, all
    recomputed now."""
    from gemel.vision.encoders import EncoderError, weights_fingerprint

    diffs = []
    enc = record["image_encoder"]
    fp = FeaturesParams(**{k: enc[k] for k in ("encoder", "open_clip_model", "open_clip_pretrained",
                                               "open_clip_output") if k in enc})
    try:
        now = weights_fingerprint(fp)
    except (EncoderError, OSError) as e:
        diffs.append(f"image encoder {enc['encoder']}: its weights cannot be found now ({e})")
    else:
        if (now["weights"], now["weights_sha256"]) != (enc["weights"], enc["weights_sha256"]):
            diffs.append(f"image encoder {enc['encoder']}: weights {now['weights']} sha256 "
                         f"{_short(now['weights_sha256'])} now, {enc['weights']} sha256 "
                         f"{_short(enc['weights_sha256'])} "
                         "when the run was trained")
    paths = resolve(record, run_dir)
    table = features_encoder(paths["features"]) if paths["features"].is_file() else None
    if enc.get("features_table") and table != enc["features_table"]:
        diffs.append(f"features table {paths['features']}: encoder {table or 'absent'} now, "
                     f"{enc['features_table']} when the run was trained")
    for name in STRICT:
        entry = record["run_files"].get(name) or record["artifacts"].get(name)
        path = paths[name]
        now_hash = file_sha256(path) if path.is_file() else None
        if now_hash != entry["sha256"]:
            state = f"sha256 {_short(now_hash)} now" if now_hash else "missing now"
            diffs.append(f"{name} {path}: {state}, sha256 {_short(entry['sha256'])} when the run was trained")
    return diffs


def drift(record: dict[str, Any], run_dir: str | Path, names: tuple[str, ...] | None = None) -> list[str]:
    """Notes on what changed without changing what a link means: other artifacts' hashes (those
    in `names`, default all) and library versions."""
    notes = []
    paths = resolve(record, run_dir)
    for name, entry in record["artifacts"].items():
        if name in STRICT or (names is not None and name not in names) or entry["sha256"] is None:
            continue
        now = file_sha256(paths[name]) if paths[name].is_file() else None
        if now != entry["sha256"]:
            notes.append(f"{name} {paths[name]} changed since the run was trained (sha256 {_short(now)}, "
                         f"was {_short(entry['sha256'])}): linking uses it as it is now")
    now_versions = versions()
    changed = [f"{k} {v} (trained with {record['versions'].get(k)})" for k, v in now_versions.items()
               if record["versions"].get(k) != v]
    if changed:
        notes.append("library versions differ from training: " + ", ".join(changed))
    return notes


def run_params(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the params sections gemel.link.linker.build_linker reads."""
    llm = record["llm"]["name"]
    retrieval = record["retrieval"]
    return {"model": record["model"], "llms": {llm: record["llm"]["spec"]},
            "retrieve": {"method": retrieval["method"], "top_k": retrieval["top_k"]},
            "train": record["train"],
            "text_encoders": {retrieval["encoder"]: retrieval["encoder_spec"]} if retrieval.get("encoder_spec") else {}}
