"""Run report: one self-contained HTML page per run ({run}/report.html), for looking at errors.

The page holds the run's settings (run.json), its metrics beside the copy_mention and alias_prior
baselines and the breakdown (metrics.json), the training curves (inline SVG drawn here), then every
evaluated mention: wrong ones first, each with its image thumbnail (or why there is none), the
text with the mention marked, gold and prediction, the top beams with scores and, when the run
decodes over candidates, the candidates with their source.

Self-contained: CSS, a few lines of vanilla JS and the thumbnails (small JPEG data URIs) are in the
file; nothing is fetched at view time, so the page survives being copied or mailed. Fast on a
RichpediaMEL-sized split (3,561 mentions): thumbnails are made in threads (PIL decodes without the
GIL, and JPEG decodes at reduced size via draft mode), the images are `loading="lazy"`, rows off
screen skip layout (`content-visibility: auto`), and the script shows PAGE_ROWS rows at a time.
Without JavaScript every row is shown.

Row order (`order_rows`): wrong before right; within each group, the order of predictions.parquet
(the split's published order). A row's buckets come from gemel.evaluate.metrics.bucket_flags, the one
definition `breakdown` counts with; `collect` checks that the per-bucket counts equal
metrics.json's, so a stale metrics.json cannot disagree with the page.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gemel.data.tables import PREDICTIONS_CANDIDATE_AWARE, read_json, read_mentions, read_schema, read_table
from gemel.errors import GemelError
from gemel.evaluate.metrics import BUCKETS, bucket_flags, read_predictions
from gemel.paths import DECODE_REPORT, DEV_ACCURACY, METRICS, PREDICTIONS, RUN_RECORD, TRAIN_LOSS, Artifacts

THUMB_PX = 96           # longest side of a thumbnail; ~3 KB as JPEG, ~4 KB in base64
THUMB_QUALITY = 70
PAGE_ROWS = 200         # rows the script shows at a time (the DOM holds all; hidden rows cost no layout)
TOP_BEAMS = 5
ALL, WRONG = "all", "wrong"  # filter keys beside the buckets' "factor:label"


class ReportError(GemelError, ValueError):
    """A run's file is missing or disagrees with another; the message names the file."""


# ---------------------------------------------------------------- rows: buckets, order, filter

def bucket_keys(flags: dict[str, np.ndarray]) -> list[list[str]]:
    """Each row's buckets as filter keys, 'factor:label' (e.g. 'gold_seen_in_training:unseen')."""
    n = len(next(iter(flags.values()))) if flags else 0
    return [[f"{f}:{BUCKETS[f][0] if flags[f][i] else BUCKETS[f][1]}" for f in flags] for i in range(n)]


def order_rows(correct: Sequence[bool]) -> list[int]:
    """Row positions in page order: wrong first, then right, each group in its given order."""
    correct = list(correct)
    return [i for i, ok in enumerate(correct) if not ok] + [i for i, ok in enumerate(correct) if ok]


def select_rows(keys: Sequence[Sequence[str]], correct: Sequence[bool], key: str) -> list[int]:
    """Positions of the rows the filter `key` keeps ('all', 'wrong' or a bucket 'factor:label');
    the page's script applies the same rule to the rows' data-b attributes."""
    if key == ALL:
        return list(range(len(keys)))
    if key == WRONG:
        return [i for i, ok in enumerate(correct) if not ok]
    factor, _, label = key.partition(":")
    if factor not in BUCKETS or label not in BUCKETS[factor]:
        raise ReportError(f"filter '{key}': not a bucket of gemel.evaluate.metrics.BUCKETS")
    return [i for i, k in enumerate(keys) if key in k]


# ---------------------------------------------------------------- images

def thumbnail(path: str | None, root: Path, px: int = THUMB_PX) -> tuple[str | None, str | None]:
    """(a JPEG data URI of the image at most px on a side, None), or (None, why there is none:
    'none given', 'missing' or 'unreadable', the features stage's words)."""
    from PIL import Image

    from gemel.vision.features import UNREADABLE_IMAGE_ERRORS

    if path is None or (isinstance(path, float) and math.isnan(path)) or path == "":  # NaN: pandas' missing
        return None, "none given"
    full = Path(path) if os.path.isabs(path) else root / path
    if not full.is_file():
        return None, "missing"
    try:
        with Image.open(full) as im:
            im.draft("RGB", (px, px))  # JPEG: decode at 1/2..1/8 scale, far faster on big photos
            small = im.convert("RGB")
        small.thumbnail((px, px))
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=THUMB_QUALITY)
    except UNREADABLE_IMAGE_ERRORS:
        return None, "unreadable"
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


