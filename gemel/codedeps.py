"""The code a stage runs, found statically: `stages/<name>.py` and every module of gemel/ or stages/
it imports, transitively. dvc.yaml lists exactly this as each stage's code deps (tests/test_code_deps.py
checks it) and the Snakemake rules compute their `code` inputs with it, so a module that a stage
starts to import cannot be forgotten in either.

Every import statement counts, also one inside a function or under `if TYPE_CHECKING:`: a lazy
import is still code the stage may run, and an extra dep only costs a rerun. A package's
`__init__.py` counts only when the package itself is imported (`import gemel`, `from gemel import
Linker`), not as the parent of a submodule: the parents hold docstrings and gemel's lazy `Linker`,
no stage logic, and following that lazy import would make every stage depend on the linker (the test
checks that they stay so).
"""
from __future__ import annotations

import ast
from pathlib import Path

LOCAL_PACKAGES = ("gemel", "stages")


class CodeDepsError(ValueError):
    """A stage or an imported local module has no file."""


def module_file(module: str, root: Path) -> Path | None:
    """The file of a dotted module name under `root` (a module, or a package's __init__.py)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_local(module: str) -> bool:
    return module.split(".")[0] in LOCAL_PACKAGES


def imported_modules(path: Path, module: str, root: Path) -> set[str]:
    """The local modules that the file `path` (module `module`) imports, as dotted names."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _is_local(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of `module` (itself, if it is one)
                parts = module.split(".")[:len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not _is_local(base):
                continue
            # `from pkg import name`: a submodule when it has a file, else a name defined in pkg.
            subs = {f"{base}.{alias.name}" for alias in node.names}
            found.update(s for s in subs if module_file(s, root) is not None)
            if any(module_file(s, root) is None for s in subs):
                found.add(base)
    return found


def stage_code(stage: str, root: str | Path = ".") -> list[str]:
    """Sorted POSIX paths, relative to `root` (the repository): `stages/<stage>.py` and every local
    module it imports, transitively."""
    root = Path(root)
    start = f"stages.{stage}"
    if module_file(start, root) is None:
        raise CodeDepsError(f"no stage file stages/{stage}.py under {root}")
    seen: dict[str, Path] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            raise CodeDepsError(f"{name} is imported (by the {stage} stage's code) but has no file under {root}")
        seen[name] = path
        todo.extend(imported_modules(path, name, root) - seen.keys())
    return sorted(p.relative_to(root).as_posix() for p in seen.values())
