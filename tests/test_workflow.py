"""The Snakemake workflow against dvc.yaml, the params schema, the paper sweep's fail-fast check,
the SLURM profile, and the sweep summaries. Dry runs only (no model runs), each in a scratch
folder that links to the repository, so .snakemake/ and bad params never touch the checkout."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gemel.config import ConfigError, apply_override, load_params
from gemel.summary import SummaryError, dataset_table, summary_table
from gemel.workflow import (
    ablation_runs,
    candidate_variants,
    check_ablation,
    dataset_runs,
    effective,
    format_value,
    run_settings,
    seed_runs,
    set_args,
)
from stages import summarize

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["sample", "prepare", "features", "retrieve", "candidates", "trie", "train", "decode", "evaluate", "report"]
LOG = re.compile(r" > \S+ 2>&1$")


@dataclass
class Job:
    rule: str
    inputs: list[str]
    outputs: list[str]
    cmd: str | None
    resources: str


def workdir(base: Path, params_text: str | None = None) -> Path:
    """A scratch run folder: links to the code and the workflow, its own params.yaml."""
    base.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "gemel", "stages"):
        (base / name).symlink_to(ROOT / name)
    (base / "params.yaml").write_text(params_text if params_text is not None else (ROOT / "params.yaml").read_text())
    (base / "data").mkdir()
    (base / "data" / "raw").symlink_to(ROOT / "data" / "raw")  # the presets' raw files (tracked README)
    return base


def snakemake(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run it; its report and errors both end up in .stdout (Snakemake logs either way)."""
    return subprocess.run([sys.executable, "-m", "snakemake", "--nolock", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def plan(cwd: Path, *args: str) -> list[Job]:
    """The jobs of `snakemake -n -p --forceall ARGS`, parsed from its report."""
    return plan_and_report(cwd, *args)[0]


def plan_and_report(cwd: Path, *args: str) -> tuple[list[Job], str]:
    """plan(), and the report itself (what the Snakefile printed while parsed, too)."""
    res = snakemake(cwd, "-n", "-p", "--forceall", *args)
    assert res.returncode == 0, res.stdout
    jobs: list[Job] = []
    for block in re.split(r"^(?:local)?rule ", res.stdout, flags=re.M)[1:]:
        fields = dict(re.findall(r"^ {4}(\w+): (.*)$", block, flags=re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append(Job(rule=block.split(":", 1)[0],
                        inputs=fields.get("input", "").split(", ") if fields.get("input") else [],
                        outputs=fields.get("output", "").split(", ") if fields.get("output") else [],
                        cmd=None if cmd is None or cmd.group(1) == "None" else LOG.sub("", cmd.group(1)),
                        resources=fields.get("resources", "")))
    assert jobs, res.stdout
    return jobs, res.stdout


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    return workdir(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="module")
def sweep_jobs(wd) -> list[Job]:
    return plan(wd, "eval_all_scales", "ablations")


def test_dvc_and_snakemake_agree_on_every_stage(wd):
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    dvc = {s.name: s for s in Repo(str(ROOT)).index.stages}
    jobs = {j.rule: j for j in plan(wd) if j.cmd}
    assert sorted(dvc) == sorted(STAGES) == sorted(jobs)
    for name in STAGES:
        stage, job = dvc[name], jobs[name]
        # The default run's commands are dvc.yaml's, character for character.
        assert job.cmd == stage.cmd, name
        assert sorted(job.outputs) == sorted(str(o.def_path) for o in stage.outs), name
        deps = [str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)]
        assert sorted(job.inputs) == sorted(deps), name


def test_sweeps_reuse_shared_work_and_put_each_run_where_its_overrides_say(sweep_jobs):
    params = load_params(ROOT / "params.yaml")
    count = pd.Series([j.rule for j in sweep_jobs]).value_counts()
    for shared in ("sample", "prepare", "features", "retrieve", "candidates"):
        assert count[shared] == 1, shared
    assert count["retrieve_method"] == 2  # random and bm25; simcse is retrieve itself
    # One candidates job per distinct set of candidates.* changes among the ablations (four here),
    # the stage CLI with those changes as --set, writing to a sub-folder of candidates.out.
    changes = {frozenset((k, v) for k, v in o.items() if k.startswith("candidates."))
               for o in params["ablations"].values()} - {frozenset()}
    variants = [j for j in sweep_jobs if j.rule == "candidates_variant"]
    assert len(variants) == len(changes) == 4
    made = set()
    for job in variants:
        argv = shlex.split(job.cmd)
        assert argv[:5] == ["python", "-m", "stages.candidates", "--params", "params.yaml"]
        p = load_params(ROOT / "params.yaml", [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
        assert changed_candidates(params, p) in changes, job.cmd
        assert p["candidates"]["out"].startswith(f"{params['candidates']['out']}/variants/"), job.cmd
        assert f"{p['candidates']['out']}/candidates.parquet" in job.outputs
        made.add(p["candidates"]["out"])
    runs = len(params["scales"]) + len(params["ablations"])
    assert count["train"] == count["decode"] == count["evaluate"] == count["report"] == runs
    # One trie per LLM, shared by every run of it (the scales' LLMs and the ablations' one).
    llms = set(params["scales"]) | {params["model"]["llm"]}
    assert sorted(j.outputs[0] for j in sweep_jobs if j.rule == "trie") == sorted(
        f"{params['trie']['out']}/{llm}.npz" for llm in llms)
    for job in sweep_jobs:
        if job.rule not in ("train", "decode", "evaluate", "report"):
            continue
        argv = shlex.split(job.cmd)
        assert argv[:5] == ["python", "-m", f"stages.{job.rule}", "--params", "params.yaml"]
        # Replaying the job's --set overrides gives the folder the stage writes to and reads from.
        p = load_params(ROOT / "params.yaml", [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
        run_dir = f"{p['train']['out']}/{p['model']['llm']}/"
        assert all(o.startswith(run_dir) for o in job.outputs), (job.cmd, job.outputs)
        if job.rule in ("train", "decode"):
            assert f"{p['retrieve']['out']}/demos.parquet" in job.inputs, job.cmd
            assert "gpu=1" in job.resources
        # It reads the candidates its own candidates.* settings make: those of params.yaml in
        # candidates.out, the others in the folder a candidates_variant job above writes.
        assert f"{p['candidates']['out']}/candidates.parquet" in job.inputs, job.cmd
        if changed_candidates(params, p):
            assert p["candidates"]["out"] in made, job.cmd
        else:
            assert p["candidates"]["out"] == params["candidates"]["out"], job.cmd
    trains = {j.outputs[0].rsplit("/", 1)[0] for j in sweep_jobs if j.rule == "train"}
    assert {f"results/{s}" for s in params["scales"]} | {f"results/ablations/{a}/smollm2-135m"
                                                         for a in params["ablations"]} == trains


def changed_candidates(params: dict, p: dict) -> frozenset:
    """The `candidates.key` settings (but out) of p that differ from params."""
    return frozenset((f"candidates.{k}", v) for k, v in p["candidates"].items()
                     if k != "out" and v != params["candidates"][k])


def test_a_candidates_ablation_decodes_its_own_candidates_and_the_others_share_the_default(sweep_jobs):
    jobs = {(j.rule, j.outputs[0].split("/")[2]): j for j in sweep_jobs
            if j.rule in ("train", "decode") and j.outputs[0].startswith("results/ablations/")}
    decode = jobs["decode", "candidates_no_fuzzy"]
    assert "data/candidates/variants/fuzzy=0/candidates.parquet" in decode.inputs
    assert "data/candidates/candidates.parquet" not in decode.inputs
    assert "--set candidates.fuzzy=0" in decode.cmd and "--set 'candidates.out=\"data/candidates/variants/fuzzy=0\"'" \
        in decode.cmd
    assert {"data/candidates/variants/ranker_hidden=0/candidates.parquet",
            "data/candidates/variants/ranker_hidden=0/report.json"} <= set(jobs["train", "candidates_linear_ranker"].inputs)
    writer = next(j for j in sweep_jobs if "data/candidates/variants/fuzzy=0/candidates.parquet" in j.outputs)
    assert writer.rule == "candidates_variant" and "--set candidates.fuzzy=0" in writer.cmd
    for name in ("baseline", "candidates", "retrieval_bm25"):
        assert "data/candidates/candidates.parquet" in jobs["decode", name].inputs, name
        assert "candidates." not in jobs["decode", name].cmd, name


def test_candidates_folders_are_named_by_the_changes_not_the_ablation():
    params = load_params(ROOT / "params.yaml")
    params["ablations"] = {
        "a": {"candidates.fuzzy": 0}, "b": {"candidates.fuzzy": 0, "model.num_demos": 4},  # alike: one folder
        "c": {"candidates.fuzzy": params["candidates"]["fuzzy"]},  # params.yaml's own value: the default folder
        "d": {"candidates.dense_sim": False, "candidates.dense": 0},
        "e": {"candidates.encoder": "/models/my-encoder"}}  # a path: no readable name, a hash
    variants = candidate_variants(params)
    assert sorted(variants) == sorted(["fuzzy=0", "dense=0,dense_sim=false", next(v for v in variants if "=" not in v)])
    assert variants["fuzzy=0"] == {"candidates.fuzzy": 0, "candidates.out": "data/candidates/variants/fuzzy=0"}
    folder = {r.name: run_settings(params, r.out, r.llm).get("candidates.out") for r in ablation_runs(params)}
    assert folder["a"] == folder["b"] == "data/candidates/variants/fuzzy=0"
    assert folder["c"] is None  # no --set: candidates.out as in dvc.yaml
    assert folder["d"] == "data/candidates/variants/dense=0,dense_sim=false"
    assert re.fullmatch(r"data/candidates/variants/[0-9a-f]{12}", folder["e"])


@pytest.mark.parametrize("bad, key", [
    ({"model": {"num_demo": 4}}, "num_demo"),            # unknown key
    ({"model": {"num_demos": "four"}}, "num_demos"),     # wrong type
    ({"ablations": {"x": {"model.use_image": "no"}}}, "use_image"),  # an ablation sets a wrong type
])
def test_schema_rejects_bad_params_naming_the_key(tmp_path, bad, key):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in bad.items():
        params[section].update(values)
    wd = workdir(tmp_path / "wd", yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=key):
        p = load_params(wd / "params.yaml")
        ablation_runs(p)  # an ablation's overrides are checked when the sweep is built
    t0 = time.perf_counter()
    res = snakemake(wd, "-n")
    assert res.returncode != 0 and key in res.stdout, res.stdout
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("key, value", [("features.encoder", "open_clip"), ("prepare.seed", 1), ("sample.seed", 1),
                                        ("retrieve.encoder", "sup-simcse-roberta-large"),
                                        ("candidates.out", "elsewhere"), ("train.out", "elsewhere")])
def test_ablation_may_not_change_shared_work(key, value):
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match=rf"ablations\.x: '{re.escape(key)}' may not change in an ablation "
                                          r"\(allowed: .*candidates\.\*.*\): it is shared work"):
        check_ablation(params, "x", {key: value})
    check_ablation(params, "x", {"candidates.fuzzy": 0, "candidates.dense_sim": False})  # their own folder


def test_snakemake_refuses_an_ablation_of_shared_work(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ablations"]["enc"] = {"features.encoder": "open_clip"}
    res = snakemake(workdir(tmp_path / "wd", yaml.safe_dump(params, sort_keys=False)), "-n", "ablations")
    assert res.returncode != 0 and "ablations.enc: 'features.encoder' may not change" in res.stdout, res.stdout


def test_paper_scales_fail_fast_naming_model_and_fix(tmp_path, wd):
    # An empty HF cache: the weights are absent here whatever this machine has downloaded.
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    t0 = time.perf_counter()
    res = snakemake(wd, "-n", "eval_all_scales", "--config", "scales=paper", env=env)
    seconds = time.perf_counter() - t0
    assert res.returncode != 0
    assert "opt-350m" in res.stdout and "llms.opt-350m.path" in res.stdout, res.stdout
    assert "Building DAG" not in res.stdout  # failed while parsing, before any job
    assert seconds < 30


def test_config_may_only_change_scales(wd):
    res = snakemake(wd, "-n", "--config", "model={llm: gemma3-270m}")
    assert res.returncode != 0 and "changed model" in res.stdout, res.stdout


def test_set_args_are_empty_for_the_default_run_and_round_trip():
    params = load_params(ROOT / "params.yaml")
    settings = run_settings(params, params["train"]["out"], params["model"]["llm"])
    assert set_args(params, settings) == ""
    tricky = {"model.use_image": False, "model.num_demos": 0, "train.lr": 1e-6, "model.llm": "opt-1.3b",
              "decode.split": "dev", "train.dev_limit": None}
    p = effective(params, tricky)
    for key, value in tricky.items():
        section, leaf = key.split(".")
        assert p[section][leaf] == value and type(p[section][leaf]) is type(value), key
    assert format_value("true") == '"true"'  # a string that YAML would read as a boolean


def test_slurm_profile_dry_runs(wd):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install 'gemel[slurm]')")
    jobs = plan(wd, "--profile", "workflow/profiles/slurm", "eval_all_scales")
    trains = [j for j in jobs if j.rule in ("train", "decode")]
    assert trains and all("gpu=1" in j.resources and "slurm_partition=<gpu-partition>" in j.resources
                          for j in trains)
    assert all("slurm_account=<account>" in j.resources for j in jobs if j.cmd)


def with_presets(presets: dict, **sections) -> dict:
    """params.yaml with these dataset presets instead of its own (the repository's raw files may
    or may not be here), and other sections replaced."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"sample": params["datasets"]["sample"], **presets}
    params.update(sections)
    return params


def test_datasets_plans_every_preset_whose_files_are_here_in_its_own_folders(tmp_path):
    tiny = {"format": "gemel_jsonl", "input": "data/tiny", "kb": "data/tiny/kb.json",
            "split_file": "data/tiny/splits.json", "source": "made by this test"}
    ghost = {**tiny, "kb": "data/ghost/kb.json"}  # its input is here, its KB is not
    wd = workdir(tmp_path / "wd", yaml.safe_dump(with_presets({"tiny": tiny, "ghost": ghost}), sort_keys=False))
    (wd / "data" / "tiny").mkdir()
    (wd / "data" / "tiny" / "kb.json").write_text("{}")
    (wd / "data" / "tiny" / "splits.json").write_text("{}")
    jobs, report = plan_and_report(wd, "datasets")
    assert "datasets: skipping ghost: data/ghost/kb.json not found (see data/raw/README.md)" in report
    assert "skipping sample" not in report and "skipping tiny" not in report
    runs = {j.outputs[0]: j for j in jobs if j.rule == "dataset_run"}
    assert sorted(runs) == ["results/datasets/sample/smollm2-135m/metrics.json",
                            "results/datasets/tiny/smollm2-135m/metrics.json"]
    assert "sample" in [j.rule for j in jobs]  # the sample preset reads rule sample's output
    assert "data/sample" in runs["results/datasets/sample/smollm2-135m/metrics.json"].inputs
    assert {"data/tiny", "data/tiny/kb.json", "data/tiny/splits.json"} <= set(
        runs["results/datasets/tiny/smollm2-135m/metrics.json"].inputs)
    for name, job in (("sample", runs["results/datasets/sample/smollm2-135m/metrics.json"]),
                      ("tiny", runs["results/datasets/tiny/smollm2-135m/metrics.json"])):
        assert job.cmd.startswith("(") and job.cmd.endswith(")"), job.cmd  # one log for the whole chain
        commands = [shlex.split(c) for c in job.cmd[1:-1].split(" && ")]
        assert [argv[2] for argv in commands] == [f"stages.{s}" for s in STAGES[1:]]
        for argv in commands:
            assert argv[:2] == ["python", "-m"] and argv[3:5] == ["--params", "params.yaml"]
            sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
            if name != "sample":  # the sample is params.yaml's own dataset: no --set needed
                assert "dataset=tiny" in sets
            p = load_params(wd / "params.yaml", sets)
            assert p["dataset"] == name
            folders = {s: p[s]["out"] for s in ("prepare", "features", "retrieve", "candidates", "trie", "train")}
            assert folders == {"prepare": f"data/datasets/{name}/prepared",
                               "features": f"data/datasets/{name}/features", "retrieve": f"data/datasets/{name}/demos",
                               "candidates": f"data/datasets/{name}/candidates", "trie": f"data/datasets/{name}/tries",
                               "train": f"results/datasets/{name}"}
    assert "--set dataset=tiny" in runs["results/datasets/tiny/smollm2-135m/metrics.json"].cmd
    summary = next(j for j in jobs if j.rule == "summarize_datasets")
    assert summary.outputs == ["results/datasets/summary.csv", "results/datasets/summary.md",
                               "results/datasets/report.html", "results/datasets/accuracy_by_dataset.png"]
    assert sorted(runs) == sorted(i for i in summary.inputs if i.endswith("metrics.json"))
    assert "--set summarize.kind=datasets" in summary.cmd


def fake_metrics(path: Path, accuracy: float, baselines: tuple[float, float] | None = None,
                 mode: str | None = None) -> None:
    """A metrics.json; with baselines (copy_mention, alias_prior) and decode mode as evaluate now writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"accuracy": accuracy, "hits@k": {"3": min(1.0, accuracy + 0.1)}, "n": 10, "evaluated": 10}
    if mode:
        data["decode"] = {"mode": mode, "split": "test", "mentions_per_s": 5.0}
    if baselines:
        data["baselines"] = {"copy_mention": {"accuracy": baselines[0]}, "alias_prior": {"accuracy": baselines[1]}}
    path.write_text(json.dumps(data))


def test_datasets_summary_has_a_row_per_present_preset_with_its_baselines(tmp_path):
    out = tmp_path / "results"
    (tmp_path / "tiny").mkdir()
    presets = {"tiny": {"format": "gemel_jsonl", "input": str(tmp_path / "tiny")},
               "ghost": {"format": "gemel_jsonl", "input": str(tmp_path / "ghost")}}
    params = with_presets(presets, train={**load_params(ROOT / "params.yaml")["train"], "out": str(out)})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    runs, skipped = dataset_runs(load_params(tmp_path / "params.yaml"))
    assert [r.name for r in runs] == ["sample", "tiny"]
    assert skipped == [("ghost", f"{tmp_path / 'ghost'} not found (see data/raw/README.md)")]
    assert runs[1].metrics == f"{out}/datasets/tiny/smollm2-135m/metrics.json"
    fake_metrics(Path(runs[0].metrics), 0.8889, baselines=(0.1944, 0.3611), mode="paper")
    fake_metrics(Path(runs[1].metrics), 0.5, baselines=(0.25, 0.375), mode="constrained")
    assert summarize.main(["--params", str(tmp_path / "params.yaml"), "--set", "summarize.kind=datasets"]) == 0
    table = pd.read_csv(out / "datasets" / "summary.csv")
    assert table.to_dict("records") == [
        {"dataset": "sample", "llm": "smollm2-135m", "evaluated": 10, "accuracy": 0.8889,
         "copy_mention": 0.1944, "alias_prior": 0.3611, "decode": "paper"},
        {"dataset": "tiny", "llm": "smollm2-135m", "evaluated": 10, "accuracy": 0.5,
         "copy_mention": 0.25, "alias_prior": 0.375, "decode": "constrained"}]
    md = (out / "datasets" / "summary.md").read_text().splitlines()
    assert md[0] == "| dataset | llm | evaluated | accuracy | copy_mention | alias_prior | decode |"
    assert md[2] == "| sample | smollm2-135m | 10 | 0.8889 | 0.1944 | 0.3611 | paper |"
    assert (out / "datasets" / "accuracy_by_dataset.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # An older metrics.json (no baselines, no decode mode) still makes a row, its baselines empty.
    fake_metrics(Path(runs[1].metrics), 0.5)
    row = dataset_table(runs, "accuracy").iloc[1]
    assert pd.isna(row["copy_mention"]) and pd.isna(row["alias_prior"]) and row["decode"] == "-"


def test_sweep_summaries_gain_the_baselines_where_metrics_have_them(tmp_path):
    params = load_params(ROOT / "params.yaml")
    runs = ablation_runs(effective(params, {"train.out": str(tmp_path)}))[:2]
    fake_metrics(Path(runs[0].metrics), 0.5, baselines=(0.25, 0.375), mode="paper")
    fake_metrics(Path(runs[1].metrics), 0.75)  # written before the baselines existed
    table = summary_table(runs, params["llms"], "accuracy")
    assert list(table.columns[:7]) == ["name", "llm", "params_m", "overrides", "accuracy", "copy_mention",
                                       "alias_prior"]
    assert not any(c.startswith("baselines.") for c in table.columns)
    assert table["copy_mention"].iloc[0] == 0.25 and table["alias_prior"].iloc[0] == 0.375
    assert table[["copy_mention", "alias_prior"]].iloc[1].isna().all()


@pytest.mark.parametrize("kind", ["scales", "ablations"])
def test_summarize_stage_writes_table_and_plot(tmp_path, kind):
    params = load_params(ROOT / "params.yaml")
    out = tmp_path / "results"
    overrides = [f"train.out={out}", f"summarize.kind={kind}"] + (["scales=paper"] if kind == "scales" else [])
    names = [r.name for r in ablation_runs(params)] if kind == "ablations" else params["paper_scales"]
    accuracy = {name: round(0.1 + 0.8 * i / len(names), 4) for i, name in enumerate(names)}
    for name in names:
        llm = params["model"]["llm"] if kind == "ablations" else name
        folder = out / "ablations" / name if kind == "ablations" else out
        fake_metrics(folder / llm / "metrics.json", accuracy[name])
    argv = ["--params", str(ROOT / "params.yaml")] + [a for o in overrides for a in ("--set", o)]
    assert summarize.main(argv) == 0
    table = pd.read_csv(out / kind / "summary.csv")
    assert list(table["name"]) == names
    assert dict(zip(table["name"], table["accuracy"], strict=True)) == accuracy
    assert list(table.columns[:5]) == ["name", "llm", "params_m", "overrides", "accuracy"]
    assert "hits@k.3" in table.columns
    assert "copy_mention" not in table.columns  # metrics without baselines: no baseline columns
    if kind == "scales":
        assert list(table["params_m"]) == [params["llms"][n]["params_m"] for n in names]
    md = (out / kind / "summary.md").read_text().splitlines()
    assert len(md) == 2 + len(names) and md[0].startswith("| name | llm |")
    png = out / kind / ("accuracy_vs_size.png" if kind == "scales" else "accuracy_by_ablation.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_names_the_file_of_a_missing_metric(tmp_path):
    params = load_params(ROOT / "params.yaml")
    runs = ablation_runs(effective(params, {"train.out": str(tmp_path)}))
    with pytest.raises(SummaryError, match="no such metrics file"):
        summary_table(runs, params["llms"], "accuracy")
    fake_metrics(Path(runs[0].metrics), 0.5)
    with pytest.raises(SummaryError, match=re.escape(runs[0].metrics) + ".*no metric 'mrr'"):
        summary_table(runs[:1], params["llms"], "mrr")


@pytest.mark.parametrize("raw, value", [("1e-4", 1e-4), ("2.5E3", 2500.0), ("1.0e-6", 1e-6), ("3", 3),
                                        ("1e4x", "1e4x"), ("false", False), ("null", None)])
def test_set_reads_numbers_as_a_user_types_them(raw, value):
    """`--set train.lr=1e-4` is a float, though PyYAML alone (YAML 1.1) reads it as a string."""
    params = load_params(ROOT / "params.yaml", [f"train.lr={raw}"] if isinstance(value, float) else [])
    if isinstance(value, float):
        assert params["train"]["lr"] == value and isinstance(params["train"]["lr"], float)
    p: dict = {"x": {}}
    apply_override(p, f"x.y={raw}")
    assert p["x"]["y"] == value and type(p["x"]["y"]) is type(value)


def test_seeds_summary_gives_mean_and_std_and_reuses_the_default_run(tmp_path):
    """seeds [0, 1, 2]: seed 0 is train.seed, so the default run's folder; the others their own."""
    params = load_params(ROOT / "params.yaml", [f"train.out={tmp_path}/results"])
    runs = seed_runs(params)
    llm = params["model"]["llm"]
    assert [(r.name, r.out, r.overrides) for r in runs] == [
        ("0", f"{tmp_path}/results", ()), ("1", f"{tmp_path}/results/seeds/1", (("train.seed", 1),)),
        ("2", f"{tmp_path}/results/seeds/2", (("train.seed", 2),))]
    accuracy = [0.8, 0.9, 0.7]
    for run, acc in zip(runs, accuracy, strict=True):
        fake_metrics(Path(run.metrics), acc, baselines=(0.2, 0.4))
    argv = ["--params", str(ROOT / "params.yaml"), "--set", f"train.out={tmp_path}/results",
            "--set", "summarize.kind=seeds"]
    assert summarize.main(argv) == 0
    table = pd.read_csv(tmp_path / "results" / "seeds" / "summary.csv").set_index("seed")
    assert list(table.index) == ["0", "1", "2", "mean", "std"]
    assert table.at["mean", "accuracy"] == pytest.approx(0.8)
    assert table.at["std", "accuracy"] == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    assert table.at["std", "alias_prior"] == pytest.approx(0.0, abs=1e-12) and table.at["mean", "copy_mention"] == pytest.approx(0.2)
    assert (tmp_path / "results" / "seeds" / "accuracy_by_seed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(table["llm"]) == {llm}


def test_seeds_target_trains_each_seed_once(wd):
    jobs = plan(wd, "seeds")
    trains = sorted(j.cmd for j in jobs if j.rule == "train")
    assert len(trains) == 3
    assert sum("--set train.seed=" in c for c in trains) == 2  # seed 0 is the default run itself
