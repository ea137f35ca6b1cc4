# Datasets: training/validation sets per (problem, n), one held-out test set per problem.


rule dataset_split:
    output:
        train=f"{RESULTS}/datasets/{{problem}}/n{{n}}/train.npz",
        train_meta=f"{RESULTS}/datasets/{{problem}}/n{{n}}/train.json",
        val=f"{RESULTS}/datasets/{{problem}}/n{{n}}/val.npz",
        val_meta=f"{RESULTS}/datasets/{{problem}}/n{{n}}/val.json",
    params:
        spec=lambda w: config["problems"][w.problem],  # a changed problem reruns its datasets
        solver=config["solver"],
        design=config["datasets"],
    log:
        f"{RESULTS}/logs/datasets/{{problem}}_n{{n}}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/dataset_split.py"


rule dataset_test:
    output:
        test=f"{RESULTS}/datasets/{{problem}}/test.npz",
        meta=f"{RESULTS}/datasets/{{problem}}/test.json",
    params:
        spec=lambda w: config["problems"][w.problem],
        solver=config["solver"],
        test_seed=config["datasets"]["test_seed"],
    log:
        f"{RESULTS}/logs/datasets/{{problem}}_test.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/dataset_test.py"
