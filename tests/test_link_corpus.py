"""Linking a corpus in shards (gemel.link.corpus, the link_corpus target of workflow/rules/link.smk): real
Snakemake jobs on the shared small trained run (tests/conftest.py's sample_project), a file of 30
lines (four batches of 8 lines) in 3 shards, with bad lines in each shard.

What is checked: the merged output is byte-identical to one `gemel link` over the file; the
per-shard report counts and names each shard's errors with their lines in the input file; a shard
killed mid-batch (its output cut inside a line, no .done) is the only job rerun, resumes, and the
merge is still byte-identical; the status view shows the shards' progress. Without a model: the
shard ranges are whole batches covering the file.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gemel.cli import parse_shard
from gemel.link.corpus import count_lines, shard_ranges
from tests.conftest import project_env

ROOT = Path(__file__).resolve().parent.parent
LLM = "smollm2-135m"
SHARDS = 3


# ------------------------------------------------------------------ without a model


@pytest.mark.parametrize("lines,shards,batch", [(30, 3, 8), (16, 2, 8), (5, 4, 2), (0, 2, 8), (100, 7, 1), (9, 1, 8)])
def test_shards_are_whole_batches_covering_the_file_in_order(lines, shards, batch):
    ranges = shard_ranges(lines, shards, batch)
    assert len(ranges) == shards
    covered = [n for a, b in ranges for n in range(a, b + 1)]
    assert covered == list(range(1, lines + 1))  # each line once, in order
    assert all((a - 1) % batch == 0 for a, b in ranges if b >= a)  # each starts a batch
    sizes = [-(-(b - a + 1) // batch) for a, b in ranges if b >= a]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1 or len(sizes) < shards  # as even as batches allow


def test_count_lines_numbers_lines_as_iteration_does(tmp_path):
    for text in ["", "a\n", "a\nb", "a\n\nb\n", "\n\n"]:
        (tmp_path / "f").write_text(text)
        with open(tmp_path / "f", "rb") as f:
            assert count_lines(tmp_path / "f") == sum(1 for _ in f), text


def test_shard_argument():
    assert parse_shard("2/8") == (2, 8)
    for bad in ["0/3", "4/3", "3", "a/b", "1/0"]:
        with pytest.raises(ValueError, match="expected I/N"):
            parse_shard(bad)


# ------------------------------------------------------------------ a corpus through Snakemake


def corpus_lines(folder: Path) -> list[str]:
    """30 lines: good inputs (some with an id, most with their line number), and per shard bad ones."""
    from gemel.data.sample import generate_sample

    generate_sample(folder / "draw", seed=1, train_per_entity=3, dev_per_entity=1, test_per_entity=1, image_size=96)
    draws = [json.loads(line) for line in (folder / "draw" / "test.json").read_text().splitlines()]
    good = iter({"text": o["text"], "mention": o["mention"], "image": f"draw/images/{o['img_name']}"} for o in draws)
    lines = [json.dumps(next(good)) for _ in range(30)]
    lines[1] = json.dumps({**json.loads(lines[1]), "id": "q2"})
    lines[2] = '{"text": "broken'                                                  # shard 1: malformed
    lines[9] = ""                                                                  # blank: no record
    lines[11] = json.dumps({"text": "Mercury, again."})                            # shard 1: no mention
    lines[18] = json.dumps({**json.loads(lines[18]), "id": "q2"})                  # shard 2: id of line 2
    lines[25] = json.dumps({**json.loads(lines[25]), "image": "draw/nowhere.png"})  # linked text-only
    lines[27] = json.dumps({**json.loads(lines[27]), "id": [1]})                   # shard 3: bad id
    return lines


@pytest.fixture(scope="module")
def work(tmp_path_factory, sample_project) -> Path:
    """A scratch folder with the workflow (links to the repository's), the small run's params and the corpus."""
    wd = tmp_path_factory.mktemp("corpus")
    for name in ("Snakefile", "workflow", "gemel", "stages"):
        (wd / name).symlink_to(ROOT / name)
    (wd / "params.yaml").write_text((sample_project / "params.yaml").read_text())
    (wd / "data").mkdir()
    (wd / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    (wd / "corpus.jsonl").write_text("\n".join(corpus_lines(wd)) + "\n")
    return wd


def env() -> dict[str, str]:
    # One thread, as the link_shard jobs have (link_threads=1): the one-process reference runs alike.
    return {**project_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(wd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=wd, env=env(), capture_output=True, text=True, timeout=1800)


def link_corpus(wd: Path, sample_project: Path) -> subprocess.CompletedProcess:
    res = run(wd, "-m", "snakemake", "--nolock", "--cores", "2", "link_corpus", "--config",
              f"link_run={sample_project / 'results' / LLM}", "link_input=corpus.jsonl",
              "link_output=out/linked.jsonl", f"link_shards={SHARDS}", "link_threads=1")
    logs = "".join(p.read_text() for p in sorted((wd / "out/linked.jsonl.shards/logs").glob("*.log")))
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:] + logs[-4000:]
    return res


def jobs(output: str) -> dict[str, int]:
    """Snakemake's job stats: rule -> jobs run."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


@pytest.fixture(scope="module")
def one_process(work, sample_project) -> bytes:
    res = run(work, "-m", "gemel.cli", "link", str(sample_project / "results" / LLM), "--input", "corpus.jsonl",
              "--output", "one.jsonl", "--on-error", "skip")
    assert res.returncode == 0, res.stderr[-4000:]
    return (work / "one.jsonl").read_bytes()


@pytest.fixture(scope="module")
def sharded(work, sample_project, one_process) -> Path:
    link_corpus(work, sample_project)
    return work / "out" / "linked.jsonl"


def test_shards_merge_byte_identical_to_one_process(sharded, one_process):
    assert sharded.read_bytes() == one_process
    records = [json.loads(line) for line in one_process.decode().splitlines()]
    assert len(records) == 29  # one per non-blank line
    assert [r["id"] for r in records[:4]] == ["1", "q2", "3", "4"] and records[-1]["id"] == "30"
    assert sum("error" not in r for r in records) == 25
    assert not records[24]["image_used"] and records[24]["image_reason"] == "missing"  # line 26


def test_report_counts_and_names_each_shards_errors(sharded):
    report = json.loads((sharded.parent / "linked.jsonl.report.json").read_text())
    assert (report["inputs"], report["linked"], report["errors"], report["shards"]) == (29, 25, 4, SHARDS)
    shards = report["shard"]
    assert [(s["first_line"], s["last_line"], s["inputs"], s["linked"], s["errors"]) for s in shards] == [
        (1, 16, 15, 13, 2), (17, 24, 8, 7, 1), (25, 30, 6, 5, 1)]
    errors = [[(e["id"], e["error"]) for e in s["first_errors"]] for s in shards]
    assert errors[0][0][0] == "3" and errors[0][0][1].startswith("line 3: malformed JSON")
    assert errors[0][1] == ("12", "line 12: missing field 'mention'")
    assert errors[1] == [("q2", "line 19: id q2 is already used on line 2")]  # across shards
    assert errors[2] == [("28", "line 28: field 'id': expected a string or an integer, got list")]


def test_status_shows_each_shards_progress(work, sharded):
    res = run(work, "-m", "gemel.cli", "corpus", "status", "out/linked.jsonl.shards")
    assert res.returncode == 0, res.stderr
    rows = res.stdout.strip().splitlines()
    assert rows[2].split() == ["1", "1-16", "15", "/", "15", "100.0", "2", "done"]
    assert rows[-1].split()[-4:] == ["3", "of", "3", "done"]


def test_a_killed_shard_resumes_and_the_merge_is_still_identical(work, sample_project, sharded, one_process):
    folder = work / "out" / "linked.jsonl.shards"
    plan = json.loads((folder / "plan.json").read_text())
    out = folder / plan["shard"][0]["output"]
    lines = out.read_text().splitlines(keepends=True)
    # Killed while writing its second batch (lines 9-16): 10 records and part of the 11th, no .done
    # (the job's output), no merge.
    out.write_text("".join(lines[:10]) + lines[10][:30])
    (folder / "shard-00001-of-00003.done").unlink()
    for merged in (sharded, sharded.parent / "linked.jsonl.report.json"):  # the run stopped before its merge
        merged.unlink()
    res = run(work, "-m", "gemel.cli", "corpus", "status", str(folder))
    assert res.stdout.splitlines()[2].split()[2:] == ["10", "/", "15", "66.7", "1", "started"], res.stdout
    res = link_corpus(work, sample_project)
    assert jobs(res.stdout + res.stderr) == {"link_shard": 1, "link_merge": 1, "link_corpus": 1}  # only the killed shard
    log = (folder / "logs" / "shard-00001-of-00003.log").read_text()
    assert "4 linked, 1 errors, 10 already in" in log  # the cut batch linked whole, its 5 new lines written
    assert sharded.read_bytes() == one_process
