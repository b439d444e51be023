"""summarize: the metrics.json of every run of a sweep -> {train.out}/{summarize.kind}/summary.csv,
summary.md, a plot (scales: summarize.metric against LLM size, log x; ablations: one bar each;
datasets: every preset whose files are here, one group of bars each with its baselines; seeds: one
bar per seed, with mean and std rows in the table) and
report.html (the table, the plot and a link to each run's report.html)."""
from __future__ import annotations

import json
import sys

from gemel.atomic import write_text_atomic
from gemel.config import ConfigError, SummarizeParams, section
from gemel.summary import dataset_table, plot, seed_table, summary_html, summary_table, to_markdown
from gemel.workflow import ablation_runs, dataset_runs, scale_runs, seed_runs, summary_files
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    p = section(params, "summarize", SummarizeParams) if "summarize" in params else SummarizeParams()
    files = summary_files(params, p.kind)  # checks the kind
    if p.kind == "datasets":
        runs, skipped = dataset_runs(params)
        for name, why in skipped:
            print(f"summarize: skipping {name}: {why}", file=sys.stderr)
    else:
        runs = {"scales": scale_runs, "ablations": ablation_runs, "seeds": seed_runs}[p.kind](params)
    if not runs:
        raise ConfigError(f"summarize: no runs for kind '{p.kind}' in params.yaml")
    if p.kind == "datasets":
        table = dataset_table(runs, p.metric)
    elif p.kind == "seeds":
        table = seed_table(runs, p.metric)
    else:
        table = summary_table(runs, params["llms"], p.metric)
    write_text_atomic(table.to_csv(index=False), files["csv"])
    write_text_atomic(to_markdown(table), files["md"])
    plot(table, p.kind, p.metric, files["png"])
    html = files["html"]  # the sweep's page beside its table
    write_text_atomic(summary_html(p.kind, table, files["png"], runs, html), html)
    print(json.dumps({"kind": p.kind, "runs": len(table), **files,
                      p.metric: dict(zip(table[table.columns[0]], table[p.metric].round(4)))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("summarize", main))
