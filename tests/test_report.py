"""The run report (gemel/evaluate/report.py, stages/report.py) and the sweep page of summarize.

Unit tests on hand-made tables: row order (wrong first, then the predictions' order), the bucket
filter against gemel.evaluate.metrics.breakdown's counts, escaping of `<script>`, a missing or unreadable
image shown as such. Then a real page in Debian's chromium (headless, through playwright): a small
run built from the embedded sample's stages (prepare, candidates, evaluate through their CLIs;
predictions made from the candidates, so no LLM is trained), one test image deleted and one
corrupted, `<script>` in a mention's text. The browser checks: no console error, one row per
evaluated mention, wrong rows first, every thumbnail decoded, the bucket filter's row count, and
that the injected script never ran.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gemel.evaluate.metrics import BUCKETS, breakdown, bucket_flags
from gemel.evaluate.report import (
    ReportError,
    bucket_keys,
    collect,
    mark_mention,
    order_rows,
    render,
    select_rows,
    summary_page,
    thumbnail,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
EVIL = "<script>window.pwned=1</script>"


# ------------------------------------------------------------------ hand-made tables

def tables(tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Five test mentions (one NIL) and two train ones; images: ok, ok, missing, unreadable."""
    img = tmp / "img"
    img.mkdir(exist_ok=True)
    Image.new("RGB", (300, 200), (200, 30, 30)).save(img / "a.png")
    Image.new("RGB", (50, 80), (30, 30, 200)).save(img / "b.jpg")
    (img / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    mentions = pd.DataFrame({
        "id": ["tr0", "tr1", "t0", "t1", "t2", "t3", "t4"],
        "dataset": "toy",
        "split": ["train", "train", "test", "test", "test", "test", "test"],
        "text": ["Paris is big.", "Java is an island.", f"A {EVIL} and Paris here.", "Java code", "Mars bar",
                 "Mercury rises", "Nothing"],
        "mention": ["Paris", "Java", "Paris", "Java", "Mars", "Mercury", "Nothing"],
        "start": [0, 0, 2 + len(EVIL) + 5, 0, 0, 0, 0],
        "end": [5, 4, 2 + len(EVIL) + 10, 4, 4, 7, 7],
        "image": [None, None, "img/a.png", "img/b.jpg", "img/gone.png", "img/bad.jpg", None],
        "entity_id": ["Q90", "Q3757", "Q90", "Q251", "S014", "Q308", None],
        "entity_name": ["Paris", "Java", "Paris", "Java (programming language)", "Mars (chocolate bar)",
                        "Mercury (planet)", None],
        "is_nil": [False, False, False, False, False, False, True],
    })
    test = mentions[mentions["split"] == "test"].reset_index(drop=True)
    pred = pd.DataFrame({
        "id": test["id"], "split": "test", "mention": test["mention"], "gold_id": test["entity_id"],
        "gold_name": test["entity_name"], "is_nil": test["is_nil"],
        "has_image": [True, True, False, False, False],
        # t0 right, t1 wrong, t2 right, t3 wrong, t4 NIL
        "pred_name": ["Paris", "Java", "Mars (chocolate bar)", "Mercury (element)", "Nothing"],
        "pred_id": ["Q90", "Q3757", "S014", "Q925", "X"],
        "beams": [["Paris"], ["Java", "Java (programming language)"], ["Mars (chocolate bar)"],
                  ["Mercury (element)", "Mercury (planet)"], ["Nothing"]],
        "beam_scores": [[-0.1], [-0.5, -0.7], [-0.2], [-1.0, -1.5], [-0.3]],
    })
    candidates = pd.DataFrame({
        "id": ["t0", "t1", "t2", "t3", "t4"],
        "cand_ids": [["Q90"], ["Q3757", "Q251"], ["S013"], ["Q925", "Q308"], []],
        "cand_names": [["Paris"], ["Java", "Java (programming language)"], ["Mars"],
                       ["Mercury (element)", "Mercury (planet)"], []],
        "cand_sources": [["alias"], ["alias+name", "name"], ["name"], ["alias", "name"], []],
    })
    return mentions, pred, candidates


def write_run(run: Path, pred: pd.DataFrame, mentions: pd.DataFrame, candidates: pd.DataFrame,
              mode: str = "paper") -> None:
    """A run folder as decode, evaluate and train leave it (metrics from gemel.evaluate.metrics itself)."""
    run.mkdir(parents=True, exist_ok=True)
    pred.to_parquet(run / "predictions.parquet")
    ev = pred[~pred["is_nil"]]
    metrics = {"accuracy": float((ev["pred_name"] == ev["gold_name"]).mean()),
               "decode": {"mode": mode, "split": "test"},
               "baselines": {"copy_mention": {"accuracy": 0.25}, "alias_prior": {"accuracy": 0.5}},
               "breakdown": breakdown(pred, mentions, list(ev["mention"]), candidates)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "run.json").write_text(json.dumps({"llm": {"name": "toy-llm", "spec": {"params_m": 1}},
                                              "model": {"prefix_tokens": 4, "use_image": True, "num_demos": 0},
                                              "decode": {"candidates": "none" if mode == "paper" else "constrained",
                                                         "num_beams": 5, "num_candidates": 16}}))
    pd.DataFrame({"step": [1, 2, 3], "epoch": 1, "loss": [3.0, 2.0, 1.5], "lr": 0.1}).to_csv(
        run / "train_loss.csv", index=False)


# ------------------------------------------------------------------ order and filter

def test_wrong_rows_come_first_each_group_in_the_given_order():
    assert order_rows([True, False, True, False, False]) == [1, 3, 4, 0, 2]
    assert order_rows([]) == []
    assert order_rows([True, True]) == [0, 1]


def test_bucket_filter_keeps_what_metrics_breakdown_counts(tmp_path):
    mentions, pred, candidates = tables(tmp_path)
    ev = pred[~pred["is_nil"]].reset_index(drop=True)
    keys = bucket_keys(bucket_flags(ev, mentions, candidates))
    correct = list(ev["pred_name"] == ev["gold_name"])
    # By hand: gold seen in training = t0 (Q90) only; mention == gold name: t0 only; gold in
    # candidates: all but t2 (S014 vs S013); with image (has_image): t0, t1.
    assert keys[0] == ["gold_seen_in_training:seen", "mention_equals_gold_name:equal", "gold_in_candidates:inside",
                       "image:with"]
    assert select_rows(keys, correct, "gold_seen_in_training:unseen") == [1, 2, 3]
    assert select_rows(keys, correct, "gold_in_candidates:outside") == [2]
    assert select_rows(keys, correct, "image:without") == [2, 3]
    assert select_rows(keys, correct, "wrong") == [1, 3]
    assert select_rows(keys, correct, "all") == [0, 1, 2, 3]
    b = breakdown(pred, mentions, list(ev["mention"]), candidates)
    assert set(b) == set(BUCKETS)  # every factor is checked below, not a loop over nothing
    for factor, buckets in b.items():
        for label, r in buckets.items():
            assert len(select_rows(keys, correct, f"{factor}:{label}")) == r["mentions"], (factor, label)
    with pytest.raises(ReportError, match="filter 'image:maybe'"):
        select_rows(keys, correct, "image:maybe")


def test_page_rows_are_ordered_and_carry_their_buckets(tmp_path):
    mentions, pred, candidates = tables(tmp_path)
    write_run(tmp_path / "run", pred, mentions, candidates)
    page = collect(tmp_path / "run", mentions, candidates, root=tmp_path)
    assert list(page.rows["id"]) == ["t1", "t3", "t0", "t2"]  # NIL t4 left out
    html = render(page)
    ids = [html.index(f">{i} ") for i in ("t1", "t3", "t0", "t2")]
    assert ids == sorted(ids)
    assert html.count('class="m wrong') == 2 and html.count('class="m') == 4
    assert 'data-b="gold_seen_in_training:unseen mention_equals_gold_name:different gold_in_candidates:inside ' \
           'image:without"' in html  # t3


def test_stale_metrics_are_refused_naming_the_file(tmp_path):
    mentions, pred, candidates = tables(tmp_path)
    write_run(tmp_path / "run", pred, mentions, candidates)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics["breakdown"]["image"]["with"]["mentions"] += 1
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ReportError, match=r"metrics\.json: breakdown\.image counts"):
        collect(tmp_path / "run", mentions, candidates, root=tmp_path)