def thumbnails(paths: Sequence[str | None], root: Path, px: int = THUMB_PX) -> dict[Any, tuple[str | None, str | None]]:
    """thumbnail() of each distinct path, in threads."""
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        return dict(zip(unique, pool.map(lambda p: thumbnail(p, root, px), unique)))


# ---------------------------------------------------------------- what the page shows

@dataclass
class RunPage:
    title: str
    settings: list[tuple[str, str]]
    metrics: dict[str, Any]
    curves: dict[str, pd.DataFrame]          # name -> columns step, value
    rows: pd.DataFrame                        # evaluated mentions in page order
    uses_candidates: bool
    notes: list[str] = field(default_factory=list)


def _get(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def settings(record: dict[str, Any], metrics: dict[str, Any], dataset: str | None,
             decode: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings a reader needs to place the run, as (label, value) pairs ('-' where unknown):
    `record` is run.json, `decode` the decode stage's settings (decode_report.json)."""
    mode = _get(metrics, "decode.mode") or ("paper" if decode.get("candidates", "none") == "none"
                                             else "candidates")
    params_m = _get(record, "llm.spec.params_m")
    use_image = _get(record, "model.use_image")
    demos = _get(record, "model.num_demos")
    out = [
        ("dataset", dataset),
        ("LLM", f"{_get(record, 'llm.name', '-')}" + (f" ({params_m}M parameters)" if params_m else "")),
        ("image encoder", _get(record, "image_encoder.encoder")),
        ("images", None if use_image is None else ("used" if use_image else "not used (text only)")),
        ("k (visual tokens per image)", _get(record, "model.prefix_tokens")),
        ("demonstrations", None if demos is None else
         f"{demos}" + (f" (retrieval: {_get(record, 'retrieval.method')})" if demos else "")),
        ("decoding mode", mode),
        ("beams", decode.get("num_beams")),
    ]
    if mode == "candidates":
        out += [("candidates (K)", decode.get("num_candidates")),
                ("fusion", _fusion_label(metrics.get("decode") or {}, decode)),
                ("on dev, cross-validated", _share_label(_get(metrics, "decode.dev_cross_validated")))]
    out += [("split", _get(metrics, "decode.split")),
            ("training", f"{_get(record, 'train.epochs', '-')} epochs, lr {_get(record, 'train.lr', '-')}")]
    return [(label, "-" if value is None else str(value)) for label, value in out]


def _fusion_label(chosen: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """How LLM score and candidate prior were combined: the learned weights, or the one weight."""
    if chosen.get("fusion_weights"):
        return "learned on " + str(chosen.get("chosen_on")) + ": " + ", ".join(
            f"{k} {v:.2f}" for k, v in chosen["fusion_weights"].items())
    weight = chosen.get("fusion_weight", settings.get("fusion_weight"))
    return None if weight is None else f"weight {weight}"


def _share_label(cv: dict[str, Any] | None) -> str | None:
    """The LLM's share on dev: the ranker alone and the fusion over every dev mention, then the
    ranker alone, the LLM alone and the fusion over those the LLM scored (gemel.link.fusion.chosen_on_dev)."""
    if not cv:
        return None
    scored = cv.get("llm_scored") or {}

    def fused(d: dict[str, Any]) -> str:
        return f", fused {d['fused']:.3f}" if "fused" in d else ""

    text = f"{cv['mentions']} mentions: ranker alone {cv['ranker_alone']:.3f}{fused(cv)}"
    if scored.get("mentions"):
        text += (f"; the {scored['mentions']} the LLM scored: ranker alone {scored['ranker_alone']:.3f}, "
                 f"LLM alone {scored['llm_alone']:.3f}{fused(scored)}")
    return text + (f" ({scored['folds']}-fold)" if "folds" in scored else "")


def _read_curve(path: Path, column: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:  # written by an older train stage for a run of 0 steps
        return pd.DataFrame({"step": [], "value": []})
    if "step" not in df.columns or column not in df.columns:
        raise ReportError(f"{path}: expected columns step and {column} (has: {', '.join(df.columns)})")
    return pd.DataFrame({"step": df["step"], "value": df[column]})


def collect(run_dir: str | Path, mentions: pd.DataFrame, candidates: pd.DataFrame | None = None,
            root: str | Path = ".", features_ok: pd.DataFrame | None = None) -> RunPage:
    """Everything the page shows, from a run folder (predictions.parquet, metrics.json, run.json,
    train_loss.csv, dev_accuracy.csv), the prepared mentions table, the candidates table (id,
    cand_ids, cand_names, cand_sources; optional) and the features table's (image, ok) columns
    (optional: an image the encoder could not read is flagged even if its thumbnail works).
    Image paths are relative to `root` (the project root, where the stages run)."""
    run_dir, root = Path(run_dir), Path(root)
    pred_path = run_dir / PREDICTIONS
    pred = read_predictions(pred_path)
    extra = [c for c in PREDICTIONS_CANDIDATE_AWARE if c in read_schema(pred_path, "decode").names]
    if extra:
        pred = pd.concat([pred, read_table(pred_path, "decode", columns=extra)], axis=1)
    metrics = read_json(run_dir / METRICS, "evaluate")
    record = read_json(run_dir / RUN_RECORD, "train")
    # How the run decodes is the decode stage's record (run.json holds what training used).
    decode_path = run_dir / DECODE_REPORT
    decode = read_json(decode_path, "decode").get("settings", {}) if decode_path.is_file() else {}
    ev = pred.loc[~pred["is_nil"].astype(bool)].reset_index(drop=True)

    flags = bucket_flags(ev, mentions, candidates)
    stated = metrics.get("breakdown") or {}
    for factor, f in flags.items():  # the page's buckets must be the metrics' buckets
        yes, no = BUCKETS[factor]
        ours = {yes: int(f.sum()), no: int((~f).sum())}
        theirs = {label: _get(stated, f"{factor}.{label}.mentions") for label in (yes, no)}
        if factor in stated and ours != theirs:
            raise ReportError(f"{run_dir / METRICS}: breakdown.{factor} counts {theirs} but the predictions "
                              f"and tables give {ours} (stale metrics: rerun the evaluate stage)")

    info = mentions.set_index("id")[["text", "start", "end", "image"]]
    missing = [i for i in ev["id"] if i not in info.index]
    if missing:
        raise ReportError(f"{pred_path}: row id '{missing[0]}' is not in the prepared mentions table")
    ev = ev.join(info, on="id")
    ev["correct"] = (ev["pred_name"] == ev["gold_name"]).to_numpy(dtype=bool)
    ev["buckets"] = bucket_keys(flags) if flags else [[] for _ in range(len(ev))]
    thumbs = thumbnails(list(ev["image"]), root)
    # object dtype: pandas would otherwise infer strings and turn None into NaN (truthy).
    ev["thumb"] = pd.Series([thumbs[p][0] for p in ev["image"]], dtype=object)
    ev["no_image"] = pd.Series([thumbs[p][1] for p in ev["image"]], dtype=object)
    if features_ok is not None:  # the encoder's view: a file it could not read gave the model no image
        bad = set(features_ok.loc[~features_ok["ok"].astype(bool), "image"])
        ev["encoder_failed"] = [p in bad for p in ev["image"]]
    else:
        ev["encoder_failed"] = False
    mode = _get(metrics, "decode.mode")
    uses_candidates = (mode == "candidates") if mode else decode.get("candidates", "none") != "none"
    if uses_candidates and candidates is not None:
        k = decode.get("num_candidates") or None
        c = candidates.set_index("id")
        ev["cands"] = [list(zip(c.at[i, "cand_names"][:k], c.at[i, "cand_sources"][:k], c.at[i, "cand_ids"][:k]))
                       if i in c.index else [] for i in ev["id"]]
    notes = []
    if uses_candidates and candidates is None:
        notes.append("The run decodes over candidates, but no candidates table was given: none are shown.")
        uses_candidates = False
    ev = ev.iloc[order_rows(ev["correct"])].reset_index(drop=True)

    dataset = str(mentions["dataset"].iloc[0]) if "dataset" in mentions.columns and len(mentions) else None
    llm = _get(record, "llm.name") or run_dir.name
    curves = {name: curve for name, curve in (("training loss", _read_curve(run_dir / TRAIN_LOSS, "loss")),
                                              ("dev accuracy", _read_curve(run_dir / DEV_ACCURACY, "accuracy")))
              if curve is not None}
    if "training loss" in curves and not len(curves["training loss"]):
        steps = "0 optimizer steps" + (": a text-only run has no image slots, so there is no mapper to train"
                                       if _get(record, "model.use_image") is False else "")
        evaluated = "dev accuracy" in curves and len(curves["dev accuracy"]) > 0
        notes.append(f"This run trained nothing ({steps}); its mapper is the initial one, "
                     + ("and the dev accuracy below is the frozen LLM's." if evaluated else
                        "and it evaluated nothing on dev: there was no mapper to choose."))
    return RunPage(title=f"{llm} on {dataset or 'its dataset'}: {run_dir}",
                   settings=settings(record, metrics, dataset, decode), metrics=metrics, curves=curves, rows=ev,
                   uses_candidates=uses_candidates, notes=notes)


# ---------------------------------------------------------------- HTML

def esc(x: Any) -> str:
    return html.escape("" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else esc(x)


def mark_mention(text: str, mention: str, start: Any = None, end: Any = None) -> str:
    """The text, escaped, with the mention in <mark>: at [start, end) when that span is the mention
    (case aside), else its first occurrence; the text alone when it does not contain it."""
    text, mention = str(text or ""), str(mention or "")
    span = None
    if start is not None and end is not None and not pd.isna(start) and not pd.isna(end):
        s, e = int(start), int(end)
        if 0 <= s < e <= len(text) and text[s:e].casefold() == mention.casefold():
            span = (s, e)
    if span is None and mention:
        s = text.casefold().find(mention.casefold())
        if s >= 0:
            span = (s, s + len(mention))
    if span is None:
        return esc(text)
    s, e = span
    return f"{esc(text[:s])}<mark>{esc(text[s:e])}</mark>{esc(text[e:])}"


CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table.t{border-collapse:collapse}table.t td,table.t th{border:1px solid #ddd;padding:3px 8px;text-align:left}
table.t td.n{text-align:right;font-variant-numeric:tabular-nums}table.t th{background:#f4f4f4}
dl.s{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dl.s dt{color:#666}dl.s dd{margin:0}
.curves,.top{display:flex;gap:2em;flex-wrap:wrap}.top h2{margin-top:.6em}
svg text{font:11px system-ui,sans-serif;fill:#444}
.ctl{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;z-index:1}
.m{display:grid;
grid-template-columns:2.5em 104px minmax(16em,2fr) minmax(10em,1fr) minmax(14em,1.5fr) minmax(12em,1.3fr);
gap:0 12px;padding:6px 0;border-bottom:1px solid #eee;content-visibility:auto;contain-intrinsic-size:auto 110px}
.m.no-c{grid-template-columns:2.5em 104px minmax(16em,2fr) minmax(10em,1fr) minmax(14em,1.5fr)}
.m.wrong{background:#fff6f6}.m .i{color:#999}.m img{max-width:96px;max-height:96px;display:block}
.noimg{width:96px;height:64px;border:1px dashed #c66;color:#a33;display:flex;align-items:center;justify-content:center;
text-align:center;font-size:12px}.warn{color:#a33;font-size:12px}
mark{background:#ffe066;padding:0 2px}.ok{color:#070}.bad{color:#b00}.lbl{color:#888;font-size:12px}
ol.b{margin:0;padding-left:1.4em}ol.b li.g{font-weight:600;color:#070}.sc{color:#888;font-size:12px}
.src{color:#669;font-size:11px}.tag{display:inline-block;font-size:11px;color:#555;background:#eee;border-radius:3px;
padding:0 4px;margin:1px}a.f{font-size:12px}
"""

# Filter (select or #only=KEY anchor) and pages; rows carry data-b (their bucket keys) and class wrong.
JS = """
(function(){const rows=[...document.querySelectorAll('#rows>.m')],PAGE=%d,sel=document.getElementById('only'),
info=document.getElementById('info');let cur=rows,page=0;
function keep(k){return k==='all'?rows:k==='wrong'?rows.filter(r=>r.classList.contains('wrong')):
rows.filter(r=>r.dataset.b.split(' ').includes(k))}
function show(){const n=Math.max(1,Math.ceil(cur.length/PAGE));page=Math.min(Math.max(page,0),n-1);
const on=new Set(cur.slice(page*PAGE,(page+1)*PAGE));rows.forEach(r=>{r.hidden=!on.has(r)});
info.textContent=cur.length?`rows ${page*PAGE+1}-${Math.min(cur.length,(page+1)*PAGE)} of ${cur.length}`+
` (page ${page+1} of ${n})`:'no rows'}
function apply(){const k=decodeURIComponent((location.hash.match(/^#only=(.*)$/)||[])[1]||'all');
sel.value=[...sel.options].some(o=>o.value===k)?k:'all';cur=keep(sel.value);page=0;show()}
sel.addEventListener('change',()=>{location.hash='only='+encodeURIComponent(sel.value)});
document.getElementById('prev').addEventListener('click',()=>{page--;show()});
document.getElementById('next').addEventListener('click',()=>{page++;show()});
window.addEventListener('hashchange',apply);apply()})();
"""


def svg_chart(curve: pd.DataFrame, title: str, width: int = 420, height: int = 220) -> str:
    """A line chart of value against step; a noisy curve (over 20 points) also gets its running mean."""
    x, y = curve["step"].to_numpy(float), curve["value"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x):
        return f"<p>{esc(title)}: no points</p>"
    left, right, top, bottom = 48, 10, 22, 30
    x0, x1 = float(x.min()), float(x.max())
    y0, y1 = float(min(y.min(), 0.0)), float(y.max())
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    px = lambda v: left + (v - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda v: height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731

    def line(ys: np.ndarray, style: str) -> str:
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys))
        return f'<polyline fill="none" {style} points="{pts}"/>'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}"><text x="{left}" y="14" font-weight="600">{esc(title)}</text>']
    for v in np.linspace(y0, y1, 5):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for v in np.linspace(x0, x1, 5):
        parts.append(f'<text x="{px(v):.1f}" y="{height - bottom + 14}" text-anchor="middle">{v:.0f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 2}" text-anchor="middle">step</text>')
    if len(x) > 20:
        w = max(2, len(x) // 20)
        smooth = pd.Series(y).rolling(w, min_periods=1).mean().to_numpy()
        parts.append(line(y, 'stroke="#9cc3e6" stroke-width="1"'))
        parts.append(line(smooth, 'stroke="#1f5fa0" stroke-width="2"'))
    else:
        parts.append(line(y, 'stroke="#1f5fa0" stroke-width="2"'))
        parts += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="#1f5fa0"/>' for a, b in zip(x, y)]
    parts.append("</svg>")
    return "".join(parts)


def _metrics_table(m: dict[str, Any]) -> str:
    base = m.get("baselines") or {}
    cols = [b for b in ("copy_mention", "alias_prior") if b in base]
    head = "<tr><th>metric</th><th>model</th>" + "".join(f"<th>{esc(b)}</th>" for b in cols) + "</tr>"
    rows = [f"<tr><td>accuracy</td><td class=n>{_num(m.get('accuracy'))}</td>"
            + "".join(f"<td class=n>{_num(_get(base, f'{b}.accuracy'))}</td>" for b in cols) + "</tr>"]
    for key, value in m.items():
        if key == "accuracy" or isinstance(value, (dict, list)):
            continue
        rows.append(f"<tr><td>{esc(key)}</td><td class=n>{_num(value)}</td>" + "<td></td>" * len(cols) + "</tr>")
    return f"<table class=t>{head}{''.join(rows)}</table>"


def _breakdown_table(b: dict[str, Any]) -> str:
    head = "<tr><th>factor</th><th>bucket</th><th>mentions</th><th>accuracy</th><th>alias_prior</th><th></th></tr>"
    rows = []
    for factor, buckets in b.items():
        for label, r in buckets.items():
            key = f"{factor}:{label}"
            rows.append(f"<tr><td>{esc(factor)}</td><td>{esc(label)}</td><td class=n>{_num(r.get('mentions'))}</td>"
                        f"<td class=n>{_num(r.get('accuracy'))}</td><td class=n>{_num(r.get('alias_prior'))}</td>"
                        f"<td><a class=f href=\"#only={esc(key)}\">show rows</a></td></tr>")
    return f"<table class=t>{head}{''.join(rows)}</table>"


def _beams(r: Any) -> str:
    beams = list(r.beams) if r.beams is not None else []
    scores = list(r.beam_scores) if r.beam_scores is not None else []
    llm = getattr(r, "llm_scores", None)
    prior = getattr(r, "cand_priors", None)
    items = []
    for j, name in enumerate(beams[:TOP_BEAMS]):
        detail = [f"{scores[j]:.3f}" if j < len(scores) else ""]
        if llm is not None and j < len(llm):
            detail.append(f"LLM {llm[j]:.3f}")
        if prior is not None and j < len(prior):
            detail.append(f"prior {prior[j]:.3f}")
        cls = ' class="g"' if name == r.gold_name else ""
        items.append(f"<li{cls}>{esc(name)} <span class=sc>{esc(' · '.join(d for d in detail if d))}</span></li>")
    more = f"<span class=sc>+{len(beams) - TOP_BEAMS} more</span>" if len(beams) > TOP_BEAMS else ""
    return f"<ol class=b>{''.join(items)}</ol>{more}" if items else "<span class=lbl>no beams</span>"


def _candidates(r: Any) -> str:
    cands = r.cands or []
    rank = next((j for j, (_, _, cid) in enumerate(cands, 1) if cid == r.gold_id), 0)
    head = f"{len(cands)} candidates, " + (f"gold at {rank}" if rank else "gold not among them")
    items = "".join(f"<li{' class=g' if cid == r.gold_id else ''}>{esc(name)} <span class=src>{esc(src)}</span></li>"
                    for name, src, cid in cands)
    return f"<details><summary>{esc(head)}</summary><ol class=b>{items}</ol></details>"


def _row(n: int, r: Any, uses_candidates: bool) -> str:
    if r.thumb:
        img = f'<img loading="lazy" decoding="async" src="{r.thumb}" alt="{esc(r.image)}" title="{esc(r.image)}">'
    else:
        img = f'<div class=noimg title="{esc(r.image)}">no image: <br>{esc(r.no_image)}</div>'
    if r.encoder_failed:
        img += "<div class=warn>encoder could not read it</div>"
    elif not r.has_image and r.thumb:
        img += "<div class=warn>model got no image</div>"
    verdict = '<span class=ok>right</span>' if r.correct else '<span class=bad>wrong</span>'
    tags = "".join(f'<a class=tag href="#only={esc(k)}">{esc(k.split(":")[1])}</a>' for k in r.buckets)
    cells = [f"<div class=i>{n}</div>", f"<div>{img}</div>",
             f"<div>{mark_mention(r.text, r.mention, r.start, r.end)}<div class=lbl>{esc(r.id)} {tags}</div></div>",
             f"<div><div class=lbl>gold</div>{esc(r.gold_name)}<div class=lbl>prediction ({verdict})</div>"
             f"{'<i>none</i>' if pd.isna(r.pred_name) else esc(r.pred_name)}</div>",
             f"<div><div class=lbl>top beams</div>{_beams(r)}</div>"]
    if uses_candidates:
        cells.append(f"<div>{_candidates(r)}</div>")
    cls = "m" + ("" if r.correct else " wrong") + ("" if uses_candidates else " no-c")
    return f'<div class="{cls}" data-b="{esc(" ".join(r.buckets))}" id="r{n}">{"".join(cells)}</div>'


def _options(rows: pd.DataFrame) -> str:
    """The filter's options, each with the count of rows select_rows keeps (the script's rule);
    a bucket no row falls in is left out."""
    keys, correct = list(rows["buckets"]), list(rows["correct"])
    opts = [(ALL, ALL), (WRONG, WRONG)]
    opts += [(f"{f}:{lab}", f"{f}: {lab}") for f, labels in BUCKETS.items() for lab in labels]
    counted = [(k, t, len(select_rows(keys, correct, k))) for k, t in opts]
    return "".join(f'<option value="{esc(k)}">{esc(f"{t} ({n})")}</option>' for k, t, n in counted
                   if n or k in (ALL, WRONG))


def page(title: str, body: Iterable[str], script: str = "") -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>'
            + "".join(body) + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


def render(p: RunPage) -> str:
    """The page as one HTML string."""
    rows = p.rows
    body = [f"<h1>{esc(p.title)}</h1>", *(f"<p class=warn>{esc(n)}</p>" for n in p.notes),
            "<div class=top><section><h2>Settings</h2><dl class=s>",
            *(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in p.settings), "</dl></section>",
            "<section><h2>Metrics</h2>", _metrics_table(p.metrics), "</section>"]
    if p.metrics.get("breakdown"):
        body += ["<section><h2>Breakdown</h2>", _breakdown_table(p.metrics["breakdown"]), "</section>"]
    body.append("</div>")
    if p.curves:
        body += ["<h2>Training</h2><div class=curves>", *(svg_chart(c, name) for name, c in p.curves.items()), "</div>"]
    wrong = int((~rows["correct"]).sum()) if len(rows) else 0
    body += [f"<h2 id=mentions>Mentions: {len(rows)} evaluated, {wrong} wrong (listed first)</h2>",
             '<div class=ctl><label>show <select id=only>', _options(rows) if len(rows) else "", "</select></label> "
             '<button id=prev type=button>&larr;</button> <button id=next type=button>&rarr;</button> '
             '<span id=info></span></div><div id=rows>']
    body += [_row(n, r, p.uses_candidates) for n, r in enumerate(rows.itertuples(index=False), 1)]
    body.append("</div>")
    return page(p.title, body, JS % PAGE_ROWS)


def write_page(text: str, path: str | Path) -> None:
    from gemel.atomic import write_text_atomic

    write_text_atomic(text, path)


# ---------------------------------------------------------------- sweep summaries

def summary_page(title: str, table: pd.DataFrame, plot_png: str | Path | None,
                 reports: dict[str, str | None], name_column: str, digits: int = 4) -> str:
    """A sweep's page: the table, the plot (embedded) and each run's report.html. `reports`: row
    name -> link relative to the page (None: that run has no report yet)."""
    def cell(v: Any) -> str:
        if v is pd.NA or v is None or (isinstance(v, float) and math.isnan(v)):
            return "<td></td>"
        if isinstance(v, float):
            return f"<td class=n>{v:.{digits}f}</td>"
        return f"<td>{esc(v)}</td>"

    head = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in table.columns) + "<th>report</th></tr>"
    rows = []
    for name, rec in zip(table[name_column], table.itertuples(index=False, name=None)):
        link = reports.get(str(name))
        ref = f'<td><a href="{esc(link)}">report</a></td>' if link else "<td class=lbl>none yet</td>"
        rows.append("<tr>" + "".join(cell(v) for v in rec) + ref + "</tr>")
    body = [f"<h1>{esc(title)}</h1>", f"<table class=t>{head}{''.join(rows)}</table>"]
    if plot_png and Path(plot_png).is_file():
        data = base64.b64encode(Path(plot_png).read_bytes()).decode("ascii")
        body.append(f'<h2>Plot</h2><img alt="{esc(Path(plot_png).name)}" src="data:image/png;base64,{data}">')
    return page(title, body)


def _read_optional(path: Path, made_by: str, columns: list[str]) -> pd.DataFrame | None:
    """A table the page can do without: None when absent; a damaged one is still an error."""
    return read_table(path, made_by, columns=columns) if path.is_file() else None


def run_report(a: Artifacts) -> tuple[str, RunPage]:
    """The report stage: the page of run `a.run`, from its files and the shared tables (the
    candidates and features tables are optional: without them the page lacks the candidates and
    the encoder's view of each image). Image paths are relative to the working directory."""
    candidates = _read_optional(a.candidates, "candidates", ["id", "cand_ids", "cand_names", "cand_sources"])
    features = _read_optional(a.features, "features", ["image", "ok"])
    p = collect(a.run, read_mentions(a.mentions), candidates, root=".", features_ok=features)
    return render(p), p
