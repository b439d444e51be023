# Shared by the other .smk files: the validated config, the runs of the sweeps, and small helpers
# turning a run into `--set` overrides of the stage CLIs. The conventions live in gemel.workflow;
# each rule's `code` input is stage_code(<stage>), the list dvc.yaml has (gemel/codedeps.py).
import functools
import re
import sys

from gemel import paths
from gemel.codedeps import stage_code
from gemel.config import RETRIEVAL_METHODS, ConfigError, load_params
from gemel.workflow import (CANDIDATE_VARIANTS, ablation_runs, candidate_variants, check_llms, dataset_inputs,
                            dataset_runs, dataset_settings, default_run, demos_dir, effective, run_overrides,
                            run_settings, scale_runs, seed_runs, set_args, summary_files, tracked)


# The stage CLIs read this file, as under DVC (load_params validates it against the one schema);
# Snakemake's config must therefore say the same,
# except `scales`, the one workflow-level choice (`--config scales=paper`), and the link_* settings
# of the link_corpus target (link.smk), which are no stage's params.
PARAMS_FILE = "params.yaml"
PARAMS = load_params(PARAMS_FILE)
_differ = [k for k in sorted(set(config) | set(PARAMS))
           if k != "scales" and not k.startswith("link_") and config.get(k) != PARAMS.get(k)]
if _differ:
    raise ConfigError(f"--config/--configfile changed {', '.join(_differ)}: the stages read {PARAMS_FILE}, "
                      f"so edit it there (or add an entry to its ablations); --config may only set scales "
                      f"(and the link_* settings of link_corpus)")
PARAMS["scales"] = config["scales"]

DEFAULT = default_run(PARAMS)
SCALES = scale_runs(PARAMS)
ABLATIONS = ablation_runs(PARAMS)  # also checks what each ablation changes
SEEDS = seed_runs(PARAMS)
RESULTS = PARAMS["train"]["out"]
LOGS = f"{RESULTS}/logs"
PREPARED = PARAMS["prepare"]["out"]
FEATURES = PARAMS["features"]["out"]
DEMOS = PARAMS["retrieve"]["out"]
CANDIDATES = PARAMS["candidates"]["out"]
VARIANTS = candidate_variants(PARAMS)  # the ablations' candidates.* changes, each its own folder
TRIES = PARAMS["trie"]["out"]
METHODS = list(RETRIEVAL_METHODS)

# Fail before any job runs when an LLM of the DAG has no weights here, naming it and the fix.
check_llms(PARAMS, [DEFAULT.llm, *(r.llm for r in SCALES), *(r.llm for r in ABLATIONS)])


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))


# The software of every rule (relative to the .smk files). Without `--sdm conda`, jobs run in the
# environment snakemake was started from (the venv of `make setup`).
ENV = "../envs/gemel.yaml"


wildcard_constraints:
    run=_alternatives([RESULTS, *(r.out for r in ABLATIONS), *(r.out for r in SEEDS)]),
    llm=_alternatives(PARAMS["llms"]),
    method=_alternatives(m for m in METHODS if m != PARAMS["retrieve"]["method"]),
    variant=_alternatives(VARIANTS) or "(?!)",


def cli(stage, settings=None):
    """The stage's command as dvc.yaml has it, plus `--set` for each setting that differs."""
    return f"python -m stages.{stage} --params {PARAMS_FILE}{set_args(PARAMS, settings or {})}"


RUN_OVERRIDES = run_overrides(PARAMS)


def settings_of(wildcards):
    return run_settings(PARAMS, wildcards.run, wildcards.llm, RUN_OVERRIDES)


@functools.lru_cache(maxsize=None)
def _effective(run, llm):
    return effective(PARAMS, run_settings(PARAMS, run, llm, RUN_OVERRIDES))


def params_of(wildcards):
    """The params a run's stages see: params.yaml with the run's settings applied (do not modify)."""
    return _effective(wildcards.run, wildcards.llm)


def run_cli(stage):
    return lambda wildcards: cli(stage, settings_of(wildcards))


def run_tracked(keys):
    """tracked() of a run's params; `{llm}` in a key stands for the run's LLM (llms.{llm})."""
    return lambda wildcards: tracked(params_of(wildcards), [k.format(llm=wildcards.llm) for k in keys])


def run_demos(wildcards):
    p = params_of(wildcards)
    return f"{demos_dir(PARAMS, p['retrieve']['method'])}/{paths.DEMOS}"


def run_pool(wildcards):
    p = params_of(wildcards)
    return f"{demos_dir(PARAMS, p['retrieve']['method'])}/{paths.POOL}"


def run_candidates(name):
    """A file of the run's candidates folder: candidates.out, or its variant's (candidates_variant)."""
    return lambda wildcards: f"{params_of(wildcards)['candidates']['out']}/{name}"


def run_file(name):
    return f"{{run}}/{{llm}}/{name}"


def method_settings(method):
    return {"retrieve.method": method, "retrieve.out": demos_dir(PARAMS, method)}
