"""What every stage CLI shares: `--params FILE` and `--set section.key=value` overrides, and one
way to turn a known error into a message and exit status 2 instead of a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from gemel.config import ConfigError, load_params


def parse(description: str | None, argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one param, e.g. --set model.use_image=false (repeatable)")
    args = ap.parse_args(argv)
    return load_params(args.params, args.overrides)


def run(stage: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a stage's main; ConfigError and the stage's own input errors print one line and exit 2."""
    try:
        return main(argv)
    except (ConfigError, *errors) as e:
        print(f"{stage}: error: {e}", file=sys.stderr)
        return 2
