"""Determinism on one machine: the same params give byte-identical outputs, from `sample` to
`evaluate`. A small pipeline runs twice, each copy in its own folder with relative paths (as two
clones of the project would) and in its own process with its own PYTHONHASHSEED (so that no output
may hang on the order of a set or dict of strings), and every file the two copies wrote is compared
byte for byte. The only exception: reports may record wall times, and those keys alone are left out
of their comparison. Each copy runs every stage's CLI main in one process, one after the other, as
DVC would run them but without importing torch nine times (tests/test_commands.py runs them
through DVC)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import TEST_SEED

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("sample", "prepare", "features", "retrieve", "candidates", "trie", "train", "decode", "evaluate")
# 12 train mentions (3 optimizer steps of 4), 4 dev, 6 test decoded with 3 beams; two demonstrations
# per prompt, so the retrieved demonstrations reach the predictions.
SETTINGS = ["sample.train_per_entity=1", "sample.dev_per_entity=1", "sample.test_per_entity=1", "sample.image_size=32",
            "prepare.limit.train=12", "prepare.limit.dev=4", "prepare.limit.test=6",
            "retrieve.top_k=4", "candidates.top_k=8", "model.num_demos=2",
            "train.epochs=1", "train.batch_size=4", "train.dev_limit=2", "train.eval_every=1000", f"train.seed={TEST_SEED}",
            "decode.num_beams=3", "decode.batch_size=3"]
# Wall-clock and memory measurements (`cost`: every stage's time and peak memory): the only values
# that may differ, and only in these reports (the trie's is tries/<llm>.json).
TIMINGS = {"seconds", "mentions_per_s", "examples_per_s", "train_s", "load_s", "build_seconds", "encoded_per_s",
           "cost"}
REPORTS = {"train_report.json", "decode_report.json", "report.json", "smollm2-135m.json", "cost.json"}


def overrides() -> list[str]:
    """Every folder relative to the copy's own root (the stage runs there), as in a clone."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    folders = ["sample.out=sample", "datasets.sample.input=sample", "datasets.sample.kb=sample/kb.json",
               "datasets.sample.images=sample/images", "prepare.out=prepared", "features.out=features",
               "retrieve.out=demos", "candidates.out=candidates", "train.out=results"]
    if "trie" in params:
        folders.append("trie.out=tries")
    return ["dataset=sample", *folders, *SETTINGS]


# One process per copy runs the stages in order through the CLI's own runner; any failure stops it.
DRIVER = """import importlib, sys
from stages import _cli
for stage in sys.argv[1].split(","):
    code = _cli.run(stage, importlib.import_module(f"stages.{stage}").main, sys.argv[2:])
    if code:
        sys.exit(f"{stage} exited {code}")
"""


def run_both(copies: list[Path]) -> None:
    """Every stage in both copies at once (a process each: both cores, half the wait)."""
    argv = [sys.executable, "-c", DRIVER, ",".join(STAGES), "--params", str(ROOT / "params.yaml"),
            *(a for s in overrides() for a in ("--set", s))]
    procs = []
    for hash_seed, copy in enumerate(copies, start=1):
        # One thread each: two processes of two threads on two cores wait on each other (4x slower).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PYTHONHASHSEED": str(hash_seed), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(argv, cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    for copy, proc in zip(copies, procs, strict=True):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"the pipeline failed in {copy}:\n{err[-3000:]}"


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def test_two_runs_give_identical_outputs(tmp_path: Path) -> None:
    copies = [tmp_path / "a", tmp_path / "b"]
    for c in copies:
        c.mkdir()
    run_both(copies)

    a, b = files(copies[0]), files(copies[1])
    assert a.keys() == b.keys()
    for name in ("prepared/mentions.parquet", "features/images.parquet", "demos/demos.parquet",
                 "candidates/candidates.parquet", "results/smollm2-135m/mapper.safetensors",
                 "results/smollm2-135m/predictions.parquet", "results/smollm2-135m/metrics.json"):
        assert name in a, f"{name} not written (outputs: {sorted(a)})"
    for name in ("prepared/report.json", "candidates/cost.json", "tries/smollm2-135m.json",
                 "results/smollm2-135m/decode_report.json"):  # each stage says what it cost
        cost = json.loads(a[name].read_text(encoding="utf-8"))["cost"]
        assert cost["seconds"] >= 0 and cost["peak_rss_mib"] > 50, (name, cost)
    assert not [n for n in a if Path(n).name.startswith(".")], "temporary files left behind"
    # train reads the candidates report (the ranker): its bytes must not hang on the clock, or a
    # rerun that gives the same ranker would retrain.
    assert a["candidates/report.json"].read_bytes() == b["candidates/report.json"].read_bytes()
    differ = []
    for name in a:
        x, y = a[name].read_bytes(), b[name].read_bytes()
        if Path(name).name in REPORTS:
            x, y = (without_timings(json.loads(v)) for v in (x, y))
        if x != y:
            differ.append(name)
    assert not differ, f"outputs that differ between two identical runs: {sorted(differ)}"