@pytest.mark.parametrize("loss_csv", ["step,epoch,loss,lr\n", "\n"])  # the train stage's header; an older empty file
def test_a_run_that_trained_no_step_has_a_page_that_says_so(tmp_path, loss_csv):
    """A text-only run trains 0 steps: its loss curve has no row, and the page says why."""
    mentions, pred, candidates = tables(tmp_path)
    run = tmp_path / "run"
    write_run(run, pred, mentions, candidates)
    record = json.loads((run / "run.json").read_text())
    record["model"]["use_image"] = False
    (run / "run.json").write_text(json.dumps(record))
    (run / "train_loss.csv").write_text(loss_csv)
    (run / "dev_accuracy.csv").write_text("step,accuracy\n0,0.5\n")
    page = collect(run, mentions, candidates, root=tmp_path)
    assert len(page.curves["training loss"]) == 0 and list(page.curves["dev accuracy"]["value"]) == [0.5]
    assert any("trained nothing (0 optimizer steps: a text-only run" in n for n in page.notes)
    html = render(page)
    assert "This run trained nothing" in html and "training loss: no points" in html


# ------------------------------------------------------------------ bad data

def test_script_in_mention_and_text_is_escaped(tmp_path):
    mentions, pred, candidates = tables(tmp_path)
    pred.loc[1, ["mention", "pred_name"]] = [EVIL, EVIL]
    pred.at[1, "beams"] = [EVIL, "Java"]
    candidates.at[1, "cand_sources"] = [EVIL, "name"]
    write_run(tmp_path / "run", pred, mentions, candidates, mode="candidates")
    html = render(collect(tmp_path / "run", mentions, candidates, root=tmp_path))
    assert "<script>window" not in html
    assert html.count("<script>") == 1  # the page's own
    assert html.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 4  # text, prediction, beam, source
    assert mark_mention(f"x {EVIL} y", EVIL) == "x <mark>&lt;script&gt;window.pwned=1&lt;/script&gt;</mark> y"


