"""Benchmark the run report on a RichpediaMEL-sized test split: render time and page size.

    python -m benchmarks.report [--mentions 3561] [--size 640x480] [--browser]

A synthetic run in a temporary folder: `--mentions` evaluated mentions, each with its own JPEG
photo (`--size`, smooth colour fields with noise, so that thumbnails compress like photos rather
than like flat colours; 64 distinct ones, each mention its own file), 1 in 50 image missing and
1 in 50 unreadable, a third of the rows wrong, 16 candidates each (candidate-aware mode: the
largest rows). Times `collect` (thumbnails included) and `render`, and with `--browser` how long
headless chromium takes to load the page.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gemel.evaluate.metrics import breakdown
from gemel.evaluate.report import collect, render


def synthetic_run(base: Path, n: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    (base / "img").mkdir(parents=True)
    names = [f"Entity {i} (thing)" for i in range(max(50, n // 3))]
    ids = [f"Q{i}" for i in range(len(names))]
    gold = rng.integers(0, len(names), n)
    photos = []  # 64 distinct photos, each written under every 64th mention's own file name
    for _ in range(64):
        low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(low).resize(size, Image.BILINEAR), dtype=int)
        noise = rng.integers(-12, 12, (size[1], size[0], 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(im + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        photos.append(buf.getvalue())
    images = []
    for i in range(n):
        path = base / "img" / f"{i}.jpg"
        if i % 50 != 1:  # 1 in 50 missing
            path.write_bytes(b"\xff\xd8\xff truncated" if i % 50 == 2 else photos[i % 64])
        images.append(str(path))
    test_ids = [f"test-{i:05d}" for i in range(n)]
    texts = [f"Some words about {names[g].split(' (')[0]} in a sentence of ordinary length, with <b>tags</b> & more."
             for g in gold]
    mentions = pd.DataFrame({"id": test_ids + ["train-0"], "dataset": "bench", "split": ["test"] * n + ["train"],
                             "text": texts + ["x"], "mention": [names[g].split(" (")[0] for g in gold] + ["x"],
                             "start": [17] * n + [0], "end": [17 + len(names[g].split(" (")[0]) for g in gold] + [1],
                             "image": images + [None], "entity_id": [ids[g] for g in gold] + [ids[0]],
                             "entity_name": [names[g] for g in gold] + [names[0]], "is_nil": False})
    cand = [[int(g)] + list(rng.integers(0, len(names), 15)) for g in gold]
    for c in cand:
        rng.shuffle(c)
    right = rng.random(n) > 1 / 3
    beams = [[names[g]] + [names[j] for j in c[:4]] if ok else [names[j] for j in c[:5]]
             for g, c, ok in zip(gold, cand, right)]
    pred = pd.DataFrame({"id": test_ids, "split": "test", "mention": mentions["mention"][:n],
                         "gold_id": [ids[g] for g in gold], "gold_name": [names[g] for g in gold], "is_nil": False,
                         "has_image": [i % 50 not in (1, 2) for i in range(n)],
                         "pred_id": "Q", "pred_name": [b[0] for b in beams], "beams": beams,
                         "beam_scores": [list(-np.sort(rng.random(5))) for _ in beams],
                         "llm_scores": [list(-rng.random(5)) for _ in beams],
                         "cand_priors": [list(-rng.random(5)) for _ in beams]})
    candidates = pd.DataFrame({"id": test_ids, "cand_ids": [[ids[j] for j in c] for c in cand],
                               "cand_names": [[names[j] for j in c] for c in cand],
                               "cand_sources": [["alias+name" if k % 3 else "name" for k in range(16)] for _ in cand]})
    run = base / "run"
    run.mkdir()
    pred.to_parquet(run / "predictions.parquet")
    metrics = {"accuracy": float(right.mean()), "decode": {"mode": "candidates", "split": "test"},
               "breakdown": breakdown(pred, mentions, list(pred["mention"]), candidates)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "run.json").write_text(json.dumps({"llm": {"name": "bench"}, "decode": {"num_candidates": 16}}))
    pd.DataFrame({"step": range(1, 2001), "loss": 3 / np.arange(1, 2001) ** 0.3}).to_csv(run / "train_loss.csv")
    return run, mentions, candidates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mentions", type=int, default=3561, help="evaluated mentions (RichpediaMEL test: 3,561)")
    ap.add_argument("--size", default="640x480", help="photo size WxH")
    ap.add_argument("--browser", action="store_true", help="also time loading the page in headless chromium")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run, mentions, candidates = synthetic_run(Path(tmp), args.mentions, size)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        page = collect(run, mentions, candidates, root=tmp)
        collected = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = render(page)
        rendered = time.perf_counter() - t0
        out = run / "report.html"
        out.write_text(text, encoding="utf-8")
        result = {"mentions": len(page.rows), "images": f"{size[0]}x{size[1]} JPEG", "setup_s": round(made, 1),
                  "collect_s (thumbnails included)": round(collected, 2), "render_s": round(rendered, 2),
                  "total_s": round(collected + rendered, 2), "page_mb": round(len(text.encode()) / 1e6, 2)}
        if args.browser:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                pg = b.new_page()
                t0 = time.perf_counter()
                pg.goto(out.as_uri(), wait_until="load")
                result["browser_load_s"] = round(time.perf_counter() - t0, 2)
                b.close()
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
