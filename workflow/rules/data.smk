# Shared work, computed once for every run: the sample, the prepared tables, the image features, the
# demonstrations and the candidates (those of the ablations' other retrieval methods and candidates.*
# settings once each too). Same commands, inputs and outputs as the dvc.yaml stages of the same names.


rule sample:
    input:
        code=stage_code("sample"),
    output:
        directory(PARAMS["sample"]["out"]),
    params:
        cmd=cli("sample"),
        tracked=tracked(PARAMS, ["sample"]),
    log:
        f"{LOGS}/sample.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule prepare:
    input:
        # Every preset's files, as in dvc.yaml: the sample's folder (rule sample), or data/raw/<name>/.
        data=[PARAMS["sample"]["out"], "data/raw"],
        code=stage_code("prepare"),
    output:
        mentions=f"{PREPARED}/{paths.MENTIONS}",
        kb=f"{PREPARED}/{paths.KB}",
        report=f"{PREPARED}/{paths.PREPARE_REPORT}",
    params:
        cmd=cli("prepare"),
        tracked=tracked(PARAMS, ["dataset", f"datasets.{PARAMS['dataset']}", "prepare"]),
    log:
        f"{LOGS}/prepare.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule features:
    input:
        mentions=rules.prepare.output.mentions,
        # The image files themselves, as in dvc.yaml (the cache is keyed by their bytes, not their paths).
        data=[PARAMS["sample"]["out"], "data/raw"],
        code=stage_code("features"),
    output:
        table=f"{FEATURES}/{paths.FEATURES}",
        report=f"{FEATURES}/{paths.FEATURES_REPORT}",
    params:
        cmd=cli("features"),
        tracked=tracked(PARAMS, ["prepare.out", "features"]),
    log:
        f"{LOGS}/features.log",
    threads: 4
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule retrieve:
    input:
        mentions=rules.prepare.output.mentions,
        code=stage_code("retrieve"),
    output:
        demos=f"{DEMOS}/{paths.DEMOS}",
        pool=f"{DEMOS}/{paths.POOL}",
    params:
        cmd=cli("retrieve"),
        tracked=tracked(PARAMS, ["prepare.out", "retrieve", "text_encoders"]),
    log:
        f"{LOGS}/retrieve.log",
    threads: 4
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


# The other retrieval methods (ablations) in sub-folders of retrieve.out.
rule retrieve_method:
    input:
        mentions=rules.prepare.output.mentions,
        code=stage_code("retrieve"),
    output:
        demos=f"{DEMOS}/{{method}}/{paths.DEMOS}",
        pool=f"{DEMOS}/{{method}}/{paths.POOL}",
    params:
        cmd=lambda wc: cli("retrieve", method_settings(wc.method)),
        tracked=lambda wc: tracked(effective(PARAMS, method_settings(wc.method)), ["prepare.out", "retrieve", "text_encoders"]),
    log:
        f"{LOGS}/retrieve_{{method}}.log",
    threads: 4
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule candidates:
    input:
        mentions=rules.prepare.output.mentions,
        kb=rules.prepare.output.kb,
        code=stage_code("candidates"),
    output:
        table=f"{CANDIDATES}/{paths.CANDIDATES}",
        report=f"{CANDIDATES}/{paths.CANDIDATES_REPORT}",
        cost=f"{CANDIDATES}/{paths.CANDIDATES_COST}",
        kb_embeddings=f"{CANDIDATES}/{paths.KB_EMBEDDINGS}",
    params:
        cmd=cli("candidates"),
        tracked=tracked(PARAMS, ["prepare.out", "candidates", "text_encoders"]),
    log:
        f"{LOGS}/candidates.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


# The candidates of the ablations that change candidates.* settings, each in its own sub-folder of
# candidates.out named by those changes (gemel.workflow.candidates_variant), e.g. variants/fuzzy=0/.
rule candidates_variant:
    input:
        mentions=rules.prepare.output.mentions,
        kb=rules.prepare.output.kb,
        code=stage_code("candidates"),
    output:
        table=f"{CANDIDATES}/{CANDIDATE_VARIANTS}/{{variant}}/{paths.CANDIDATES}",
        report=f"{CANDIDATES}/{CANDIDATE_VARIANTS}/{{variant}}/{paths.CANDIDATES_REPORT}",
        cost=f"{CANDIDATES}/{CANDIDATE_VARIANTS}/{{variant}}/{paths.CANDIDATES_COST}",
        kb_embeddings=f"{CANDIDATES}/{CANDIDATE_VARIANTS}/{{variant}}/{paths.KB_EMBEDDINGS}",
    params:
        cmd=lambda wc: cli("candidates", VARIANTS[wc.variant]),
        tracked=lambda wc: tracked(effective(PARAMS, VARIANTS[wc.variant]),
                                   ["prepare.out", "candidates", "text_encoders"]),
    log:
        f"{LOGS}/candidates_{{variant}}.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"