def test_mention_is_marked_at_its_span_else_its_first_occurrence():
    assert mark_mention("Java and java", "java", 9, 13) == "Java and <mark>java</mark>"
    assert mark_mention("Java and java", "java", 0, 2) == "<mark>Java</mark> and java"  # bad span: first occurrence
    assert mark_mention("a < b", "c") == "a &lt; b"


def test_missing_and_unreadable_images_say_so(tmp_path):
    mentions, pred, candidates = tables(tmp_path)
    uri, why = thumbnail("img/a.png", tmp_path)
    assert why is None and uri.startswith("data:image/jpeg;base64,")
    import base64
    import io
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.size == (96, 64)  # 300x200 scaled to 96 on its long side
    assert thumbnail("img/gone.png", tmp_path) == (None, "missing")
    assert thumbnail("img/bad.jpg", tmp_path) == (None, "unreadable")
    assert thumbnail(None, tmp_path) == (None, "none given")
    write_run(tmp_path / "run", pred, mentions, candidates)
    features = pd.DataFrame({"image": ["img/a.png", "img/b.jpg"], "ok": [True, False]})
    page = collect(tmp_path / "run", mentions, candidates, root=tmp_path, features_ok=features)
    rows = page.rows.set_index("id")
    assert rows.loc["t2", "no_image"] == "missing" and rows.loc["t3", "no_image"] == "unreadable"
    assert rows.loc["t0", "no_image"] is None and bool(rows.loc["t1", "encoder_failed"])
    html = render(page)
    assert html.count("no image: <br>missing") == 1 and html.count("no image: <br>unreadable") == 1
    assert html.count("<img ") == 2 and "encoder could not read it" in html


