# gemel link over a large JSON-lines file, in shards (gemel.link.corpus; docs/linking.md):
#   snakemake --cores 4 link_corpus --config link_run=results/smollm2-135m link_input=corpus.jsonl \
#       link_output=linked.jsonl link_shards=8 [link_top=5 link_on_error=skip link_threads=1 link_gpu=0]
#   snakemake --profile workflow/profiles/slurm link_corpus --config ...     one SLURM job per shard
# The shards live in {link_output}.shards/: plan.json (link_plan), each shard's output (written and
# resumed by gemel link: not a declared output, so a killed job's lines survive for its rerun) and
# its .done (the job's output), the jobs' logs. link_merge concatenates them in input order into
# link_output, byte-identical to one `gemel link --input link_input`, and writes the per-shard
# report {link_output}.report.json. Progress while it runs: gemel corpus status {link_output}.shards
from gemel.link.corpus import PLAN, done_marker

LINK_NEEDS = ("link_run", "link_input", "link_output")
LINK_OUTPUT = str(config.get("link_output", "linked.jsonl"))
LINK_DIR = f"{LINK_OUTPUT}.shards"
LINK_SHARDS = int(config.get("link_shards", 4))
LINK_THREADS = int(config.get("link_threads", 1))


def link_setting(key):
    """A link_* setting the link_corpus target needs; a clear error when it is missing."""
    missing = [k for k in LINK_NEEDS if k not in config]
    if missing:
        raise ConfigError(f"link_corpus needs --config {' '.join(f'{k}=...' for k in missing)} "
                          f"(and optionally link_shards, link_top, link_on_error, link_threads, link_gpu)")
    return str(config[key])


wildcard_constraints:
    shard=r"\d{5}",


localrules:
    link_plan,
    link_merge,
    link_corpus,


rule link_plan:
    input:
        corpus=lambda wc: link_setting("link_input"),
        run=lambda wc: f"{link_setting('link_run')}/{paths.RUN_RECORD}",
    output:
        plan=f"{LINK_DIR}/{PLAN}",
    params:
        run=lambda wc: link_setting("link_run"),
        top=config.get("link_top", 5),
        on_error=config.get("link_on_error", "skip"),
    log:
        f"{LINK_DIR}/logs/plan.log",
    conda:
        ENV
    shell:
        "python -m gemel.cli corpus plan {params.run:q} --input {input.corpus:q} --shards {LINK_SHARDS} "
        "--dir {LINK_DIR:q} --top {params.top} --on-error {params.on_error} > {log} 2>&1"


rule link_shard:
    input:
        plan=rules.link_plan.output.plan,
    output:
        done=f"{LINK_DIR}/shard-{{shard}}-of-{LINK_SHARDS:05d}.done",
    log:
        f"{LINK_DIR}/logs/shard-{{shard}}-of-{LINK_SHARDS:05d}.log",
    threads: LINK_THREADS
    resources:
        gpu=int(config.get("link_gpu", 0)),
    conda:
        ENV
    shell:
        "python -m gemel.cli corpus shard {LINK_DIR:q} {wildcards.shard} > {log} 2>&1"


rule link_merge:
    input:
        plan=rules.link_plan.output.plan,
        done=[str(done_marker(LINK_DIR, i, LINK_SHARDS)) for i in range(1, LINK_SHARDS + 1)],
    output:
        linked=LINK_OUTPUT,
        report=f"{LINK_OUTPUT}.report.json",
    log:
        f"{LINK_DIR}/logs/merge.log",
    conda:
        ENV
    shell:
        "python -m gemel.cli corpus merge {LINK_DIR:q} --output {output.linked:q} --report {output.report:q} > {log} 2>&1"


rule link_corpus:
    input:
        rules.link_merge.output.linked,
        rules.link_merge.output.report,
