# The sweeps: every LLM of `scales` (eval_all_scales), every entry of `ablations` and every seed
# of `seeds` (the default run's mean and std), each through the rules of model.smk, and every preset of `datasets` whose files are here (datasets), each as
# one job; then one summary table and plot per sweep (stages/summarize.py).

# The presets whose files are here; the others are named once, with the missing file.
DATASETS, DATASETS_SKIPPED = dataset_runs(PARAMS)
for _name, _why in DATASETS_SKIPPED:
    print(f"datasets: skipping {_name}: {_why}", file=sys.stderr)
DATASET_STAGES = ["prepare", "features", "retrieve", "candidates", "trie", "train", "decode", "evaluate", "report"]
DATASET_CODE = sorted({path for stage in DATASET_STAGES for path in stage_code(stage)})


rule summarize_scales:
    input:
        metrics=[r.metrics for r in SCALES],
        reports=[r.report for r in SCALES],  # the summary page links each run's page
        code=stage_code("summarize"),
    output:
        **summary_files(PARAMS, "scales"),
    params:
        # --set scales: the sweep may come from --config scales=paper rather than params.yaml.
        cmd=cli("summarize", {"summarize.kind": "scales", "scales": PARAMS["scales"]}),
        tracked=tracked(PARAMS, ["scales", "paper_scales", *sorted({f"llms.{r.llm}" for r in SCALES}), "summarize"]),
    log:
        f"{LOGS}/summarize_scales.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule summarize_ablations:
    input:
        metrics=[r.metrics for r in ABLATIONS],
        reports=[r.report for r in ABLATIONS],
        code=stage_code("summarize"),
    output:
        **summary_files(PARAMS, "ablations"),
    params:
        cmd=cli("summarize", {"summarize.kind": "ablations"}),
        tracked=tracked(PARAMS, ["ablations", *sorted({f"llms.{r.llm}" for r in ABLATIONS}), "summarize"]),
    log:
        f"{LOGS}/summarize_ablations.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


# One preset = one coarse job: the stage CLIs of dvc.yaml in order, each with the preset's `--set`
# overrides (dataset=<name> and its own folders: data/datasets/<name>/..., results/datasets/<name>/).
rule dataset_run:
    input:
        data=lambda wc: dataset_inputs(PARAMS, wc.name),
        code=DATASET_CODE,
    output:
        metrics=f"{RESULTS}/datasets/{{name}}/{PARAMS['model']['llm']}/{paths.METRICS}",
        report=f"{RESULTS}/datasets/{{name}}/{PARAMS['model']['llm']}/{paths.REPORT_HTML}",
    wildcard_constraints:
        name=_alternatives(r.name for r in DATASETS) or "(?!)",
    params:
        cmd=lambda wc: " && ".join(cli(stage, dataset_settings(PARAMS, wc.name)) for stage in DATASET_STAGES),
        tracked=lambda wc: tracked(effective(PARAMS, dataset_settings(PARAMS, wc.name)),
                                   [f"datasets.{wc.name}", "prepare", "features", "retrieve", "text_encoders",
                                    "candidates", "model", f"llms.{PARAMS['model']['llm']}", "train", "decode",
                                    "evaluate"]),
    log:
        f"{LOGS}/datasets_{{name}}.log",
    threads: 8
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "({params.cmd}) > {log} 2>&1"


rule summarize_datasets:
    input:
        metrics=[r.metrics for r in DATASETS],
        reports=[r.report for r in DATASETS],
        code=stage_code("summarize"),
    output:
        **summary_files(PARAMS, "datasets"),
    params:
        cmd=cli("summarize", {"summarize.kind": "datasets"}),
        tracked=tracked(PARAMS, ["datasets", "model.llm", "summarize"]),
    log:
        f"{LOGS}/summarize_datasets.log",
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule summarize_seeds:
    input:
        metrics=[r.metrics for r in SEEDS],
        reports=[r.report for r in SEEDS],
        code=stage_code("summarize"),
    output:
        **summary_files(PARAMS, "seeds"),
    params:
        cmd=cli("summarize", {"summarize.kind": "seeds"}),
        tracked=tracked(PARAMS, ["seeds", "summarize"]),
    log:
        f"{LOGS}/summarize_seeds.log",
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


rule datasets:
    input:
        rules.summarize_datasets.output,


rule seeds:
    input:
        rules.summarize_seeds.output,
