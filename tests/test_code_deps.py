"""Code deps that cannot drift: dvc.yaml lists, per stage, exactly the stage file and the gemel/ and
stages/ modules it imports transitively (gemel.codedeps); the Snakemake rules compute the same list
(test_workflow checks that their inputs equal dvc.yaml's, stage by stage)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from gemel.codedeps import LOCAL_PACKAGES, CodeDepsError, stage_code

ROOT = Path(__file__).resolve().parent.parent
CODE = re.compile(rf"^({'|'.join(LOCAL_PACKAGES)})/")
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_dvc_yaml_lists_exactly_the_code_each_stage_imports(stage: str) -> None:
    listed = [d for d in DVC_STAGES[stage]["deps"] if CODE.match(d)]
    expected = stage_code(stage, ROOT)
    assert sorted(listed) == expected, (
        f"dvc.yaml stage {stage}: missing {sorted(set(expected) - set(listed))}, "
        f"not imported {sorted(set(listed) - set(expected))}")
    assert listed == expected, f"dvc.yaml stage {stage}: keep the code deps sorted"


def test_the_snakemake_rules_compute_their_code_inputs() -> None:
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        # A literal code path would be a second list to keep in step; stage_code is the one.
        assert not re.findall(r"""["'](?:gemel|stages)/[\w/]+\.py["']""", text), smk.name
        for code in re.findall(r"^\s+code=(.*)$", text, flags=re.M):
            assert re.fullmatch(r'stage_code\("\w+"\),|DATASET_CODE,', code), (smk.name, code)


def test_package_inits_hold_no_local_imports() -> None:
    """stage_code counts a package's __init__.py only when the package itself is imported; that is
    right while the parents run no local code when a submodule is imported."""
    for init in sorted(p for pkg in LOCAL_PACKAGES for p in (ROOT / pkg).rglob("__init__.py")):
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else ["relative"]
            else:
                continue
            assert not any(n == "relative" or n.split(".")[0] in LOCAL_PACKAGES for n in names), init


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_imports_are_followed_in_every_form(tmp_path: Path) -> None:
    write(tmp_path, {
        "stages/__init__.py": "",
        "stages/_cli.py": "import argparse\n",
        "stages/one.py": "import gemel.a\nfrom gemel import b\nfrom gemel.pkg import thing\nfrom stages import _cli\n",
        "gemel/__init__.py": "def __getattr__(name):\n    from gemel import heavy\n",
        "gemel/heavy.py": "",
        "gemel/a.py": "def f():\n    from gemel.pkg import sub  # a lazy import counts\n",
        "gemel/b.py": "import numpy\nfrom .c import x\n",
        "gemel/c.py": "from . import a\n",
        "gemel/pkg/__init__.py": "thing = 1\n",
        "gemel/pkg/sub.py": "from .. import c\nfrom .sibling import y\n",
        "gemel/pkg/sibling.py": "",
        "gemel/unused.py": "",
    })
    assert stage_code("one", tmp_path) == [
        "gemel/a.py", "gemel/b.py", "gemel/c.py", "gemel/pkg/__init__.py", "gemel/pkg/sibling.py",
        "gemel/pkg/sub.py", "stages/_cli.py", "stages/one.py"]


def test_a_missing_module_or_stage_is_named(tmp_path: Path) -> None:
    write(tmp_path, {"stages/one.py": "from gemel.gone import x\n"})
    with pytest.raises(CodeDepsError, match=r"gemel\.gone is imported .*one stage"):
        stage_code("one", tmp_path)
    with pytest.raises(CodeDepsError, match=r"no stage file stages/two\.py"):
        stage_code("two", tmp_path)


def test_gemel_modules_import_no_cycle() -> None:
    """Each fact has one home, so no two modules of gemel/ need each other (lazy imports count)."""
    from gemel.codedeps import imported_modules, module_file

    graph = {}
    for path in sorted((ROOT / "gemel").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = {m for m in imported_modules(path, module, ROOT) if module_file(m, ROOT)} - {module}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, trail + [module])
        done.add(module)

    for module in graph:
        visit(module, [])


# gemel/'s rooms from the bottom up (docs/developer.md, Layout): a module imports from its own room or below.
LAYERS = [
    {"gemel.config", "gemel.paths", "gemel.errors", "gemel.atomic", "gemel.hashing", "gemel.stack"},
    {"gemel.data"},
    {"gemel.vision", "gemel.search"},
    {"gemel.generation"},
    {"gemel.link"},
    {"gemel.evaluate"},
    {"gemel", "gemel.cli", "gemel.workflow", "gemel.summary", "gemel.codedeps"},
]


def layer_of(module: str) -> tuple[int, str]:
    """(layer, room) of a gemel module: its subpackage, or itself at the top of gemel/."""
    parts = module.split(".")
    room = ".".join(parts[:2])
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i, room
    raise AssertionError(f"{module} belongs to no layer: add its room to LAYERS and to docs/developer.md")


def test_gemel_rooms_import_only_downwards() -> None:
    """No module imports from a higher layer, and vision and search, side by side, not from each other."""
    from gemel.codedeps import imported_modules, module_file

    up = []
    for path in sorted((ROOT / "gemel").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        (mine, room) = layer_of(module)
        for imported in imported_modules(path, module, ROOT):
            if not module_file(imported, ROOT) or imported == "gemel":
                continue
            theirs, their_room = layer_of(imported)
            if theirs > mine or (theirs == mine and their_room != room and mine != len(LAYERS) - 1 and mine != 0):
                up.append(f"{module} -> {imported}")
    assert not up, "imports that go up a layer or across a room: " + ", ".join(up)
