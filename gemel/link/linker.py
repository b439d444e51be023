"""A run's parts, assembled from the pipeline's artifacts: the frozen LLM + mapper and the entity
trie (gemel.link.ranking.LLMRanker), the prompt builder over the mentions and their demonstrations, the
image features and the candidates table. Used by the train and decode stages, and, through
`Linker.from_run`, by `gemel link` and the Python API for new inputs:

    linker = Linker.from_run("results/smollm2-135m")
    linker.link([{"text": "I saw a picture of Mercury.", "mention": "Mercury", "image": "m.png"}])

A new input goes through the code paths of the pipeline's own mentions: its image through the
run's encoder and missing-image policy (gemel.vision.features), its demonstrations by the retrieve
stage's routine and seed from the run's training pool (gemel.search.retrieval), its candidates from the
same generator and ranker (gemel.search.candidates); it becomes an example as they do (gemel.link.examples)
and is ranked by the same calls (gemel.link.ranking). Linking changes none of the linker's parts."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gemel.config import CandidatesParams, DecodeParams, ModelParams
from gemel.data.tables import read_kb, read_mentions, read_table
from gemel.generation.kb_trie import EntityTrie
from gemel.generation.llm import get_spec, load_llm, load_tokenizer
from gemel.generation.model import Gemel
from gemel.generation.prompt import NO_IMAGE, PromptBuilder
from gemel.link.examples import LinkExample, build, candidates_of, pipeline_examples
from gemel.link.fusion import Fusion
from gemel.link.inputs import InputError, NewMention, chunks, error_record, parse_input
from gemel.link.predict import MODES, decode_settings
from gemel.link.ranking import LinkError, LLMRanker
from gemel.paths import MAPPER, Artifacts
from gemel.search.candidates import CandidateError, first
from gemel.search.dense import DenseIndex
from gemel.search.retrieval import load_text_encoder, read_demos, read_pool
from gemel.stack import default_device
from gemel.vision.features import encode_inputs, load_features


@dataclass(frozen=True)
class NewBatch:
    """A batch of new inputs made ready to rank: the examples of those that can be linked, the
    feature matrix their image rows index (the run's, then theirs), and per input why its image
    was not used and why it cannot be linked (None: it can)."""
    examples: list[LinkExample]
    features: np.ndarray
    why: list[str | None]
    errors: list[str | None]


@dataclass(frozen=True)
class Linker:
    """A run's parts, assembled once and never changed by linking: the ranker (LLM + mapper,
    trie), the prompt builder over the run's mentions, their image features and, for the
    pipeline, the candidates stage's table; with `new`, what linking new inputs needs."""
    ranker: LLMRanker
    prompts: PromptBuilder
    features: np.ndarray
    image_ok: np.ndarray | None = None  # per features row: False for a missing or unreadable image
    candidates: pd.DataFrame | None = None  # the candidates stage's table, indexed by mention id
    new: NewInputs | None = None  # set by from_run: what linking new inputs needs

    @property
    def model(self) -> Gemel:
        return self.ranker.model

    @classmethod
    def from_run(cls, run_dir: str | Path, check: bool = True) -> Linker:
        """A linker for new inputs from a trained run's folder ({train.out}/{llm}) and its run.json.
        Refuses (RunError) a run whose image encoder, KB, trie or mapper no longer match the
        record; `notes` says what else changed, and which fusion is used."""
        from gemel.link.run import RunError, check_run, drift, read_run_record, resolve

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
        from gemel.config import FeaturesParams
        from gemel.link.run import RunError, run_params
        from gemel.search.candidates import CONTEXT, Generator, Ranker
        from gemel.vision.encoders import build_image_encoder

        params = run_params(record)
        m = ModelParams(**record["model"])
        constrained = dp.candidates != "none"
        mentions = read_mentions(paths["mentions"]) if (m.num_demos or constrained) else None
        pool = read_pool(paths["pool"]) if m.num_demos else None
        # The prompt builder holds the pool's mentions (the demonstrations' questions and answers).
        known = mentions[mentions["id"].isin(pool.ids)] if pool is not None else _NO_MENTIONS
        enc = record["image_encoder"]
        settings = ("encoder", "open_clip_model", "open_clip_pretrained", "open_clip_output")
        encoder = (build_image_encoder(FeaturesParams(**{k: enc[k] for k in settings if k in enc}))
                   if m.use_image else None)
        text_encoder = None
        if pool is not None and pool.method == "simcse":
            text_encoder = load_text_encoder(record["retrieval"]["encoder"], params["text_encoders"])
        gen = ranker = descriptions = None
        if constrained:
            weights = record["candidates"].get("weights")
            if not weights:
                raise RunError(f"{run_dir}/run.json records no candidate ranker weights (no candidates report.json "
                               "when it was trained): rerun the candidates and train stages")
            c = record["candidates"]
            # A run recorded before folding and the fuzzy, dense and acronym sources existed made its
            # candidates without them.
            cp = CandidatesParams(top_k=c["top_k"], pool=c["pool"], fold=c.get("fold", False), fuzzy=c.get("fuzzy", 0),
                                  acronyms=c.get("acronyms", 0),
                                  **{k: c.get(k, False) for k in CONTEXT}, dense=c.get("dense", 0),
                                  dense_sim=c.get("dense_sim", False),
                                  encoder=c.get("encoder", CandidatesParams.encoder))
            kb = read_kb(paths["kb"])
            gen = Generator.build(kb, mentions, cp, dense_index(kb, cp, c.get("encoder_spec"), paths))
            descriptions = descriptions_of(kb) if dp.describe else None
            ranker = Ranker.from_record(c)
        linker = build_linker(params, known, _NO_DEMOS, paths["features"], paths["trie"], descriptions=descriptions)
        linker.model.load_mapper(paths["mapper"])
        return replace(linker, new=NewInputs(
            decode=dp, mode=MODES[dp.candidates], fusion=fusion, image_encoder=encoder,
            missing_image=record["features"]["missing_image"], image_batch_size=record["features"]["batch_size"],
            pool=pool, text_encoder=text_encoder, retrieve_top_k=record["retrieval"]["top_k"],
            retrieve_batch_size=record["retrieval"]["batch_size"], generator=gen, ranker=ranker,
            cand_top_k=record["candidates"]["top_k"], notes=notes))

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
        batch = self.new_batch(items)
        ranked = iter(self.ranker.rank(batch.examples, batch.features, n.decode, n.fusion) if batch.examples else [])
        out = []
        for it, why, error in zip(items, batch.why, batch.errors):
            if error is not None:
                out.append(error_record({"mention": it.mention}, it.id, error, n.mode))
                continue
            r = next(ranked)
            cut = len(r.ids) if top is None else top
            out.append({"id": it.id, "mention": it.mention,
                        "entities": [{"id": e, "name": nm, "score": round(float(s), 6)}
                                     for e, nm, s in zip(r.ids[:cut], r.names[:cut], r.scores[:cut])],
                        "mode": n.mode, "image_used": why is None, "image_reason": why,
                        "mention_in_text": it.mention in it.text})
        return out

    def new_batch(self, items: Sequence[NewMention]) -> NewBatch:
        """New inputs as examples, by the pipeline's routines: the image through the run's encoder
        and missing-image policy, the demonstrations by the retrieve stage's, the candidates by the
        candidates stage's generator and ranker. The run's parts are read, never changed."""
        n = self.new
        if self.prompts.k:
            vectors, why, errors = encode_inputs([it.image for it in items], n.image_encoder,
                                                 n.image_batch_size, n.missing_image)
        else:
            vectors, why, errors = None, ["text-only run (model.use_image: false)"] * len(items), [None] * len(items)
        ok = [i for i, e in enumerate(errors) if e is None]
        used = [i for i in ok if why[i] is None]
        features = np.concatenate([self.features, vectors[used]]) if used else self.features
        row = {i: len(self.features) + j for j, i in enumerate(used)}  # the batch's images after the run's
        table = pd.DataFrame({"text": [items[i].text for i in ok], "mention": [items[i].mention for i in ok]})
        demos: list[list[str]] = [[] for _ in ok]
        if n.pool is not None and ok:
            demos = [ids for ids, _ in n.pool.retrieve(table, n.retrieve_top_k, n.text_encoder, n.retrieve_batch_size)]
        cands: list[Any] = [None] * len(ok)
        if n.generator is not None and ok:
            cands = [candidates_of(c) for c in first(propose_for(n, table), n.decode.num_candidates)]
        examples = [build(self.prompts, items[i].id, items[i].text, items[i].mention,
                          self.prompts.question(items[i].text, items[i].mention, row.get(i, NO_IMAGE)), d, c)
                    for i, d, c in zip(ok, demos, cands)]
        return NewBatch(examples, features, why, errors)

    def examples(self, mentions: pd.DataFrame) -> list[LinkExample]:
        """The pipeline's own mentions as examples, with their rows of the candidates table."""
        return pipeline_examples(self.prompts, mentions, self.candidates)


