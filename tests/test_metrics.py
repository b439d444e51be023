"""Metrics on a hand-made prediction table whose expected values were worked out by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gemel.data.tables import KB, MENTIONS, write_parquet_atomic
from gemel.evaluate.metrics import MetricsError, baselines, breakdown, breakdown_table, compute_metrics, gold_rank
from stages import _cli
from stages import evaluate as evaluate_stage

ROOT = Path(__file__).resolve().parent.parent
KB_NAMES = {"Paris", "Paris Hilton", "Texas", "Apple", "Apple Inc.", "Apple pie", "Jaguar", "Jaguar XK",
            "Jaguar Cars", "Mercury", "Freddie Mercury", "Queen", "Queen Victoria", "Queen Elizabeth II",
            "Ghost", "Ghosts"}

# id, gold_name (None: NIL), has_image, pred_name, beams (best first), beam_scores
ROWS = [
    ("a", "Paris", True, "Paris", ["Paris", "Paris Hilton", "Texas"], [-0.1, -2.0, -3.0]),          # rank 1
    ("b", "Apple Inc.", True, "Apple", ["Apple", "Apple Inc.", "Apple pie"], [-1.0, -1.0, -2.0]),  # rank 2, tied score
    ("c", "Jaguar Cars", True, "jaguar cars", ["jaguar cars", "Jaguar", "Jaguar XK"], [-1, -2, -3]),  # case differs: absent
    ("d", None, True, "Paris", ["Paris"], [-0.5]),                                                    # NIL
    ("e", "Ghost Entity", False, "Ghost", ["Ghost", "Ghosts"], [-1.0, -1.5]),                        # gold not in KB
    ("f", "Mercury", False, "Mercury", ["Mercury", "Freddie Mercury", "Mercury"], [-0.2, -0.2, -3]),  # rank 1
    ("g", "Queen", True, "Queen Elizabeth II", ["Queen Elizabeth II", "Queen Victoria", "Queen", "Texas"],
     [-1, -2, -3, -4]),                                                                               # rank 3
    ("h", None, False, "Texas", ["Texas"], [-1.0]),                                                   # NIL, no image
]


def make_predictions(rows=ROWS) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["id", "gold_name", "has_image", "pred_name", "beams", "beam_scores"])
    df["split"] = "test"
    df["mention"] = df["gold_name"].fillna("someone")
    df["is_nil"] = df["gold_name"].isna()
    df["gold_id"] = [None if g is None else f"Q{i}" for i, g in enumerate(df["gold_name"])]
    df["pred_id"] = [f"P{i}" for i in range(len(df))]
    return df


def test_metrics_by_hand():
    m = compute_metrics(make_predictions(), KB_NAMES, [1, 3, 5])
    # Evaluated: a b c e f g (6). Correct: a, f. Gold ranks: a1 b2 c0 e0 f1 g3.
    assert m == {
        "accuracy": 0.3333,               # 2/6
        "hits@1": 0.3333,                 # a, f
        "hits@3": 0.6667,                 # a, b, f, g
        "hits@5": 0.6667,
        "mrr": 0.4722,                    # (1 + 1/2 + 0 + 0 + 1 + 1/3) / 6
        "accuracy_with_image": 0.25,      # a of a b c g
        "accuracy_without_image": 0.5,    # f of e f
        "evaluated": 6,
        "nil_removed": 2,
        "missing_image": 2,               # e, f (h is NIL)
        "gold_unreachable": 1,            # e
        "total": 8,
    }


def test_edge_cases():
    assert gold_rank("X", None) == 0 and gold_rank("X", ["Y", "X", "X"]) == 2
    all_image = [r for r in ROWS if r[2]]
    m = compute_metrics(make_predictions(all_image), KB_NAMES, [2])
    assert "accuracy_with_image" not in m and m["missing_image"] == 0 and m["hits@2"] == 0.5  # a b of a b c g
    only_nil = compute_metrics(make_predictions([ROWS[3], ROWS[7]]), KB_NAMES, [1])
    assert only_nil["accuracy"] is None and only_nil["evaluated"] == 0 and only_nil["nil_removed"] == 2
    null_pred = make_predictions([("z", "Paris", True, None, [], [])])
    assert compute_metrics(null_pred, KB_NAMES, [1])["accuracy"] == 0.0
    bad = make_predictions()
    bad.loc[0, "is_nil"] = False
    bad.loc[0, "gold_name"] = None
    with pytest.raises(MetricsError, match="row id 'a': column 'gold_name' is null"):
        compute_metrics(bad, KB_NAMES, [1])


def _write_inputs(tmp_path: Path, pred: pd.DataFrame) -> list[str]:
    write_parquet_atomic(pred, tmp_path / "results" / "smollm2-135m" / "predictions.parquet")
    write_parquet_atomic(pd.DataFrame({"id": ["t0"], "dataset": "fx", "split": "train", "text": "Paris.", "mention": "Paris",
                                       "start": 0, "end": 5, "image": None, "entity_id": "E0", "entity_name": "Paris",
                                       "is_nil": False}), tmp_path / "prepared" / "mentions.parquet", MENTIONS)
    kb = pd.DataFrame({"entity_id": [f"E{i}" for i in range(len(KB_NAMES))], "name": sorted(KB_NAMES),
                       "description": ""})
    write_parquet_atomic(kb, tmp_path / "prepared" / "kb.parquet", KB)
    return ["--params", str(ROOT / "params.yaml"), "--set", f"train.out={tmp_path / 'results'}",
            "--set", "model.llm=smollm2-135m", "--set", f"prepare.out={tmp_path / 'prepared'}",
            "--set", "evaluate.hits_at=[1, 2]", "--set", f"candidates.out={tmp_path / 'no-candidates'}"]


def run_cli(argv: list[str]) -> int:
    return _cli.run("evaluate", evaluate_stage.main, argv)


def test_cli_end_to_end(tmp_path, capsys):
    argv = _write_inputs(tmp_path, make_predictions())
    assert run_cli(argv) == 0
    written = json.loads((tmp_path / "results" / "smollm2-135m" / "metrics.json").read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert written["accuracy"] == 0.3333 and written["hits@2"] == 0.5 and "hits@3" not in written
    assert written["gold_unreachable"] == 1 and written["total"] == 8


def test_cli_missing_file_or_column(tmp_path, capsys):
    argv = _write_inputs(tmp_path, make_predictions().drop(columns="beams"))
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "smollm2-135m/predictions.parquet: missing column(s) beams" in err
    assert not (tmp_path / "results" / "smollm2-135m" / "metrics.json").exists()

    (tmp_path / "results" / "smollm2-135m" / "predictions.parquet").unlink()
    assert run_cli(argv) == 2
    assert "predictions.parquet: no such file" in capsys.readouterr().err


# The baselines and the breakdown on a hand-made case (expected values worked out by hand).
BASE_KB = ["Paris", "Paris Hilton", "Texas", "Apple", "Apple Inc.", "Apple pie", "Jaguar", "Jaguar Cars",
           "Mercury", "Freddie Mercury", "Queen Victoria"]
# mention, gold name, model's prediction, has_image, gold among the candidates
BASE_ROWS = [
    ("Jaguar", "Jaguar Cars", "Jaguar Cars", True, True),  # alias: Jaguar Cars (2 of 3 in train)   copy wrong
    ("jaguar", "Jaguar", "Jaguar", True, True),            # alias (case-folded): Jaguar Cars, wrong
    ("Hilton", "Paris Hilton", "Paris", False, True),      # no alias; the one name with "hilton"
    ("Apple", "Apple", "Apple", True, True),               # no alias; shortest of Apple, Apple Inc., Apple pie; copy right
    ("Mercury", "Freddie Mercury", "Mercury", False, False),  # shortest name with "mercury" is Mercury: wrong
    ("Nobody Here", "Texas", "Paris", True, False),        # no name holds both words: the mention itself, wrong
]


def base_inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    kb = pd.DataFrame({"entity_id": [f"K{i}" for i in range(len(BASE_KB))], "name": BASE_KB, "description": None})
    eid = dict(zip(BASE_KB, kb["entity_id"], strict=True))
    train = [("Jaguar", "Jaguar Cars"), ("JAGUAR", "Jaguar Cars"), ("Jaguar", "Jaguar"), ("Queen", "Queen Victoria")]
    mentions = pd.DataFrame({"id": [f"t{i}" for i in range(4)], "split": "train", "mention": [m for m, _ in train],
                             "entity_id": [eid[g] for _, g in train], "entity_name": [g for _, g in train], "is_nil": False})
    rows = BASE_ROWS + [("Nil Thing", None, "Texas", True, False)]
    pred = pd.DataFrame({"id": [f"p{i}" for i in range(len(rows))], "split": "test", "mention": [r[0] for r in rows],
                         "gold_name": [r[1] for r in rows], "gold_id": [eid.get(r[1]) for r in rows],
                         "pred_name": [r[2] for r in rows], "has_image": [r[3] for r in rows],
                         "is_nil": [r[1] is None for r in rows]})
    cands = pd.DataFrame({"id": pred["id"], "cand_ids": [[eid[r[1]], "K0"] if r[4] else ["K0"] for r in rows]})
    return pred, mentions, kb, cands


def test_baselines_by_hand() -> None:
    pred, mentions, kb, _ = base_inputs()
    scores, rule = baselines(pred, mentions, kb)
    assert rule == ["Jaguar Cars", "Jaguar Cars", "Paris Hilton", "Apple", "Mercury", "Nobody Here"]
    assert scores == {"copy_mention": {"accuracy": 0.1667}, "alias_prior": {"accuracy": 0.5}}


def test_breakdown_by_hand() -> None:
    pred, mentions, kb, cands = base_inputs()
    _, rule = baselines(pred, mentions, kb)
    b = breakdown(pred, mentions, rule, cands)
    assert b == {
        "gold_seen_in_training": {"seen": {"mentions": 2, "accuracy": 1.0, "alias_prior": 0.5},
                                  "unseen": {"mentions": 4, "accuracy": 0.25, "alias_prior": 0.5}},
        "mention_equals_gold_name": {"equal": {"mentions": 2, "accuracy": 1.0, "alias_prior": 0.5},
                                     "different": {"mentions": 4, "accuracy": 0.25, "alias_prior": 0.5}},
        "gold_in_candidates": {"inside": {"mentions": 4, "accuracy": 0.75, "alias_prior": 0.75},
                               "outside": {"mentions": 2, "accuracy": 0.0, "alias_prior": 0.0}},
        "image": {"with": {"mentions": 4, "accuracy": 0.75, "alias_prior": 0.5},
                  "without": {"mentions": 2, "accuracy": 0.0, "alias_prior": 0.5}},
    }
    assert "gold_in_candidates" not in breakdown(pred, mentions, rule, None)  # no candidates table, no bucket
    table = breakdown_table(b)
    assert "| gold_in_candidates | outside | 2 | 0.000 | 0.000 |" in table and table.count("\n") == 10


def mentions_and_predictions(kb: pd.DataFrame, rows: list[tuple[str, str, str, str]]
                             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The mentions table of (id, split, mention, entity id) rows, and predictions for its test
    split (each predicting its gold: the baselines read only mention and gold)."""
    names = dict(zip(kb["entity_id"], kb["name"], strict=True))
    mentions = pd.DataFrame({"id": [r[0] for r in rows], "split": [r[1] for r in rows], "mention": [r[2] for r in rows],
                             "entity_id": [r[3] for r in rows], "entity_name": [names[r[3]] for r in rows],
                             "is_nil": False})
    test = mentions[mentions["split"] == "test"]
    pred = pd.DataFrame({"id": test["id"], "split": "test", "mention": test["mention"], "gold_id": test["entity_id"],
                         "gold_name": test["entity_name"], "pred_name": test["entity_name"], "has_image": True,
                         "is_nil": False})
    return mentions, pred


