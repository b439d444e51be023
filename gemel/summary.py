"""Sweep summaries: the metrics.json of several runs -> one table (CSV, Markdown) and one plot
(accuracy against LLM size on a log axis for the scales; one bar per run for the ablations; one
group of bars per dataset preset, the model beside its baselines, for the datasets)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from gemel.atomic import atomic_path
from gemel.errors import GemelError
from gemel.paths import REPORT_HTML
from gemel.workflow import Run, format_value


class SummaryError(GemelError, ValueError):
    """A run's metrics are missing or unreadable; the message names the file."""


# The reference baselines of metrics.json ("baselines": {name: {"accuracy": x}}), as table columns.
BASELINES = ("copy_mention", "alias_prior")


def read_metrics(path: str | Path) -> dict[str, float]:
    """The numbers of one metrics.json, nested keys joined with '.' (`hits@k.1`)."""
    return dict(_flatten(read_json(path)))


def read_json(path: str | Path) -> dict[str, Any]:
    """One metrics.json as written (strings too, e.g. decode.mode)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such metrics file (run the evaluate stage first)") from None
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def _flatten(data: dict[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def _metric(run: Run, metrics: dict[str, float], metric: str) -> float:
    if metric not in metrics:
        raise SummaryError(f"{run.metrics}: no metric '{metric}' (has: {', '.join(metrics)})")
    return metrics.pop(metric)


def _baselines(metrics: dict[str, float]) -> dict[str, float]:
    """The baselines' accuracy (popped from metrics); none for a metrics.json older than them."""
    return {b: metrics.pop(f"baselines.{b}.accuracy") for b in BASELINES if f"baselines.{b}.accuracy" in metrics}


def summary_table(runs: list[Run], llms: dict[str, dict[str, Any]], metric: str) -> pd.DataFrame:
    """One row per run, in the given order: name, llm, params_m, what changed, then the metrics
    (`metric` first, then the baselines' accuracy where metrics.json has them). Raises
    SummaryError when a run's metrics lack `metric`."""
    rows = []
    for run in runs:
        metrics = read_metrics(run.metrics)
        value = _metric(run, metrics, metric)
        changes = ", ".join(f"{k}={format_value(v)}" for k, v in run.overrides) or "-"
        rows.append({"name": run.name, "llm": run.llm, "params_m": llms[run.llm]["params_m"],
                     "overrides": changes, metric: value, **_baselines(metrics), **metrics})
    return pd.DataFrame(rows)


def dataset_table(runs: list[Run], metric: str) -> pd.DataFrame:
    """One row per dataset preset (runs of workflow.dataset_runs), in the given order: dataset,
    llm, evaluated mentions, `metric`, the baselines' accuracy (empty where metrics.json has none)
    and the decode mode. Raises SummaryError when a run's metrics lack `metric`."""
    rows = []
    for run in runs:
        data = read_json(run.metrics)
        metrics = dict(_flatten(data))
        value = _metric(run, metrics, metric)
        decode = data.get("decode")
        rows.append({"dataset": run.name, "llm": run.llm, "evaluated": metrics.get("evaluated"), metric: value,
                     **{b: float("nan") for b in BASELINES}, **_baselines(metrics),
                     "decode": decode.get("mode", "-") if isinstance(decode, dict) else "-"})
    table = pd.DataFrame(rows)
    table["evaluated"] = table["evaluated"].astype("Int64")  # an integer count, empty where absent
    return table


