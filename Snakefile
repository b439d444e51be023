# gemel with Snakemake: the stage CLIs of dvc.yaml, plus the LLM-scale sweep and the ablations.
#   snakemake --cores 8                  the default run, as `dvc repro`
#   snakemake --cores 8 eval_all_scales  every LLM of `scales` (--config scales=paper: the paper's)
#   snakemake --cores 8 ablations        every entry of `ablations`
#   snakemake --cores 8 seeds            the default run once per seed of `seeds`: mean and std
#   snakemake --cores 8 link_corpus --config link_run=RUN link_input=IN.jsonl link_output=OUT.jsonl link_shards=N
#                                        gemel link over a large file in N shards (docs/linking.md)
# Settings: params.yaml, validated against gemel/schema/params.schema.yaml. See docs/sweeps.md.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/sweeps.smk"
include: "workflow/rules/link.smk"


rule all:
    default_target: True
    input:
        DEFAULT.metrics,
        DEFAULT.report,
