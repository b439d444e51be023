"""What a params change reruns, as DVC itself sees it: each stage's tracked params values (DVC's
own ParamsDependency.read_params, what `dvc status` compares) before and after a change, then the
stages downstream of those in DVC's DAG. Changing decode.* reruns only decode and what reads its
outputs; adding an LLM to the registry reruns nothing; every run of an LLM shares one trie."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import networkx as nx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def rerun(tmp_path: Path, change) -> set[str]:
    """The stages `dvc repro` would rerun after `change(params)`, from an up-to-date workspace."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)

    def tracked() -> dict[str, dict]:
        stages = Repo(str(tmp_path)).index.stages
        return {s.name: {k: v for d in s.deps if isinstance(d, ParamsDependency) for k, v in d.read_params().items()}
                for s in stages}

    before = tracked()
    change(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    after = tracked()
    changed = {name for name in before if before[name] != after.get(name)}
    graph = Repo(str(tmp_path)).index.graph  # edges: stage -> a stage it depends on
    by_name = {s.name: s for s in graph.nodes}
    return changed | {a.name for name in changed for a in nx.ancestors(graph, by_name[name])}


@pytest.mark.parametrize("key, value", [("num_beams", 10), ("length_penalty", 0.5), ("candidates", "constrained"),
                                        ("num_candidates", 4), ("fusion_weight", 2.0), ("split", "dev"),
                                        ("batch_size", 2), ("max_new_tokens", 16)])
def test_changing_decode_reruns_only_decode_and_what_reads_it(tmp_path, key, value):
    def change(p):
        p["decode"][key] = value

    assert rerun(tmp_path, change) == {"decode", "evaluate", "report"}


def test_changing_train_dev_settings_retrains_but_leaves_shared_work(tmp_path):
    def change(p):
        p["train"]["dev_num_beams"] = 3

    assert rerun(tmp_path, change) == {"train", "decode", "evaluate", "report"}


@pytest.mark.parametrize("key, value", [("fuzzy", 0), ("dense", 0), ("ranker_hidden", 0)])
def test_a_candidates_switch_reruns_the_candidates_and_every_run_but_no_other_shared_work(tmp_path, key, value):
    """`dvc exp run -S candidates.fuzzy=0`, the DVC side of the candidates_* ablations."""
    def change(p):
        p["candidates"][key] = value

    assert rerun(tmp_path, change) == {"candidates", "train", "decode", "evaluate", "report"}


def test_adding_an_llm_reruns_nothing(tmp_path):
    def change(p):
        p["llms"]["tiny-new"] = {"hub": "someone/tiny-new", "path": None, "params_m": 10}

    assert rerun(tmp_path, change) == set()


def test_changing_the_llm_reruns_its_trie_and_model_but_no_shared_data(tmp_path):
    def change(p):
        p["model"]["llm"] = "gemma3-270m"

    assert rerun(tmp_path, change) == {"trie", "train", "decode", "evaluate", "report"}


def test_the_trie_is_shared_work_outside_any_run_folder():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["trie"]["outs"] == ["${trie.out}/${model.llm}.npz"]
    assert "${trie.out}/${model.llm}.npz" in stages["train"]["deps"] and "${trie.out}/${model.llm}.npz" in \
        stages["decode"]["deps"]