@dataclass
class NewInputs:
    """What linking new inputs needs beyond the pipeline's own mentions (made by from_run)."""
    decode: DecodeParams
    mode: str  # paper | candidates
    fusion: Fusion
    image_encoder: Any  # gemel.vision.encoders.ImageEncoder, None for a text-only run
    missing_image: str
    image_batch_size: int
    pool: Any  # gemel.search.retrieval.DemoPool when the run's prompts have demonstrations
    text_encoder: Any
    retrieve_top_k: int  # the retrieve stage's top_k: a prompt shows the num_demos most similar of them
    retrieve_batch_size: int
    generator: Any  # gemel.search.candidates.Generator when decode.candidates is constrained
    ranker: Any
    cand_top_k: int  # the candidates stage's top_k: the candidate prior is a softmax over these
    notes: list[str]


_NO_MENTIONS = pd.DataFrame({c: pd.Series(dtype=object) for c in ("id", "text", "mention", "image", "entity_name")})
_NO_DEMOS = pd.DataFrame({"id": pd.Series(dtype=object), "demo_ids": pd.Series(dtype=object)})


def dense_index(kb: pd.DataFrame, cp: CandidatesParams, encoder_spec: dict[str, Any] | None,
                paths: dict[str, Path]) -> DenseIndex | None:
    """The candidates stage's dense index for new inputs: its cached KB embeddings (never
    recomputed; DenseError when stale) and its sentence encoder, or None when the run's
    candidates did not use them."""
    from gemel.search.candidates import dense_on
    from gemel.search.dense import cached_kb_embeddings, kb_embeddings_precision, load_encoder

    if not dense_on(cp):
        return None
    encoder = load_encoder(cp.encoder, {cp.encoder: encoder_spec} if encoder_spec else {},
                           kb_embeddings_precision(paths["kb_embeddings"]))
    return DenseIndex(cached_kb_embeddings(kb, encoder, paths["kb_embeddings"]), encoder, reused=True)