def seed_table(runs: list[Run], metric: str) -> pd.DataFrame:
    """One row per seed (runs of workflow.seed_runs): `metric` and the baselines' accuracy (these
    do not depend on the seed: a check that every run saw the same mentions), then a `mean` and a
    `std` row (sample standard deviation, ddof=1)."""
    rows = []
    for run in runs:
        metrics = read_metrics(run.metrics)
        rows.append({"seed": run.name, "llm": run.llm, "evaluated": metrics.get("evaluated"),
                     metric: _metric(run, metrics, metric), **_baselines(metrics)})
    table = pd.DataFrame(rows)
    values = table.drop(columns=["seed", "llm", "evaluated"]).astype(float)
    first = {"llm": table["llm"].iloc[0], "evaluated": table["evaluated"].iloc[0]}
    stats = pd.DataFrame([{"seed": "mean", **first, **values.mean().to_dict()},
                          {"seed": "std", **first, **values.std(ddof=1).to_dict()}])
    table = pd.concat([table, stats], ignore_index=True)
    table["evaluated"] = table["evaluated"].astype("Int64")  # a count (equal for every seed: the same mentions)
    return table


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (pandas' own needs the optional tabulate package)."""
    def cell(v: Any) -> str:
        if v is pd.NA:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, kind: str, metric: str, path: str | Path) -> None:
    """scales: metric against params_m (log x), one labelled point per LLM; ablations: bars;
    datasets: one group of bars per preset, the model then its baselines (when metric is accuracy)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        if kind == "scales":
            t = table.sort_values("params_m")
            ax.plot(t["params_m"], t[metric], marker="o")
            for _, row in t.iterrows():
                ax.annotate(row["llm"], (row["params_m"], row[metric]), textcoords="offset points",
                            xytext=(4, 6), fontsize=8)
            ax.set_xscale("log")
            # Ticks at the LLMs' own sizes: a narrow log range otherwise gets crowded minor labels.
            ax.set_xticks(list(t["params_m"]), [f"{v:g}" for v in t["params_m"]])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.margins(x=0.15)
            ax.set_xlabel("LLM parameters (millions, log scale)")
            ax.set_title(f"{metric} by LLM size")
        elif kind == "datasets":
            # The baselines are accuracies: beside another metric they would compare unlike things.
            series = [metric] + ([b for b in BASELINES if table[b].notna().any()] if metric == "accuracy" else [])
            width = 0.8 / len(series)
            x = list(range(len(table)))
            for i, col in enumerate(series):
                label = f"GEMEL ({', '.join(dict.fromkeys(table['llm']))})" if col == metric else col
                ax.bar([v + (i - (len(series) - 1) / 2) * width for v in x], table[col].fillna(0), width, label=label)
            ax.set_xticks(x, list(table["dataset"]))
            if len(series) > 1:
                ax.legend(fontsize=8)
            ax.set_title(f"{metric} by dataset")
        elif kind == "seeds":
            runs = table[~table["seed"].isin(["mean", "std"])]
            mean, std = (float(table.loc[table["seed"] == k, metric].iloc[0]) for k in ("mean", "std"))
            ax.bar(runs["seed"].astype(str), runs[metric])
            ax.axhline(mean, color="k", lw=1, label=f"mean {mean:.3f} ± {std:.3f} (std)")
            ax.legend(fontsize=8)
            ax.set_xlabel("train.seed")
            ax.set_title(f"{metric} by seed ({', '.join(dict.fromkeys(runs['llm']))})")
        else:
            ax.bar(table["name"], table[metric])
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
            ax.set_title(f"{metric} by ablation ({', '.join(dict.fromkeys(table['llm']))})")
        ax.set_ylabel(metric)
        ax.set_ylim(0, max(1.0, float(table[metric].max()) * 1.05))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save_atomic(fig, Path(path))
    finally:
        plt.close(fig)


def _save_atomic(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:  # keeps the .png suffix: matplotlib picks the format from it
        fig.savefig(tmp, dpi=120)


def summary_html(kind: str, table: pd.DataFrame, plot_png: str | Path, runs: list[Run], path: str | Path) -> str:
    """The sweep's page (gemel.evaluate.report.summary_page): the table, the plot embedded, and a link to each
    run's report.html relative to the page at `path` (none for a run whose report is not there)."""
    from gemel.evaluate.report import summary_page

    folder = Path(path).parent
    reports = {}
    for run in runs:
        report = Path(run.out) / run.llm / REPORT_HTML
        reports[run.name] = Path(os.path.relpath(report, folder)).as_posix() if report.is_file() else None
    return summary_page(f"{kind} summary", table, plot_png, reports, table.columns[0])

