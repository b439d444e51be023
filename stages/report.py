"""report: one run's files ({train.out}/{model.llm}/: predictions.parquet, metrics.json, run.json and
the training curves) + {prepare.out}/mentions.parquet, {candidates.out}/candidates.parquet and
{features.out}/images.parquet -> {train.out}/{model.llm}/report.html, one self-contained page
(gemel/report.py). The candidates and features tables are optional: without them the page lacks
the candidates and the encoder's view of each image."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from gemel.config import CandidatesParams, FeaturesParams, ModelParams, TrainParams, section
from gemel.data.tables import read_mentions
from gemel.metrics import MetricsError
from gemel.report import ReportError, collect, render, write_page
from stages import _cli


def read_optional(path: Path, columns: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise ReportError(f"{path}: not readable with columns {', '.join(columns)}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    run_dir = Path(section(params, "train", TrainParams).out) / section(params, "model", ModelParams).llm
    mentions_path = Path(params["prepare"]["out"]) / "mentions.parquet"
    if not mentions_path.is_file():
        raise ReportError(f"{mentions_path}: no such file (run the prepare stage first)")
    t0 = time.perf_counter()
    candidates = read_optional(Path(section(params, "candidates", CandidatesParams).out) / "candidates.parquet",
                               ["id", "cand_ids", "cand_names", "cand_sources"])
    features = read_optional(Path(section(params, "features", FeaturesParams).out) / "images.parquet", ["image", "ok"])
    page = collect(run_dir, read_mentions(mentions_path), candidates, root=".", features_ok=features)
    text = render(page)
    write_page(text, run_dir / "report.html")
    wrong = int((~page.rows["correct"]).sum())
    print(f"report: {run_dir / 'report.html'}: {len(page.rows)} mentions ({wrong} wrong), "
          f"{len(text.encode()) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("report", main, errors=(ReportError, MetricsError)))
