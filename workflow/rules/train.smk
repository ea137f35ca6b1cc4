# Training: one job per (problem, surrogate, n, arch, seed). A killed job resumes from its
# checkpoint.pth (not a declared output, so Snakemake keeps it) when it is run again.


rule train:
    input:
        train=rules.dataset_split.output.train,
        val=rules.dataset_split.output.val,
        test=rules.dataset_test.output.test,
    output:
        metrics=f"{MODELS}/{{problem}}/{{surrogate}}/n{{n}}/{{arch}}/seed{{seed}}/metrics.json",
        model=f"{MODELS}/{{problem}}/{{surrogate}}/n{{n}}/{{arch}}/seed{{seed}}/best_model.pth",
        losses=f"{MODELS}/{{problem}}/{{surrogate}}/n{{n}}/{{arch}}/seed{{seed}}/losses.csv",
    params:
        settings=lambda w: training_settings(config, w.problem),
    threads: 1  # small networks train fastest on one thread; jobs run side by side
    resources:
        gpu=lambda w: 1 if training_settings(config, w.problem).get("device") == "cuda" else 0,
    log:
        f"{RESULTS}/logs/train/{{problem}}_{{surrogate}}_n{{n}}_{{arch}}_seed{{seed}}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train.py"
