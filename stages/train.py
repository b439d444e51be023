"""train: fit the linear mapper against the frozen LLM -> {train.out}/{model.llm}/mapper.safetensors,
run.json (what the run was built from: what `gemel link` reads), the loss curve and dev accuracy
(DVC plots) and train_report.json. The dev evaluation that keeps the best mapper links with train's
own dev_* settings, never decode's."""
from __future__ import annotations

import json
import sys

import pandas as pd

from gemel import stack
from gemel.atomic import write_text_atomic
from gemel.config import ModelParams, TrainParams, section
from gemel.generation.training import LOSS_COLUMNS
from gemel.link.fit import dev_decode_params, fit
from gemel.link.linker import pipeline_linker
from gemel.link.run import write_run_record
from gemel.paths import DEV_ACCURACY, MAPPER, TRAIN_LOSS, TRAIN_REPORT, Artifacts
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    params = _cli.parse(__doc__, argv)
    m, p = section(params, "model", ModelParams), section(params, "train", TrainParams)
    linker, mentions = pipeline_linker(params, dev_decode_params(p))
    result = fit(linker, mentions, p, m.use_image)
    a = Artifacts.of(params)
    linker.model.save_mapper(a.in_run(MAPPER), {"llm": m.llm, "use_image": str(m.use_image),
                                                "num_demos": str(m.num_demos)})
    write_run_record(params, a.run)  # after the mapper: its hash is part of the record
    # The header always: a run that trains 0 steps (text only) still has a readable, empty curve.
    write_text_atomic(pd.DataFrame(result.history.loss, columns=list(LOSS_COLUMNS)).to_csv(index=False),
                      a.in_run(TRAIN_LOSS))
    write_text_atomic(pd.DataFrame(result.history.dev, columns=["step", "accuracy"]).to_csv(index=False),
                      a.in_run(DEV_ACCURACY))
    text = json.dumps({"llm": m.llm, **result.report, "stack": stack.record(str(linker.model.device)),
                       "cost": _cli.cost()}, indent=2)
    write_text_atomic(text + "\n", a.in_run(TRAIN_REPORT))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run("train", main))
