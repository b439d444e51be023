"""MkDocs hook (mkdocs.yml `hooks:`): a page line `<!-- gemel-link-help -->` becomes the output of
`gemel link --help`, taken from gemel/cli.py's own parser at build time, so the page cannot drift
from the CLI. Importing gemel.cli is cheap: torch loads only when a run is linked."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

MARKER = "<!-- gemel-link-help -->"
ROOT = Path(__file__).resolve().parents[1]


def link_help() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from gemel import cli

    out = io.StringIO()
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width, the same page everywhere
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.main(["link", "--help"])
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **_kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, "```text\n" + link_help() + "\n```")
