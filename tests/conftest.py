"""Shared test fixtures. Models load once per test session (module-level caches in gemel)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GEMEL_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def richpedia() -> Path:
    path = SHARED_DATA / "richpedia-mel"
    if not (path / "train.json").exists():
        pytest.skip(f"RichpediaMEL not found at {path} (set GEMEL_SHARED_DATA)")
    return path


# ------------------------------------------------------------------ one small trained run, shared

# The project's own files a DVC run needs: DVC's and the pipeline's (not results, data or the lock).
PROJECT_FILES = (".dvc/", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml", "gemel/", "stages/",
                 "data/raw/README.md")
# A small draw of the sample (36 train, 36 dev mentions; the first 12 of its 36 test mentions) and a
# short training: 1 epoch (9 optimizer steps), one dev evaluation of 12 mentions.
# Every training the tests make takes its seed from GEMEL_TEST_SEED (default 0): another seed is
# another machine's float noise, and the suite must pass with any.
TEST_SEED = int(os.environ.get("GEMEL_TEST_SEED", "0"))
SMALL_RUN = {"sample.train_per_entity": 1, "sample.dev_per_entity": 1, "sample.test_per_entity": 1,
             "prepare.limit.test": 12, "train.epochs": 1, "train.dev_limit": 12, "train.eval_every": 1000, "train.seed": TEST_SEED}


def project_env() -> dict[str, str]:
    """The environment of a DVC or stage subprocess: this venv's python first on PATH (dvc.yaml
    runs `python -m stages.<name>`), no hub, and a git identity for `dvc exp run`'s commits."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
            "GIT_AUTHOR_NAME": "gemel tests", "GIT_AUTHOR_EMAIL": "tests@gemel.invalid",
            "GIT_COMMITTER_NAME": "gemel tests", "GIT_COMMITTER_EMAIL": "tests@gemel.invalid"}


def sh(cwd: Path, *argv: str, timeout: int = 1200) -> str:
    """Run a command in `cwd`; its output, or a failure that shows the end of it."""
    res = subprocess.run(list(argv), cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(argv)} exited {res.returncode} in {cwd}:\n{(res.stdout + res.stderr)[-4000:]}"
    return res.stdout + res.stderr


def set_params(path: Path, values: dict[str, object]) -> None:
    """Edit params.yaml as a user would (dotted keys), keeping the rest."""
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in values.items():
        *parents, last = key.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def new_project(dest: Path) -> Path:
    """A fresh project as a clone would have it (the working tree's files under test), git and DVC
    initialised, the small run's params committed."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if name.startswith(PROJECT_FILES) and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    set_params(dest / "params.yaml", SMALL_RUN)
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "small run")
    return dest


@pytest.fixture(scope="session")
def sample_project(tmp_path_factory) -> Path:
    """The README's main command, `dvc repro`, on a small draw of the embedded sample: every stage
    through DVC to the run's report.html. Shared, read-only, by every test that needs a trained
    run (copy it to change it: `copy_project`)."""
    project = new_project(tmp_path_factory.mktemp("project"))
    sh(project, "dvc", "repro", "--quiet")
    return project


def copy_project(project: Path, dest: Path) -> Path:
    """A copy of a project (git, DVC cache and outputs too) that a test may change."""
    shutil.copytree(project, dest, symlinks=True)
    return dest


# ------------------------------------------------------------------ two workers (make test: -n 2)

# The modules that use the shared run: under pytest-xdist they go to one worker together, so that
# the run is made once per session, not once per worker. (xdist's own `--dist loadgroup` cannot do
# this under pytest 9: it renames items through an attribute pytest no longer reads.)
SHARED_RUN_MODULES = {"tests/test_commands.py", "tests/test_link.py", "tests/test_link_corpus.py"}
# The slowest modules first, the shared run's before all (measured under -n 2; the rest keep their
# order): a worker that starts a long module last would leave the other idle at the end.
SLOWEST_FIRST = ("test_commands", "test_link", "test_link_corpus", "test_faults", "test_real_data_command", "test_model",
                 "test_workflow", "test_llm_cache", "test_determinism", "test_dag", "test_prepare_cli")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker and per stage it starts: two processes of two threads each on two cores
    # wait on each other (test_determinism's two pipelines: 43 s at two threads, 23 s at one).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 (xdist's types)
    """A module's tests run on one worker (its module fixtures are made once), and the modules of
    the shared run all on the same one."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "shared run" if module in SHARED_RUN_MODULES else module

    return SharedRunScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slowest modules first (SLOWEST_FIRST), each module's tests still together and in order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))