def test_summary_page_links_each_run_and_embeds_the_plot(tmp_path):
    png = tmp_path / "plot.png"
    Image.new("RGB", (20, 10)).save(png)
    table = pd.DataFrame({"name": ["baseline", "no_<b>"], "accuracy": [0.5, float("nan")]})
    html = summary_page("ablations", table, png, {"baseline": "../ablations/baseline/llm/report.html"}, "name")
    assert '<a href="../ablations/baseline/llm/report.html">report</a>' in html
    assert "no_&lt;b&gt;" in html and "none yet" in html and "data:image/png;base64," in html
    assert "<td class=n>0.5000</td>" in html


# ------------------------------------------------------------------ a real page in a real browser

@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """The embedded sample (one mention per entity and split) through prepare and candidates; the
    predictions are each test mention's candidates (the top one predicted), then evaluate and the
    report stage, all through their CLIs. One test image deleted, one corrupted, EVIL in a text."""
    from gemel.data.sample import generate_sample
    from stages import candidates, evaluate, prepare
    from stages import report as report_stage

    base = tmp_path_factory.mktemp("report")
    generate_sample(base / "sample", seed=0, train_per_entity=1, dev_per_entity=1, test_per_entity=1, image_size=48)
    sets = [f"sample.out={base}/sample", f"datasets.sample.input={base}/sample",
            f"datasets.sample.kb={base}/sample/kb.json", f"datasets.sample.images={base}/sample/images",
            f"prepare.out={base}/prepared", f"features.out={base}/features", f"candidates.out={base}/candidates",
            f"train.out={base}/results"]
    argv = ["--params", str(ROOT / "params.yaml")] + [a for s in sets for a in ("--set", s)]
    for stage in (prepare, candidates):
        assert stage.main(argv) == 0, stage.__name__
    mentions = pd.read_parquet(base / "prepared" / "mentions.parquet")
    test = mentions[mentions["split"] == "test"].reset_index(drop=True)
    mentions.loc[mentions["id"] == test.at[0, "id"], "text"] = test.at[0, "text"] + " " + EVIL
    mentions.to_parquet(base / "prepared" / "mentions.parquet")
    Path(test.at[1, "image"]).unlink()
    Path(test.at[2, "image"]).write_bytes(b"not a png")
    cands = pd.read_parquet(base / "candidates" / "candidates.parquet").set_index("id")
    beams, beam_ids = [], []
    for k, (ids, names, gold) in enumerate(zip(cands.loc[test["id"], "cand_ids"], cands.loc[test["id"], "cand_names"],
                                               test["entity_id"], strict=True)):
        order = list(range(len(ids)))
        if k % 2 == 0 and gold in list(ids):  # every other mention "linked right": its gold first
            j = list(ids).index(gold)
            order = [j] + order[:j] + order[j + 1:]
        beams.append([names[j] for j in order][:5])
        beam_ids.append([ids[j] for j in order][:5])
    pred = pd.DataFrame({
        "id": test["id"], "split": "test", "mention": test["mention"], "gold_id": test["entity_id"],
        "gold_name": test["entity_name"], "is_nil": test["is_nil"], "has_image": [k not in (1, 2) for k in test.index],
        "pred_id": [b[0] if b else None for b in beam_ids], "pred_name": [b[0] if b else None for b in beams],
        "beams": beams, "beam_ids": beam_ids, "beam_scores": [list(-np.arange(1.0, len(b) + 1)) for b in beams]})
    run = base / "results" / "smollm2-135m"
    run.mkdir(parents=True)
    pred.to_parquet(run / "predictions.parquet")
    (run / "decode_report.json").write_text(json.dumps({"mode": "paper", "split": "test"}))
    (run / "run.json").write_text(json.dumps({"llm": {"name": "smollm2-135m"}, "decode": {"candidates": "none"}}))
    (run / "train_loss.csv").write_text("step,epoch,loss,lr\n1,1,3.0,0.1\n2,1,2.5,0.1\n3,1,1.0,0.1\n")
    assert evaluate.main(argv) == 0
    assert report_stage.main(argv) == 0  # the sample's image paths are absolute here
    return run


