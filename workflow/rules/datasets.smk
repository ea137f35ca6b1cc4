# Datasets: training/validation sets per (problem, n), one held-out test set per problem. Each file has a
# JSON sidecar (provenance, checksums); the sidecars are outputs here and inputs of every rule that reads
# them, so editing one triggers a rerun (where it is then refused: its own checksum no longer matches).


# Datasets first: a few seconds each, and every training waits on them. Above every training job's priority
# (surrogates.study.Study.training_priority), which Snakemake would otherwise prefer over a pending dataset job,
# holding back the trainings (hh_m's, the longest) that wait on it.
DATASET_PRIORITY = 10


rule dataset_split:
    output:
        train=split_pattern("train"),
        train_meta=sidecar(split_pattern("train")),
        val=split_pattern("val"),
        val_meta=sidecar(split_pattern("val")),
    params:
        spec=lambda w: STUDY.problem_spec(w.problem),  # a changed problem reruns its datasets
        solver=STUDY.solver.as_dict(),
        design=STUDY.datasets.as_dict(),
    priority: DATASET_PRIORITY
    log:
        path(LAYOUT.log("datasets", "{problem}_n{n}.log")),
    benchmark:
        job_record("dataset_split", "{problem}_n{n}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/dataset_split.py"


rule dataset_test:
    output:
        test=path(LAYOUT.test("{problem}")),
        meta=sidecar(LAYOUT.test("{problem}")),
    params:
        spec=lambda w: STUDY.problem_spec(w.problem),
        source=lambda w: STUDY.problem_spec(STUDY.problem(w.problem).test_from or ""),
        solver=STUDY.solver.as_dict(),
        test_seed=STUDY.datasets.test_seed,
    priority: DATASET_PRIORITY
    log:
        path(LAYOUT.log("datasets", "{problem}_test.log")),
    benchmark:
        job_record("dataset_test", "{problem}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/dataset_test.py"
