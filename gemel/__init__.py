"""gemel: generative multimodal entity linking (GEMEL, Shi et al. 2023) as reproducible stages.

`from gemel import Linker`: `Linker.from_run(run_dir).link([...])` links new inputs with a
trained run (imported on first use: importing gemel stays cheap)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Linker"]


def __getattr__(name: str) -> Any:
    if name == "Linker":  # torch and transformers load only when the linker is asked for
        from gemel.link.linker import Linker

        return Linker
    raise AttributeError(f"module 'gemel' has no attribute {name!r}")