def browser():
    if not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} is not installed (.ci/run installs it: apt-get install -y chromium)"
    elif not _has_playwright():
        why = "the playwright Python package is not installed (pip install playwright; no `playwright install`)"
    else:
        return None
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {why}")
    pytest.skip(why)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def test_sample_report_in_headless_chromium(sample_run, tmp_path):
    browser()
    from playwright.sync_api import sync_playwright

    pred = pd.read_parquet(sample_run / "predictions.parquet")
    ev = pred[~pred["is_nil"]]
    wrong = int((ev["pred_name"] != ev["gold_name"]).sum())
    assert 0 < wrong < len(ev)  # both kinds of row, or "wrong first" checks nothing
    metrics = json.loads((sample_run / "metrics.json").read_text())
    errors: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=CHROMIUM_FLAGS, offline=True)
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:"))
                    else None)
            page.goto((sample_run / "report.html").as_uri())
            rows = page.eval_on_selector_all("#rows > .m", "rs => rs.map(r => [r.classList.contains('wrong'), !r.hidden])")
            assert len(rows) == len(ev)
            assert [w for w, _ in rows] == [True] * wrong + [False] * (len(ev) - wrong)
            assert all(shown for _, shown in rows)  # under PAGE_ROWS: one page holds them all
            # Every thumbnail decodes (lazy ones are made eager first: they load when scrolled to).
            sizes = page.evaluate("""async () => { const imgs = [...document.querySelectorAll('#rows img')];
                imgs.forEach(i => { i.loading = 'eager'; });
                await Promise.all(imgs.map(i => i.decode().catch(() => null)));
                return imgs.map(i => i.naturalWidth); }""")
            assert len(sizes) == len(ev) - 2 and all(w > 0 for w in sizes), sizes
            shown = page.eval_on_selector_all(".noimg", "es => es.map(e => e.textContent.replace(/\\s+/g, ' '))")
            assert sorted(shown) == ["no image: missing", "no image: unreadable"]
            assert page.evaluate("window.pwned") is None and page.locator(f"text={EVIL}").count() == 1
            # The bucket filter, by anchor and by the select: as many rows as metrics.json counts.
            with_image = metrics["breakdown"]["image"]["with"]["mentions"]
            page.click('a[href="#only=image:with"] >> nth=0')
            assert page.eval_on_selector_all("#rows > .m:not([hidden])", "rs => rs.length") == with_image
            page.select_option("#only", "wrong")
            assert page.eval_on_selector_all("#rows > .m:not([hidden])", "rs => rs.length") == wrong
        finally:
            ctx.close()
    assert errors == []


def test_summarize_writes_a_page_linking_each_runs_report(tmp_path):
    from gemel.config import load_params
    from gemel.workflow import ablation_runs, effective
    from stages import summarize

    out = tmp_path / "results"
    runs = ablation_runs(effective(load_params(ROOT / "params.yaml"), {"train.out": str(out)}))
    for i, run in enumerate(runs):
        Path(run.metrics).parent.mkdir(parents=True)
        Path(run.metrics).write_text(json.dumps({"accuracy": 0.1 * i, "evaluated": 10}))
    (Path(runs[0].metrics).parent / "report.html").write_text("<p>run page</p>")
    argv = ["--params", str(ROOT / "params.yaml"), "--set", f"train.out={out}", "--set", "summarize.kind=ablations"]
    assert summarize.main(argv) == 0
    page = out / "ablations" / "report.html"
    html = page.read_text()
    link = f'{runs[0].name}/{runs[0].llm}/report.html'  # the run's folder, relative to results/ablations/
    assert f'<a href="{link}">report</a>' in html and (page.parent / link).is_file()
    assert html.count("none yet") == len(runs) - 1
    assert html.count("<tr>") == len(runs) + 1 and "data:image/png;base64," in html
