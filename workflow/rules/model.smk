# One run = one LLM under one train.out: {run}/{llm}/{mapper.safetensors, ..., metrics.json}. {run}
# is train.out itself (the default run and the scale sweep) or an ablation's folder; run_cli turns
# it into the stage's `--set` overrides (none for the default run, whose commands are exactly
# dvc.yaml's), and its demonstrations and candidates into those of its retrieval method and its
# candidates.* settings (run_demos, run_candidates). The trie depends only on the KB and the LLM: one
# per LLM, shared by every run.


rule trie:
    input:
        kb=rules.prepare.output.kb,
        code=stage_code("trie"),
    output:
        trie=f"{TRIES}/{{llm}}.npz",
        report=f"{TRIES}/{{llm}}.json",
    params:
        cmd=lambda wc: cli("trie", {"model.llm": wc.llm}),
        tracked=lambda wc: tracked(PARAMS, ["model.llm", f"llms.{wc.llm}"]),
    log:
        f"{LOGS}/trie_{{llm}}.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule train:
    input:
        mentions=rules.prepare.output.mentions,
        features=rules.features.output.table,
        demos=run_demos,
        pool=run_pool,
        trie=rules.trie.output.trie,
        candidates=run_candidates(paths.CANDIDATES),
        candidates_report=run_candidates(paths.CANDIDATES_REPORT),
        code=stage_code("train"),
    output:
        mapper=run_file(paths.MAPPER),
        run=run_file(paths.RUN_RECORD),
        loss=run_file(paths.TRAIN_LOSS),
        dev=run_file(paths.DEV_ACCURACY),
        report=run_file(paths.TRAIN_REPORT),
    params:
        cmd=run_cli("train"),
        # Not decode: the dev evaluation has its own train.dev_* settings (as in dvc.yaml).
        tracked=run_tracked(["model", "llms.{llm}", "train", "features", "retrieve", "text_encoders",
                             "candidates.top_k", "candidates.pool", "candidates.fit_limit", "candidates.fold",
                             "candidates.fuzzy", "candidates.overlap", "candidates.years", "candidates.pronouns"]),
    log:
        run_file("logs/train.log"),
    threads: 8
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule decode:
    input:
        mentions=rules.prepare.output.mentions,
        features=rules.features.output.table,
        demos=run_demos,
        trie=rules.trie.output.trie,
        mapper=rules.train.output.mapper,
        candidates=run_candidates(paths.CANDIDATES),
        kb=rules.prepare.output.kb,  # decode.describe: the candidates' descriptions
        code=stage_code("decode"),
    output:
        predictions=run_file(paths.PREDICTIONS),
        report=run_file(paths.DECODE_REPORT),
    params:
        cmd=run_cli("decode"),
        tracked=run_tracked(["model", "llms.{llm}", "decode", "candidates.top_k", "retrieve.top_k"]),
    log:
        run_file("logs/decode.log"),
    threads: 8
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule evaluate:
    input:
        kb=rules.prepare.output.kb,
        mentions=rules.prepare.output.mentions,
        candidates=run_candidates(paths.CANDIDATES),
        predictions=rules.decode.output.predictions,
        decode_report=rules.decode.output.report,
        code=stage_code("evaluate"),
    output:
        metrics=run_file(paths.METRICS),
        breakdown=run_file(paths.BREAKDOWN),
    params:
        cmd=run_cli("evaluate"),
        tracked=run_tracked(["evaluate"]),
    log:
        run_file("logs/evaluate.log"),
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule report:
    input:
        mentions=rules.prepare.output.mentions,
        candidates=run_candidates(paths.CANDIDATES),
        features=rules.features.output.table,
        predictions=rules.decode.output.predictions,
        decode_report=rules.decode.output.report,
        metrics=rules.evaluate.output.metrics,
        run=rules.train.output.run,
        loss=rules.train.output.loss,
        dev=rules.train.output.dev,
        # The thumbnails come from the image files themselves (every preset's, as for prepare).
        data=rules.prepare.input.data,
        code=stage_code("report"),
    output:
        html=run_file(paths.REPORT_HTML),
    params:
        cmd=run_cli("report"),
    log:
        run_file("logs/report.log"),
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"
