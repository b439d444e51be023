"""report: one run's files ({train.out}/{model.llm}/: predictions.parquet, metrics.json, run.json and
the training curves) + {prepare.out}/mentions.parquet, {candidates.out}/candidates.parquet and
{features.out}/images.parquet -> {train.out}/{model.llm}/report.html, one self-contained page
(gemel/evaluate/report.py)."""
from __future__ import annotations

import sys
import time

from gemel.evaluate.report import run_report, write_page
from gemel.paths import REPORT_HTML, Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    a = Artifacts.of(_cli.parse(__doc__, argv))
    t0 = time.perf_counter()
    text, page = run_report(a)
    write_page(text, a.in_run(REPORT_HTML))
    wrong = int((~page.rows["correct"]).sum())
    print(f"report: {a.in_run(REPORT_HTML)}: {len(page.rows)} mentions ({wrong} wrong), "
          f"{len(text.encode()) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("report", main))
