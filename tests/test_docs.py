"""The docs: the MkDocs site builds under --strict (a broken link or anchor, a page outside the nav, a
missing included file or a bad API reference is an error), and README.md stays a short front page
whose relative links all lead somewhere. A few seconds: mkdocstrings reads the code statically."""
from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 160
# [text](target) and ![alt](target), not inside code spans; the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_the_site_builds_strictly(tmp_path: Path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    api = (site / "api" / "index.html").read_text()
    for anchor in ("gemel.link.linker.Linker.from_run", "gemel.link.linker.Linker.link", "gemel.cli.main"):
        assert f'id="{anchor}"' in api, f"API reference lacks {anchor}"
    linking = (site / "linking" / "index.html").read_text()
    assert "usage: gemel link" in linking and "gemel-link-help" not in linking, "the --help hook did not run"
    started = html.unescape((site / "getting-started" / "index.html").read_text())
    assert "--8<--" not in started, "a snippet was left unexpanded"
    metrics = (ROOT / "results" / "smollm2-135m" / "metrics.json").read_text().strip()
    assert metrics in started, "the committed metrics.json is not included whole"


def test_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {MAX_README_LINES})"


def readme_links() -> list[str]:
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)  # code blocks
    text = re.sub(r"`[^`]*`", "", text)  # code spans
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_relative_links_point_at_files():
    links = readme_links()
    assert links, "README.md links into docs/"
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    docs = [t.split("#", 1)[0] for t in links if t.startswith("docs/") and t.endswith(".md")]
    unlisted = [t for t in docs if Path(t).relative_to("docs").as_posix() not in nav]
    assert not unlisted, f"README.md links to docs pages outside the mkdocs.yml nav: {unlisted}"


def test_link_check_catches_a_missing_file(tmp_path: Path, monkeypatch):
    fake = tmp_path / "README.md"
    fake.write_text("[ok](README.md) [gone](docs/gone.md) `[code](x.md)` [web](https://example.org)\n")
    monkeypatch.setattr(sys.modules[__name__], "README", fake)
    assert readme_links() == ["README.md", "docs/gone.md"]
