"""One mention to link, built from explicit parts: its question, its image's feature row, its
demonstrations and its candidates. The pipeline's mentions (read from the stages' tables) and new
inputs (`Linker.link`) are both built here, and both are ranked by gemel.link.ranking, which keeps no
state: nothing a batch of new inputs does is seen by the next one, or by the pipeline's mentions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from gemel.generation.prompt import Example, PromptBuilder, Question


@dataclass(frozen=True)
class Candidates:
    """One mention's candidates as the candidates stage ranked them, best first, cut to
    decode.num_candidates; `priors` are the log p it gave them, as stored."""
    ids: Sequence[str]
    names: Sequence[str]
    priors: Sequence[float]


@dataclass(frozen=True)
class LinkExample:
    """Everything ranking reads of one mention."""
    id: str
    prompt: Example  # demonstrations + question, without the answer
    text: str
    mention: str
    image_row: int  # the question's feature row, NO_IMAGE for none (kept for a text-only run too)
    candidates: Candidates | None = None  # None in the paper's mode (beam search over the whole trie)

    @property
    def context(self) -> tuple[str, str]:
        """What the LLM reads candidates' descriptions against (decode.describe)."""
        return self.text, self.mention


def build(prompts: PromptBuilder, mention_id: str, text: str, mention: str, question: Question,
          demo_ids: Sequence[str], candidates: Candidates | None) -> LinkExample:
    """One example from explicit parts (`demo_ids`: the retrieve stage's list, least similar first)."""
    return LinkExample(mention_id, prompts.build(mention_id, question, demo_ids, with_target=False), text, mention,
                       question.image, candidates)


def candidates_of(row: dict) -> Candidates:
    """A candidates table's row (or a proposal of gemel.search.candidates.propose) -> Candidates."""
    return Candidates(row["cand_ids"], row["cand_names"], row["cand_scores"])


def pipeline_examples(prompts: PromptBuilder, mentions: pd.DataFrame,
                      candidates: pd.DataFrame | None = None) -> list[LinkExample]:
    """The pipeline's own mentions (tokenized by `prompts`, with the retrieve stage's
    demonstrations), each with its row of the candidates table (indexed by mention id) if given."""
    ids = list(mentions["id"])
    cands: list[Candidates | None] = [None] * len(ids)
    if candidates is not None and ids:
        rows = candidates.loc[ids, ["cand_ids", "cand_names", "cand_scores"]]
        cands = [Candidates(*r) for r in zip(rows["cand_ids"], rows["cand_names"], rows["cand_scores"])]
    return [build(prompts, i, t, m, prompts.questions[i], prompts.demos.get(i, []), c)
            for i, t, m, c in zip(ids, mentions["text"], mentions["mention"], cands)]
