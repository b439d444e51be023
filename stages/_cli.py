"""What every stage CLI shares: `--params FILE` and `--set section.key=value` overrides, and one
way to turn an expected failure (a GemelError) into a one-line message and exit status 2; any other
exception is a bug and keeps its traceback. Every stage's report also says what the stage cost:
`cost()`, its wall time and the process's peak memory."""
from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from gemel.config import load_params
from gemel.errors import GemelError

# When the stage began: `run` resets it, so a process running several stages (the determinism
# test) times each; the import of the module stands in for a main called directly.
_started = time.perf_counter()


def cost() -> dict[str, float]:
    """Wall seconds since the stage began, the process's peak resident memory so far (MiB;
    everything the stage loaded, the interpreter and torch included) and that of the largest child
    process it waited for, if any (the trie's forked tokenizers: mostly the stage's pages, shared)."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(time.perf_counter() - _started, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
            "peak_rss_children_mib": round(child_kib / 1024, 1)}


def parse(description: str | None, argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one param, e.g. --set model.use_image=false (repeatable)")
    args = ap.parse_args(argv)
    return load_params(args.params, args.overrides)


def run(stage: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a stage's main; a GemelError (an expected failure: bad input, a missing file, a bad
    setting) prints `<stage>: error: <message>` on one line and exits 2. Anything else keeps its
    traceback: catching a builtin such as ValueError would hide real bugs."""
    global _started
    _started = time.perf_counter()
    try:
        return main(argv)
    except GemelError as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
        print(f"{stage}: error: {message}", file=sys.stderr)
        return 2