def propose_for(n: NewInputs, table: pd.DataFrame) -> list[dict]:
    from gemel.search.candidates import propose

    return propose(n.generator, n.ranker, table["mention"].tolist(), table["text"].tolist(), n.cand_top_k)


def descriptions_of(kb: pd.DataFrame) -> dict[str, str] | None:
    """KB entity id -> description, None for a KB without any (WikiDiverse's: names only)."""
    if "description" not in kb:
        return None
    described = kb[kb["description"].notna()]
    return dict(zip(described["entity_id"].astype(str), described["description"].astype(str))) or None


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
    descriptions = descriptions_of(read_kb(a.kb)) if constrained and dp.describe else None
    linker = build_linker(params, mentions, demos, a.features, a.trie, cands, descriptions=descriptions)
    if mapper:
        linker.model.load_mapper(a.in_run(MAPPER))
    return linker, mentions


def build_linker(params: dict[str, Any], mentions: pd.DataFrame, demos: pd.DataFrame,
                 features: str | Path | tuple[dict[str, int], np.ndarray], trie: str | Path | EntityTrie,
                 candidates: pd.DataFrame | None = None, device_name: str | None = None,
                 descriptions: dict[str, str] | None = None) -> Linker:
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
    ranker = LLMRanker(model, trie if isinstance(trie, EntityTrie) else EntityTrie.load(trie), pad, tokenizer,
                       descriptions)
    return Linker(ranker, builder, matrix, ok, cands)