def test_alias_prior_baseline_never_sees_test_gold() -> None:
    """The alias rule counts the training split only: test (and dev) gold that would make it right
    here must not, or the baseline the model is compared with is inflated."""
    kb = pd.DataFrame({"entity_id": ["E1", "E2", "E3", "E4"],
                       "name": ["Michael Jordan", "Jordan River", "Zed", "Zed Corp"], "description": None})
    rows = [("t0", "train", "Jordan", "E1"), ("d0", "dev", "Zed", "E4"),
            ("x0", "test", "Jordan", "E2"), ("x1", "test", "jordan", "E2"), ("x2", "test", "Zed", "E4")]
    mentions, pred = mentions_and_predictions(kb, rows)
    scores, rule = baselines(pred, mentions, kb)
    # Jordan: the one training mention's entity; Zed: no training alias, the shortest name with "zed".
    assert rule == ["Michael Jordan", "Michael Jordan", "Zed"]
    assert scores["alias_prior"] == {"accuracy": 0.0}


def test_alias_prior_baseline_keeps_case_folding_only() -> None:
    """The baseline computes what it computed before the candidates' keys were accent-folded, so
    its number stays comparable across versions: "Muller" neither finds "Thomas Müller" nor uses
    the training alias "Müller", while the candidate generator (folded) does both."""
    from gemel.search.candidates import AliasTable, Generator

    kb = pd.DataFrame({"entity_id": ["E1", "E2"], "name": ["Thomas Müller", "Gerd Müller"], "description": None})
    rows = [("t0", "train", "Gerd Müller", "E2"), ("t1", "train", "Müller", "E2"),
            ("x0", "test", "Muller", "E2"), ("x1", "test", "Thomas Muller", "E1")]
    mentions, pred = mentions_and_predictions(kb, rows)
    scores, rule = baselines(pred, mentions, kb)
    assert rule == ["Muller", "Thomas Muller"] and scores["alias_prior"] == {"accuracy": 0.0}
    gen = Generator(kb, AliasTable.from_mentions(mentions), pool_size=5)
    muller, thomas = gen.pools(["Muller", "Thomas Muller"], ["", ""])
    assert dict(zip(muller.rows.tolist(), muller.sources, strict=True)) == {1: "alias+name", 0: "name"}
    assert thomas.rows[0] == 0
