"""Shared test fixtures. Models load once per test session (module-level caches in gemel)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
