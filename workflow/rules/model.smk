# One run = one LLM under one train.out: {run}/{llm}/{trie.npz, mapper.safetensors, ...,
# metrics.json}. {run} is train.out itself (the default run and the scale sweep) or an ablation's
# folder; run_cli turns it into the stage's `--set` overrides (none for the default run, whose
# commands are exactly dvc.yaml's).


rule trie:
    input:
        kb=f"{PREPARED}/kb.parquet",
        code=["gemel/llm.py", "gemel/trie.py", "stages/trie.py"],
    output:
        run_file("trie.npz"),
    params:
        cmd=run_cli("trie"),
        tracked=run_tracked(["prepare.out", "model.llm", "llms", "train.out"]),
    log:
        run_file("logs/trie.log"),
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"


rule train:
    input:
        mentions=f"{PREPARED}/mentions.parquet",
        features=f"{FEATURES}/images.parquet",
        demos=run_demos,
        trie=run_file("trie.npz"),
        candidates=f"{CANDIDATES}/candidates.parquet",
        candidates_report=f"{CANDIDATES}/report.json",
        code=["gemel/llm.py", "gemel/prompt.py", "gemel/model.py", "gemel/training.py", "gemel/decoding.py",
              "gemel/candidates.py", "gemel/linker.py", "gemel/run.py", "stages/train.py"],
    output:
        mapper=run_file("mapper.safetensors"),
        run=run_file("run.json"),
        loss=run_file("train_loss.csv"),
        dev=run_file("dev_accuracy.csv"),
        report=run_file("train_report.json"),
    params:
        cmd=run_cli("train"),
        tracked=run_tracked(["model", "llms", "train", "decode", "features", "retrieve", "text_encoders", "candidates",
                             "prepare.out"]),
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
        mentions=f"{PREPARED}/mentions.parquet",
        features=f"{FEATURES}/images.parquet",
        demos=run_demos,
        trie=run_file("trie.npz"),
        mapper=run_file("mapper.safetensors"),
        candidates=f"{CANDIDATES}/candidates.parquet",
        code=["gemel/decoding.py", "gemel/model.py", "gemel/prompt.py", "gemel/candidates.py", "gemel/linker.py",
              "stages/decode.py"],
    output:
        predictions=run_file("predictions.parquet"),
        report=run_file("decode_report.json"),
    params:
        cmd=run_cli("decode"),
        tracked=run_tracked(["model", "llms", "decode"]),
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
        kb=f"{PREPARED}/kb.parquet",
        mentions=f"{PREPARED}/mentions.parquet",
        candidates=f"{CANDIDATES}/candidates.parquet",
        predictions=run_file("predictions.parquet"),
        decode_report=run_file("decode_report.json"),
        code=["gemel/metrics.py", "gemel/candidates.py", "stages/evaluate.py"],
    output:
        metrics=run_file("metrics.json"),
        breakdown=run_file("breakdown.md"),
    params:
        cmd=run_cli("evaluate"),
        tracked=run_tracked(["evaluate"]),
    log:
        run_file("logs/evaluate.log"),
    conda:
        ENV
    shell:
        "{params.cmd} > {log} 2>&1"
