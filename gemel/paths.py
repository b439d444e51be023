"""Where every artifact of the pipeline lives. The stages, `gemel link`, the benchmarks and the
Snakemake rules all ask here, so each path is written once; dvc.yaml, which cannot import Python,
is checked against this module by tests/test_dag.py.

Shared work sits in one folder per section (`prepare.out`, `features.out`, `retrieve.out`,
`candidates.out`, `trie.out`); one trained model, a *run*, in `{train.out}/{model.llm}/`. The
trie depends only on the KB and the LLM's tokenizer, so every run of one LLM shares
`{trie.out}/{llm}.npz` (and its report, `{llm}.json`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# prepare.out
MENTIONS = "mentions.parquet"
KB = "kb.parquet"
PREPARE_REPORT = "report.json"
# features.out
FEATURES = "images.parquet"
FEATURES_REPORT = "report.json"
# retrieve.out
DEMOS = "demos.parquet"
POOL = "pool.parquet"
# candidates.out
CANDIDATES = "candidates.parquet"
CANDIDATES_REPORT = "report.json"
# What the candidates stage cost, apart from report.json: train reads the report, and a timing in it
# would retrain on every rerun that gives the same ranker.
CANDIDATES_COST = "cost.json"
KB_EMBEDDINGS = "kb_embeddings.parquet"  # the dense source's KB vectors, a cache keyed by KB and encoder
# a run folder, {train.out}/{model.llm}/
MAPPER = "mapper.safetensors"
RUN_RECORD = "run.json"
TRAIN_LOSS = "train_loss.csv"
DEV_ACCURACY = "dev_accuracy.csv"
TRAIN_REPORT = "train_report.json"
PREDICTIONS = "predictions.parquet"
DECODE_REPORT = "decode_report.json"
METRICS = "metrics.json"
BREAKDOWN = "breakdown.md"
REPORT_HTML = "report.html"


def trie_file(tries: str | Path, llm: str) -> Path:
    return Path(tries) / f"{llm}.npz"


def trie_report_file(tries: str | Path, llm: str) -> Path:
    return Path(tries) / f"{llm}.json"


@dataclass(frozen=True)
class Artifacts:
    """Every file of one configuration of params (a `dvc repro`, or one Snakemake run)."""
    prepared: Path
    features_dir: Path
    demos_dir: Path
    candidates_dir: Path
    tries: Path
    run: Path  # {train.out}/{model.llm}
    llm: str

    @classmethod
    def of(cls, params: dict[str, Any]) -> Artifacts:
        llm = params["model"]["llm"]
        return cls(prepared=Path(params["prepare"]["out"]), features_dir=Path(params["features"]["out"]),
                   demos_dir=Path(params["retrieve"]["out"]), candidates_dir=Path(params["candidates"]["out"]),
                   tries=Path(params["trie"]["out"]), run=Path(params["train"]["out"]) / llm, llm=llm)

    @property
    def mentions(self) -> Path:
        return self.prepared / MENTIONS

    @property
    def kb(self) -> Path:
        return self.prepared / KB

    @property
    def prepare_report(self) -> Path:
        return self.prepared / PREPARE_REPORT

    @property
    def features(self) -> Path:
        return self.features_dir / FEATURES

    @property
    def features_report(self) -> Path:
        return self.features_dir / FEATURES_REPORT

    @property
    def demos(self) -> Path:
        return self.demos_dir / DEMOS

    @property
    def pool(self) -> Path:
        return self.demos_dir / POOL

    @property
    def candidates(self) -> Path:
        return self.candidates_dir / CANDIDATES

    @property
    def candidates_report(self) -> Path:
        return self.candidates_dir / CANDIDATES_REPORT

    @property
    def candidates_cost(self) -> Path:
        return self.candidates_dir / CANDIDATES_COST

    @property
    def kb_embeddings(self) -> Path:
        return self.candidates_dir / KB_EMBEDDINGS

    @property
    def trie(self) -> Path:
        return trie_file(self.tries, self.llm)

    @property
    def trie_report(self) -> Path:
        return trie_report_file(self.tries, self.llm)

    def in_run(self, name: str) -> Path:
        """A file of the run folder, by its name above (MAPPER, METRICS, ...)."""
        return self.run / name
