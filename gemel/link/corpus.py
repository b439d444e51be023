"""A large JSON-lines file linked in shards: `gemel link --shard I/N` on each of N contiguous line
ranges, then the shards' outputs concatenated in order. The Snakemake target `link_corpus`
(workflow/rules/link.smk) runs these commands as jobs, on local cores or through the SLURM profile:

    gemel corpus plan RUN --input corpus.jsonl --shards 8 --dir linked.jsonl.shards   -> plan.json
    gemel corpus shard linked.jsonl.shards 3      gemel link of shard 3 (resumable), then its .done
    gemel corpus status linked.jsonl.shards [--watch 30]     lines linked per shard, errors
    gemel corpus merge linked.jsonl.shards --output linked.jsonl --report linked.report.json

Byte-identical to one `gemel link` over the whole file, because nothing in a record depends on
the shard: a shard is a range of whole batches (gemel link's batches are blocks of `batch size`
lines counted from the top of the file), a line keeps its line number (its default id, and the
"line N:" of its error), relative image paths resolve from the input file's folder, and a shard
reads the ids of the lines before its range (a repeated id is an error in any shard).

A shard's output lives in the plan's folder under a name keyed by the plan (run, input content,
shards, top, on_error): a rerun with the same plan resumes it, a changed plan starts afresh.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PLAN = "plan.json"
LISTED_ERRORS = 100  # per shard, in the report (all are in the output)


def count_lines(path: str | Path) -> int:
    """Lines of a file as `for line in f` numbers them (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def shard_ranges(lines: int, shards: int, batch: int) -> list[tuple[int, int]]:
    """(first line, last line), 1-based and inclusive, of each of `shards` contiguous ranges of
    whole batches of `batch` lines, as even as whole batches allow; an empty range is (k+1, k)."""
    if shards < 1 or batch < 1:
        raise ValueError(f"shards and batch must be at least 1, not {shards} and {batch}")
    blocks = -(-lines // batch)
    q, r = divmod(blocks, shards)
    out, start = [], 0
    for k in range(shards):
        end = start + q + (k < r)
        out.append((start * batch + 1, min(end * batch, lines)))
        start = end
    return out


def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def done_marker(folder: str | Path, i: int, n: int) -> Path:
    """The file a finished shard writes (the Snakemake job's output): its counts."""
    return Path(folder) / f"{shard_name(i, n)}.done"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def make_plan(run: str, input: str, shards: int, top: int = 5, on_error: str = "skip") -> dict[str, Any]:
    """The shards of `input` for `run`: their line ranges and inputs (non-blank lines), and the key
    that names their outputs. Paths are kept as given: the jobs run in the same folder, and gemel
    link names relative image paths from the input path as given."""
    from gemel.link.predict import decode_settings
    from gemel.paths import RUN_RECORD

    src, record = Path(input), Path(run) / RUN_RECORD
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such input file")
    if not record.is_file():
        raise FileNotFoundError(f"{record}: no such file (is {run} a trained run's folder?)")
    batch = decode_settings(Path(run))[0].batch_size  # Linker.from_run's, so gemel link's batches
    what = {"run": str(Path(run).resolve()), "run_record": sha256(record), "input": str(src.resolve()),
            "input_sha256": sha256(src), "shards": shards, "batch_size": batch, "top": top, "on_error": on_error}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    ranges = shard_ranges(count_lines(src), shards, batch)
    inputs = [0] * shards
    with open(src, "rb") as f:
        k = 0
        for lineno, line in enumerate(f, start=1):
            while lineno > ranges[k][1]:
                k += 1
            inputs[k] += bool(line.strip())
    return {"run": run, "input": input, **{k: what[k] for k in ("input_sha256", "shards", "batch_size", "top",
                                                                  "on_error")},
            "key": key, "lines": ranges[-1][1],
            "shard": [{"shard": i, "first_line": a, "last_line": b, "inputs": inputs[i - 1],
                       "output": f"{shard_name(i, shards)}.{key}.jsonl"}
                      for i, (a, b) in enumerate(ranges, start=1)]}


def read_plan(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (make it with `gemel corpus plan`)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_plan(folder: str | Path, plan: dict[str, Any]) -> list[Path]:
    """plan.json in `folder`; removes the outputs of other plans (shards of another input, run or
    count) there, keeping this plan's (resumed). Returns the removed files."""
    from gemel.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keep = {s["output"] for s in plan["shard"]}
    stale = [p for p in folder.glob("shard-*.jsonl") if p.name not in keep]
    for p in stale:
        p.unlink()
    with atomic_path(folder / PLAN) as tmp:
        tmp.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return stale


def shard_counts(path: Path, listed: int = LISTED_ERRORS) -> dict[str, Any]:
    """Records in a shard's output so far: how many, how many errors, the first `listed` errors."""
    out: dict[str, Any] = {"records": 0, "errors": 0, "listed_errors": []}
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # being written
            out["records"] += 1
            if b'"error"' in line and "error" in (r := json.loads(line)):
                out["errors"] += 1
                if len(out["listed_errors"]) < listed:
                    out["listed_errors"].append({"id": r["id"], "error": r["error"]})
    return out


def status(folder: str | Path) -> list[dict[str, Any]]:
    """Per shard: its lines and inputs, records and errors written so far, and its state."""
    folder = Path(folder)
    plan = read_plan(folder)
    rows = []
    for s in plan["shard"]:
        path = folder / s["output"]
        c = shard_counts(path, listed=0)
        finished = done_marker(folder, s["shard"], plan["shards"]).exists() and c["records"] == s["inputs"]
        state = ("done" if finished else "complete" if c["records"] == s["inputs"] else
                 "started" if path.exists() else "waiting")
        rows.append({"shard": s["shard"], "lines": f"{s['first_line']}-{s['last_line']}", "inputs": s["inputs"],
                     "written": c["records"], "errors": c["errors"], "state": state})
    return rows


def status_table(folder: str | Path) -> str:
    rows = status(folder)
    total = {"inputs": sum(r["inputs"] for r in rows), "written": sum(r["written"] for r in rows),
             "errors": sum(r["errors"] for r in rows)}
    lines = [f"{'shard':>5}  {'lines':>17}  {'written':>19}  {'%':>5}  {'errors':>7}  state"]
    for r in [*rows, {"shard": "all", "lines": "", **total,
                      "state": f"{sum(r['state'] == 'done' for r in rows)} of {len(rows)} done"}]:
        pct = 100 * r["written"] / r["inputs"] if r["inputs"] else 100.0
        lines.append(f"{r['shard']:>5}  {r['lines']:>17}  {str(r['written']) + ' / ' + str(r['inputs']):>19}  "
                     f"{pct:5.1f}  {r['errors']:>7}  {r['state']}")
    return "\n".join(lines)


class CorpusError(Exception):
    """A shard missing or incomplete at merge, a plan that no longer matches its input."""


def merge(folder: str | Path, output: str | Path, report: str | Path | None = None) -> dict[str, Any]:
    """The shards' outputs concatenated in shard order into `output` (atomically), and the report:
    per shard its lines, inputs, records, errors and the first errors. Refuses (CorpusError) while
    a shard is incomplete."""
    from gemel.atomic import atomic_path

    folder = Path(folder)
    plan = read_plan(folder)
    shards = []
    for s in plan["shard"]:
        c = shard_counts(folder / s["output"])
        if c["records"] != s["inputs"]:
            raise CorpusError(f"shard {s['shard']} of {plan['shards']} ({folder / s['output']}) has {c['records']} "
                              f"of its {s['inputs']} records: link it (gemel corpus shard {folder} {s['shard']})")
        shards.append({"shard": s["shard"], "first_line": s["first_line"], "last_line": s["last_line"],
                       "inputs": s["inputs"], "linked": c["records"] - c["errors"], "errors": c["errors"],
                       "first_errors": c["listed_errors"]})
    with atomic_path(output) as tmp, open(tmp, "wb") as out:
        for s in plan["shard"]:
            with open(folder / s["output"], "rb") as f:
                while chunk := f.read(1 << 24):
                    out.write(chunk)
    result = {"run": plan["run"], "input": plan["input"], "output": str(output), "shards": plan["shards"],
              "inputs": sum(s["inputs"] for s in shards), "linked": sum(s["linked"] for s in shards),
              "errors": sum(s["errors"] for s in shards), "shard": shards}
    if report is not None:
        with atomic_path(report) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def shard_argv(folder: str | Path, i: int) -> list[str]:
    """The `gemel link` arguments of shard `i` of the plan in `folder` (it resumes the shard's output)."""
    folder = Path(folder)
    plan = read_plan(folder)
    if not 1 <= i <= plan["shards"]:
        raise CorpusError(f"no shard {i}: the plan in {folder} has {plan['shards']}")
    if sha256(plan["input"]) != plan["input_sha256"]:
        raise CorpusError(f"{plan['input']} changed since {folder / PLAN} was made: make the plan again")
    out = folder / plan["shard"][i - 1]["output"]
    return ["link", plan["run"], "--input", plan["input"], "--output", str(out), "--shard", f"{i}/{plan['shards']}",
            "--on-error", plan["on_error"], "--top", str(plan["top"])]


def finish_shard(folder: str | Path, i: int) -> dict[str, Any]:
    """After gemel link of shard `i`: checks it has a record per input, writes its .done (the
    Snakemake job's output) with its counts, and returns them."""
    from gemel.atomic import atomic_path

    folder = Path(folder)
    plan = read_plan(folder)
    s = plan["shard"][i - 1]
    out = folder / s["output"]
    c = shard_counts(out, listed=0)
    if c["records"] != s["inputs"]:
        raise CorpusError(f"{out}: {c['records']} records for the shard's {s['inputs']} inputs")
    done = {**s, "linked": c["records"] - c["errors"], "errors": c["errors"]}
    with atomic_path(done_marker(folder, i, plan["shards"])) as tmp:
        Path(tmp).write_text(json.dumps(done) + "\n", encoding="utf-8")
    return done
