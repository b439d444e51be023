"""Everything one LLM needs to link mentions, assembled from the pipeline's artifacts: the frozen
LLM + mapper, the prompt builder over the mentions and their demonstrations, the image features
and the entity trie. Used by the train and decode stages, and, through `Linker.from_run`, by
`gemel link` and the Python API for new inputs:

    linker = Linker.from_run("results/smollm2-135m")
    linker.link([{"text": "I saw a picture of Mercury.", "mention": "Mercury", "image": "m.png"}])

A new input goes through the code paths of the pipeline's own mentions: its image through the
run's encoder and missing-image policy (gemel.features), its demonstrations retrieved from the
run's training pool (gemel.retrieval), its candidates from the same generator and ranker
(gemel.candidates), and `rank`, which the decode stage uses too."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gemel.candidates import CandidateError, first
from gemel.config import CandidatesParams, DecodeParams, ModelParams
from gemel.data.tables import read_json, read_kb, read_mentions, read_table
from gemel.decoding import Hypothesis, decode, score_candidates
from gemel.dense import DenseIndex
from gemel.errors import GemelError
from gemel.features import encode_inputs, load_features
from gemel.fusion import Fusion, Scored, cross_validate, earned
from gemel.fusion import fit as fit_fusion
from gemel.inputs import InputError, NewMention, chunks, error_record, parse_input
from gemel.llm import answer_ids, get_spec, load_llm, load_tokenizer
from gemel.model import Gemel
from gemel.paths import DECODE_REPORT, MAPPER, Artifacts
from gemel.prompt import Example, PromptBuilder
from gemel.retrieval import load_text_encoder, read_demos, read_pool
from gemel.stack import default_device
from gemel.trie import EntityTrie

MODES = {"none": "paper", "constrained": "candidates"}  # decode.candidates -> the mode a link reports
LLM_ALONE = Fusion("weight", weight=0.0)  # candidate-aware without a prior: the LLM alone chooses
# What decoding was run with (decode_report.json's `settings`): `Linker.from_run` links new inputs the same way.
DECODE_SETTINGS = ("candidates", "num_candidates", "fusion", "fusion_weight", "fusion_grid", "describe", "ranker_sure",
                   "length_penalty", "num_beams", "max_new_tokens", "batch_size")


class LinkError(GemelError, ValueError):
    """Decode or model settings that the run's artifacts cannot honour; the message names the
    setting and what to set instead."""


@dataclass
class Ranked:
    """One mention's entities, best first. Candidate-aware mode also keeps the LLM's score and the
    candidate prior (log p) of each, and which source proposed it."""
    ids: list[str]
    names: list[str]
    scores: list[float]
    llm_scores: list[float] | None = None
    priors: list[float] | None = None


@dataclass
class Linker:
    model: Gemel
    builder: PromptBuilder
    features: np.ndarray
    trie: EntityTrie
    pad_id: int
    tokenizer: Any = None
    candidates: pd.DataFrame | None = None  # the candidates stage's table, indexed by mention id
    new: NewInputs | None = None  # set by from_run: what linking new inputs needs
    image_ok: np.ndarray | None = None  # per features row: False for a missing or unreadable image
    descriptions: dict[str, str] | None = None  # KB entity id -> description (decode.describe)

    @classmethod
    def from_run(cls, run_dir: str | Path, check: bool = True) -> Linker:
        """A linker for new inputs from a trained run's folder ({train.out}/{llm}) and its run.json.
        Refuses (RunError) a run whose image encoder, KB, trie or mapper no longer match the
        record; `notes` says what else changed, and which fusion is used."""
        from gemel.run import RunError, check_run, drift, read_run_record, resolve

        record = read_run_record(run_dir)
        if check:
            diffs = check_run(record, run_dir)
            if diffs:
                raise RunError(f"run {run_dir} no longer matches what it was trained with, so it cannot link: "
                               + "; ".join(diffs))
        dp, fusion, notes = decode_settings(Path(run_dir))
        demos, constrained = record["model"]["num_demos"] > 0, dp.candidates != "none"
        reads = ("features",) + (("mentions",) if demos or constrained else ()) + (("pool",) if demos else ())
        return cls._assemble(record, Path(run_dir), resolve(record, run_dir), dp, fusion,
                             drift(record, run_dir, reads) + notes)

    @classmethod
    def _assemble(cls, record: dict[str, Any], run_dir: Path, paths: dict[str, Path], dp: DecodeParams,
                  fusion: Fusion, notes: list[str]) -> Linker:
        from gemel.candidates import CONTEXT, Generator, Ranker, ranker_weights
        from gemel.config import FeaturesParams
        from gemel.encoders import build_image_encoder
        from gemel.run import RunError, run_params

        params = run_params(record)
        m = ModelParams(**record["model"])
        constrained = dp.candidates != "none"
        mentions = read_mentions(paths["mentions"]) if (m.num_demos or constrained) else None
        pool = read_pool(paths["pool"]) if m.num_demos else None
        # The prompt builder holds the pool's mentions (the demonstrations' questions and answers).
        known = mentions[mentions["id"].isin(pool.ids)] if pool is not None else _NO_MENTIONS
        linker = build_linker(params, known, _NO_DEMOS, paths["features"], paths["trie"])
        linker.model.load_mapper(paths["mapper"])
        enc = record["image_encoder"]
        settings = ("encoder", "open_clip_model", "open_clip_pretrained", "open_clip_output")
        encoder = (build_image_encoder(FeaturesParams(**{k: enc[k] for k in settings if k in enc}))
                   if m.use_image else None)
        text_encoder = None
        if pool is not None and pool.method == "simcse":
            text_encoder = load_text_encoder(record["retrieval"]["encoder"], params["text_encoders"])
        gen = ranker = None
        if constrained:
            weights = record["candidates"].get("weights")
            if not weights:
                raise RunError(f"{run_dir}/run.json records no candidate ranker weights (no candidates report.json "
                               "when it was trained): rerun the candidates and train stages")
            c = record["candidates"]
            # A run recorded before folding, the fuzzy and the dense source existed made its candidates without them.
            cp = CandidatesParams(top_k=c["top_k"], pool=c["pool"], fold=c.get("fold", False), fuzzy=c.get("fuzzy", 0),
                                  **{k: c.get(k, False) for k in CONTEXT}, dense=c.get("dense", 0),
                                  dense_sim=c.get("dense_sim", False),
                                  encoder=c.get("encoder", CandidatesParams.encoder))
            kb = read_kb(paths["kb"])
            gen = Generator.build(kb, mentions, cp, dense_index(kb, cp, c.get("encoder_spec"), paths))
            linker.descriptions = descriptions_of(kb) if dp.describe else None
            ranker = Ranker(ranker_weights({"weights": weights}))
        linker.new = NewInputs(decode=dp, mode=MODES[dp.candidates], fusion=fusion,
                               image_encoder=encoder, missing_image=record["features"]["missing_image"],
                               image_batch_size=record["features"]["batch_size"], pool=pool,
                               text_encoder=text_encoder, retrieve_batch_size=record["retrieval"]["batch_size"],
                               generator=gen, ranker=ranker, cand_top_k=record["candidates"]["top_k"],
                               base_features=linker.features, notes=notes)
        return linker

    @property
    def notes(self) -> list[str]:
        return self.new.notes if self.new else []

    def link(self, records: Sequence[dict[str, Any]], top: int | None = 5, on_error: str = "raise",
             progress: bool = False) -> list[dict[str, Any]]:
        """Link new inputs: dicts with `text`, `mention`, optional `image` (a path) and `id` (default:
        its 1-based position). Returns one plain dict per input, in order: id, mention, entities
        (the top `top`, each {id, name, score}, best first), mode, image_used, image_reason (why
        not: none given, missing, unreadable, or a text-only run), mention_in_text. A bad input
        raises InputError (`on_error="raise"`) or gets a record with `error` (`"record"`).
        Batches of the decode stage's batch size, as `gemel link` makes them."""
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', not {on_error!r}")
        entries: list[NewMention | dict[str, Any]] = []
        for i, obj in enumerate(records, start=1):
            try:
                entries.append(parse_input(obj, str(i), f"record {i}: "))
            except InputError as e:
                if on_error == "raise":
                    raise
                entries.append(error_record(obj, str(i), str(e)))
        from tqdm import tqdm

        out: list[dict[str, Any]] = []
        with tqdm(total=len(entries), desc="link", unit="mention", disable=not progress) as bar:
            for chunk in chunks(entries, self.new.decode.batch_size if self.new else 1):
                out.extend(self.link_entries(chunk, top))
                bar.update(len(chunk))
        if on_error == "raise":
            bad = next((r for r in out if "error" in r), None)
            if bad is not None:
                raise InputError(f"input {bad['id']}: {bad['error']}")
        return out

    def link_entries(self, entries: Sequence[NewMention | dict[str, Any]], top: int | None = 5) -> list[dict[str, Any]]:
        """One batch: valid inputs linked together, error records passed through, in order."""
        items = [e for e in entries if isinstance(e, NewMention)]
        linked = iter(self.link_mentions(items, top))
        return [next(linked) if isinstance(e, NewMention) else e for e in entries]

    def link_mentions(self, items: Sequence[NewMention], top: int | None = 5) -> list[dict[str, Any]]:
        """Link validated inputs as one batch (gemel link's unit of work); one record each."""
        if self.new is None:
            raise ValueError("linking new inputs needs a Linker made by Linker.from_run(run_dir)")
        if not items:
            return []
        n = self.new
        keys = [f"\x00link:{i}" for i in range(len(items))]  # internal ids: never a mention id of the run
        if self.builder.k:
            vectors, why, errors = encode_inputs([it.image for it in items], n.image_encoder,
                                                 n.image_batch_size, n.missing_image)
        else:
            vectors, why, errors = None, ["text-only run (model.use_image: false)"] * len(items), [None] * len(items)
        ok = [i for i, e in enumerate(errors) if e is None]
        used = [i for i in ok if why[i] is None]
        base = len(n.base_features)
        table = pd.DataFrame({"id": [keys[i] for i in ok], "text": [items[i].text for i in ok],
                              "mention": [items[i].mention for i in ok],
                              "image": [keys[i] if why[i] is None else None for i in ok], "entity_name": None})
        try:
            if used:
                self.features = np.concatenate([n.base_features, vectors[used]])
            demos = _NO_DEMOS
            if n.pool is not None and len(table):
                found = n.pool.retrieve(table, self.builder.num_demos, n.text_encoder, n.retrieve_batch_size)
                demos = pd.DataFrame({"id": table["id"], "demo_ids": [d for d, _ in found]})
            self.builder.add(table, demos, {keys[i]: base + j for j, i in enumerate(used)})
            if n.generator is not None:
                proposed = first(propose_for(n, table), n.decode.num_candidates)
                self.candidates = pd.DataFrame(proposed, index=list(table["id"]))
            ids = list(table["id"])
            ranked = dict(zip(ids, self.rank(ids, n.decode, n.fusion, contexts=contexts_of(table)))) if ids else {}
        finally:  # the batch's inputs leave no trace: the next batch starts from the run's own state
            self.builder.forget(keys)
            self.features = n.base_features
            self.candidates = None
        out = []
        for i, (key, it) in enumerate(zip(keys, items)):
            if errors[i] is not None:
                out.append(error_record({"mention": it.mention}, it.id, errors[i], n.mode))
                continue
            r = ranked[key]
            cut = len(r.ids) if top is None else top
            out.append({"id": it.id, "mention": it.mention,
                        "entities": [{"id": e, "name": nm, "score": round(float(s), 6)}
                                     for e, nm, s in zip(r.ids[:cut], r.names[:cut], r.scores[:cut])],
                        "mode": n.mode, "image_used": why[i] is None, "image_reason": why[i],
                        "mention_in_text": it.mention in it.text})
        return out

    def examples(self, ids: Sequence[str], with_target: bool) -> list[Example]:
        return [self.builder.example(i, with_target) for i in ids]

    def predict(self, ids: Sequence[str], p: DecodeParams, progress: bool = False) -> list[list[Hypothesis]]:
        self.model.eval()
        return decode(self.model, self.examples(ids, with_target=False), self.features, self.pad_id,
                      self.trie.trie, p.num_beams, p.max_new_tokens, p.length_penalty, p.batch_size, progress)

    def candidate_llm_scores(self, ids: Sequence[str], p: DecodeParams, progress: bool = False) -> list[np.ndarray]:
        """The LLM's score of each of a mention's candidates (candidate-aware mode)."""
        if self.candidates is None:
            raise LinkError("decode.candidates: constrained needs the candidates stage's table (candidates.parquet): "
                            "run the candidates stage, or set decode.candidates to none")
        self.model.eval()
        cache: dict[str, list[int]] = {}
        seqs = [[cache.setdefault(n, answer_ids(self.tokenizer, n)) for n in self.candidates.at[i, "cand_names"]]
                for i in ids]
        return score_candidates(self.model, self.examples(ids, with_target=False), self.features, self.pad_id,
                                seqs, p.length_penalty, p.batch_size, progress)

    def rank(self, ids: Sequence[str], p: DecodeParams, fusion: Fusion | None = None,
             llm_scores: list[np.ndarray] | None = None, progress: bool = False,
             contexts: dict[str, tuple[str, str]] | None = None) -> list[Ranked]:
        """Each mention's entities, best first: beam search over the whole trie (candidates: none,
        the paper's mode), or its candidates by `fusion` of their LLM score and prior (None: the
        LLM alone); a mention the ranker is sure of (decode.ranker_sure) keeps the prior's order.
        `llm_scores` (per id) stand in for the LLM's; `contexts` (id -> text, mention) are what
        the LLM reads the candidates' descriptions against (decode.describe)."""
        if p.candidates == "none":
            names, eids = self.trie.names, self.trie.entity_ids
            return [Ranked([eids[h.value] for h in hs], [names[h.value] for h in hs], [h.score for h in hs])
                    for hs in self.predict(ids, p, progress)]
        # A mention without a single candidate (no word shared with any KB name, no alias) falls back
        # to the paper's beam search over the whole trie: rare, and otherwise certainly wrong.
        empty = [i for i in ids if len(self.candidates.at[i, "cand_ids"]) == 0]
        fallback = dict(zip(empty, self.rank(empty, dataclasses.replace(p, candidates="none")))) if empty else {}
        if fusion is not None and fusion.ranker_only:  # the LLM earned no say on dev: the ranker links
            sure = {i for i in ids if i not in fallback}
        else:
            sure = self.sure(ids, p)
        asked = [i for i in ids if i not in fallback and i not in sure]
        read = fusion is not None and fusion.kind == "learned"  # only the learned fusion reads descriptions
        given = dict(zip(ids, llm_scores)) if llm_scores is not None else None
        scored = dict(zip(asked, self.scored(asked, p, contexts, read, [given[i] for i in asked] if given else None,
                                             progress)))
        out = []
        for i in ids:
            if i in fallback:
                out.append(fallback[i])
                continue
            c = self.candidates.loc[i]
            prior = np.asarray(c["cand_scores"], dtype=np.float64)
            if i in sure:
                out.append(Ranked(list(c["cand_ids"]), list(c["cand_names"]), prior.tolist(), None, prior.tolist()))
                continue
            s = scored[i]
            fused = (fusion or LLM_ALONE).score(s)
            order = np.argsort(-fused, kind="stable")  # ties: the candidates' own order
            out.append(Ranked([c["cand_ids"][j] for j in order], [c["cand_names"][j] for j in order],
                              fused[order].tolist(), s.llm[order].tolist(), prior[order].tolist()))
        return out

    def sure(self, ids: Sequence[str], p: DecodeParams) -> set[str]:
        """The mentions whose first candidate's prior reaches decode.ranker_sure: the ranker links them."""
        if p.ranker_sure is None:
            return set()
        first_prior = self.candidates.loc[list(ids), "cand_scores"] if len(ids) else []
        return {i for i, s in zip(ids, first_prior) if len(s) and float(np.exp(s[0])) >= p.ranker_sure}

    def scored(self, ids: Sequence[str], p: DecodeParams, contexts: dict[str, tuple[str, str]] | None,
               read: bool, llm_scores: list[np.ndarray] | None = None, progress: bool = False) -> list[Scored]:
        """What fusion reads of each mention's candidates: the prior, the LLM's score of each name
        and, when `read` and decode.describe, its reading of their descriptions."""
        from gemel.describe import described_scores

        if not len(ids):
            return []
        llm = llm_scores if llm_scores is not None else self.candidate_llm_scores(ids, p, progress)
        c = self.candidates.loc[list(ids)]
        described: list[np.ndarray | None] = [None] * len(ids)
        if read and p.describe and self.descriptions:
            if contexts is None:
                raise LinkError("decode.describe needs each mention's text: pass contexts to rank")
            self.model.eval()
            described = described_scores(self.model, self.tokenizer, self.pad_id, [contexts[i] for i in ids],
                                         [[self.descriptions.get(e) for e in row] for row in c["cand_ids"]],
                                         list(c["cand_names"]), p.describe,
                                         [np.asarray(x, dtype=np.float64) for x in c["cand_scores"]], 2 * p.batch_size)
        return [Scored(n, np.asarray(s, dtype=np.float64), np.asarray(x, dtype=np.float64), d)
                for n, s, x, d in zip(c["cand_names"], c["cand_scores"], llm, described)]

    def accuracy(self, mentions: pd.DataFrame, p: DecodeParams, fusion: Fusion | None = None) -> float:
        """Exact-match accuracy of the top name over the given (non-NIL) mentions."""
        ranked = self.rank(list(mentions["id"]), p, fusion, contexts=contexts_of(mentions))
        top = [r.names[0] if r.names else None for r in ranked]
        return float(np.mean([t == g for t, g in zip(top, mentions["entity_name"])])) if len(top) else 0.0

    def fusion(self, dev: pd.DataFrame, p: DecodeParams) -> tuple[Fusion, dict[str, Any]]:
        """The fusion decode.* asks for: a fixed weight, or fitted (`learned`) or chosen (weight
        `auto`) on the dev mentions, whose LLM scores are computed once. Returns it and a report,
        with the ranker alone, the LLM alone and the fusion cross-validated on those mentions."""
        if p.fusion == "weight" and p.fusion_weight != "auto":
            return Fusion("weight", weight=float(p.fusion_weight)), {"fusion": "weight",
                                                                     "fusion_weight": float(p.fusion_weight),
                                                                     "chosen_on": None}
        if not len(dev):
            raise LinkError(f"decode.fusion: {p.fusion} is fitted on the dev split's linked mentions, and this dataset "
                            "has none: set decode.fusion to weight and decode.fusion_weight to a number (e.g. --set "
                            "decode.fusion=weight --set decode.fusion_weight=1.0)")
        sure = self.sure(list(dev["id"]), p)
        asked = dev[~dev["id"].isin(sure)]
        scored = self.scored(list(asked["id"]), p, contexts_of(asked), p.fusion == "learned")
        gold = list(asked["entity_name"])
        fusion, extra = fit_fusion(scored, gold, p)
        cv = cross_validate(scored, gold, p)
        fusion, kept = earned(fusion, cv)
        if not kept:
            extra["llm_kept"] = False  # the fusion scored below the ranker alone on dev: the ranker links
        # The same dev mentions whole: those the ranker is sure of count with the prior's first.
        first = self.candidates.loc[list(dev["id"]), "cand_names"]
        right = np.array([len(n) > 0 and n[0] == g for n, g in zip(first, dev["entity_name"])], dtype=bool)
        sure_right = int(right[dev["id"].isin(sure).to_numpy()].sum())
        whole: dict[str, Any] = {"mentions": len(dev), "ranker_sure": len(sure),
                                 "ranker_alone": round(float(right.mean()), 4)}
        if "fused" in cv:
            whole["fused"] = round((sure_right + round(cv["fused"] * len(asked))) / len(dev), 4)
        return fusion, {**fusion.record(), "chosen_on": f"dev ({len(dev)} mentions, {len(asked)} scored by the LLM)",
                        **extra, "dev_cross_validated": {**whole, "llm_scored": cv}}

    def predictions(self, mentions: pd.DataFrame, ranked: Sequence[Ranked]) -> pd.DataFrame:
        """The decode stage's table: gold, prediction, and the ranked entities of every mention."""
        return pd.DataFrame({
            "id": mentions["id"].tolist(), "split": mentions["split"].tolist(), "mention": mentions["mention"].tolist(),
            "gold_id": mentions["entity_id"].tolist(), "gold_name": mentions["entity_name"].tolist(),
            "is_nil": mentions["is_nil"].tolist(),
            # A missing or unreadable image is no row (missing_image: drop), or a row whose ok is False.
            "has_image": [self.has_image(i) for i in mentions["id"]],
            "pred_id": [r.ids[0] if r.ids else None for r in ranked],
            "pred_name": [r.names[0] if r.names else None for r in ranked],
            "beams": [r.names for r in ranked], "beam_ids": [r.ids for r in ranked],
            "beam_scores": [r.scores for r in ranked],
            "llm_scores": [r.llm_scores for r in ranked], "cand_priors": [r.priors for r in ranked],
        })

    def has_image(self, mention_id: str) -> bool:
        row = self.builder.image[mention_id]
        return bool(row >= 0 and (self.image_ok is None or self.image_ok[row]))

    def decode_split(self, mentions: pd.DataFrame, p: DecodeParams,
                     progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The decode stage: link every mention of split `p.split` (candidate-aware: with the fusion
        weight chosen on the dev split's linked mentions). Returns the predictions table (schema
        gemel.data.tables.PREDICTIONS_SCHEMA) and the report: the settings, the chosen weight, accuracy and speed."""
        import time

        report: dict[str, Any] = {"split": p.split, "mode": MODES[p.candidates],
                                  "settings": {k: getattr(p, k) for k in DECODE_SETTINGS}}
        report["settings"]["fusion_grid"] = list(p.fusion_grid)
        fusion = None
        if p.candidates != "none":
            fusion, chosen = self.fusion(mentions[(mentions["split"] == "dev") & ~mentions["is_nil"]], p)
            report.update(chosen)
        split = mentions[mentions["split"] == p.split].reset_index(drop=True)
        t0 = time.perf_counter()
        ranked = self.rank(list(split["id"]), p, fusion, progress=progress, contexts=contexts_of(split))
        seconds = time.perf_counter() - t0
        pred = self.predictions(split, ranked)
        linked = pred[~pred["is_nil"]]
        report.update({"mentions": len(pred), "seconds": round(seconds, 1),
                       "mentions_per_s": round(len(pred) / max(seconds, 1e-9), 3),
                       "accuracy": round(float((linked["pred_name"] == linked["gold_name"]).mean()), 4)
                       if len(linked) else None})
        return pred, report


@dataclass
class NewInputs:
    """What linking new inputs needs beyond the pipeline's own mentions (made by from_run)."""
    decode: DecodeParams
    mode: str  # paper | candidates
    fusion: Fusion
    image_encoder: Any  # gemel.encoders.ImageEncoder, None for a text-only run
    missing_image: str
    image_batch_size: int
    pool: Any  # gemel.retrieval.DemoPool when the run's prompts have demonstrations
    text_encoder: Any
    retrieve_batch_size: int
    generator: Any  # gemel.candidates.Generator when decode.candidates is constrained
    ranker: Any
    cand_top_k: int  # the candidates stage's top_k: the candidate prior is a softmax over these
    base_features: np.ndarray  # the run's features (the pool's images); a batch's rows go after them
    notes: list[str]


_NO_MENTIONS = pd.DataFrame({c: pd.Series(dtype=object) for c in ("id", "text", "mention", "image", "entity_name")})
_NO_DEMOS = pd.DataFrame({"id": pd.Series(dtype=object), "demo_ids": pd.Series(dtype=object)})


def dense_index(kb: pd.DataFrame, cp: CandidatesParams, encoder_spec: dict[str, Any] | None,
                paths: dict[str, Path]) -> DenseIndex | None:
    """The candidates stage's dense index for new inputs: its cached KB embeddings (never
    recomputed; DenseError when stale) and its sentence encoder, or None when the run's
    candidates did not use them."""
    from gemel.candidates import dense_on
    from gemel.dense import cached_kb_embeddings, kb_embeddings_precision, load_encoder

    if not dense_on(cp):
        return None
    encoder = load_encoder(cp.encoder, {cp.encoder: encoder_spec} if encoder_spec else {},
                           kb_embeddings_precision(paths["kb_embeddings"]))
    return DenseIndex(cached_kb_embeddings(kb, encoder, paths["kb_embeddings"]), encoder, reused=True)


def propose_for(n: NewInputs, table: pd.DataFrame) -> list[dict]:
    from gemel.candidates import propose

    return propose(n.generator, n.ranker, table["mention"].tolist(), table["text"].tolist(), n.cand_top_k)


def descriptions_of(kb: pd.DataFrame) -> dict[str, str] | None:
    """KB entity id -> description, None for a KB without any (WikiDiverse's: names only)."""
    if "description" not in kb:
        return None
    described = kb[kb["description"].notna()]
    return dict(zip(described["entity_id"].astype(str), described["description"].astype(str))) or None


def contexts_of(mentions: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Mention id -> (text, mention): what the LLM reads descriptions against."""
    return dict(zip(mentions["id"], zip(mentions["text"], mentions["mention"])))


def decode_settings(run_dir: Path) -> tuple[DecodeParams, Fusion, list[str]]:
    """How the run's decode stage linked (its decode_report.json: settings and, candidate-aware, the
    fusion fitted or chosen on dev), so new inputs link the same way; with a note whenever that
    record is missing and defaults stand in."""
    report = run_dir / DECODE_REPORT
    data = read_json(report, "decode") if report.is_file() else {}
    if "settings" not in data:
        return DecodeParams(), LLM_ALONE, [f"{report}: no record of the decode stage's settings (run the decode "
                                           "stage): linking in the paper's mode with the default decode settings"]
    p = DecodeParams(**{**data["settings"], "fusion_grid": tuple(data["settings"]["fusion_grid"])})
    if p.candidates == "none":
        return p, LLM_ALONE, []
    recorded = Fusion.from_record(data, str(report))
    if recorded is not None:
        return p, recorded, []
    if p.fusion == "weight" and p.fusion_weight != "auto":
        return p, Fusion("weight", weight=float(p.fusion_weight)), []
    return p, LLM_ALONE, [f"fusion weight 0 (the LLM alone chooses among candidates): {report} records no fusion"]


def load_candidates(path: str | Path, k: int, top_k: int) -> pd.DataFrame:
    """The candidates stage's table cut to each mention's first `k` candidates (best first)."""
    path = Path(path)
    if not path.is_file():
        raise CandidateError(f"{path}: no such file (candidate-aware linking needs the candidates stage: run it first)")
    if k > top_k:
        raise CandidateError(f"{k} candidates per mention asked for, but candidates.top_k = {top_k}: "
                             "the candidates stage keeps only top_k per mention")
    table = read_table(path, "candidates")
    return pd.DataFrame(first(table.to_dict("records"), k), columns=table.columns)


def pipeline_linker(params: dict[str, Any], dp: DecodeParams, mapper: bool = False) -> tuple[Linker, pd.DataFrame]:
    """The linker of the pipeline's own mentions, assembled from the artifacts `params` names, to
    link as `dp` says (the decode stage's settings, or the train stage's dev evaluation's): with
    the candidates table cut to dp.num_candidates when candidate-aware, the KB's descriptions when
    dp.describe reads them, and the run's trained mapper when `mapper`. Returns it and the mentions."""
    a = Artifacts.of(params)
    mentions = read_mentions(a.mentions)
    demos = read_demos(a.demos)
    constrained = dp.candidates != "none"
    cands = load_candidates(a.candidates, dp.num_candidates, params["candidates"]["top_k"]) if constrained else None
    linker = build_linker(params, mentions, demos, a.features, a.trie, cands)
    if constrained and dp.describe:
        linker.descriptions = descriptions_of(read_kb(a.kb))
    if mapper:
        linker.model.load_mapper(a.in_run(MAPPER))
    return linker, mentions


def build_linker(params: dict[str, Any], mentions: pd.DataFrame, demos: pd.DataFrame,
                 features: str | Path | tuple[dict[str, int], np.ndarray], trie: str | Path | EntityTrie,
                 candidates: pd.DataFrame | None = None, device_name: str | None = None) -> Linker:
    """A linker from its parts: `features` is a features table's path or (image path -> row,
    matrix), `trie` a trie file or an EntityTrie. The LLM is bf16 on a GPU, fp32 on a CPU."""
    m = ModelParams(**params["model"])
    if m.num_demos > params["retrieve"]["top_k"]:
        raise LinkError(f"model.num_demos = {m.num_demos} exceeds retrieve.top_k = {params['retrieve']['top_k']}: "
                        "retrieve keeps only top_k demonstrations per mention; lower model.num_demos or raise "
                        "retrieve.top_k (and rerun retrieve)")
    spec = get_spec(params["llms"], m.llm)
    tokenizer = load_tokenizer(spec)
    dev = device_name or default_device()
    llm = load_llm(spec, dev, torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    if isinstance(features, tuple):
        rows, matrix = features
        ok = np.ones(len(matrix), dtype=bool)
    else:
        table = load_features(features)
        # A missing or unreadable image keeps its zero vector in the prompt (features.missing_image:
        # zero) but counts as no image in the predictions (has_image).
        rows, matrix, ok = table.index, table.matrix, table.ok
    builder = PromptBuilder(mentions, demos, rows, tokenizer, m.prefix_tokens, m.use_image, m.num_demos)
    torch.manual_seed(params["train"]["seed"])  # the mapper's initial weights are part of the run
    model = Gemel(llm, matrix.shape[1], m.prefix_tokens).to(dev)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cands = candidates.set_index("id", drop=False) if candidates is not None else None
    return Linker(model, builder, matrix, trie if isinstance(trie, EntityTrie) else EntityTrie.load(trie), pad,
                  tokenizer, cands, image_ok=ok)
