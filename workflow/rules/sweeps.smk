# The two sweeps: every LLM of `scales` (eval_all_scales) and every entry of `ablations`, each
# through the rules of model.smk, then one summary table and plot per sweep (stages/summarize.py).


rule summarize_scales:
    input:
        metrics=[r.metrics for r in SCALES],
        code=["gemel/summary.py", "gemel/workflow.py", "stages/summarize.py"],
    output:
        **summary_files(PARAMS, "scales"),
    params:
        # --set scales: the sweep may come from --config scales=paper rather than params.yaml.
        cmd=cli("summarize", {"summarize.kind": "scales", "scales": PARAMS["scales"]}),
        tracked=tracked(PARAMS, ["scales", "paper_scales", "llms", "summarize"]),
    log:
        f"{LOGS}/summarize_scales.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule summarize_ablations:
    input:
        metrics=[r.metrics for r in ABLATIONS],
        code=["gemel/summary.py", "gemel/workflow.py", "stages/summarize.py"],
    output:
        **summary_files(PARAMS, "ablations"),
    params:
        cmd=cli("summarize", {"summarize.kind": "ablations"}),
        tracked=tracked(PARAMS, ["ablations", "llms", "summarize"]),
    log:
        f"{LOGS}/summarize_ablations.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule eval_all_scales:
    input:
        rules.summarize_scales.output,


rule ablations:
    input:
        rules.summarize_ablations.output,
