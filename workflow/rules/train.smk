# Training: one job per (problem, surrogate, n, arch, seed). A killed job resumes from its
# checkpoint.pth (not a declared output, so Snakemake keeps it) when it is run again. The datasets'
# sidecars are inputs: training checks that each file was made for this problem, part and size.


COHORT = STUDY.cohort_kinds()  # training.cohort: these kinds train their seeds in one job (rule train_cohort)


rule train:
    wildcard_constraints:
        surrogate="|".join(k for k in SURROGATES if k not in COHORT) or "(?!)",  # (?!): none (all in cohorts)
    input:
        train=rules.dataset_split.output.train,
        train_meta=rules.dataset_split.output.train_meta,
        val=rules.dataset_split.output.val,
        val_meta=rules.dataset_split.output.val_meta,
        test=rules.dataset_test.output.test,
        test_meta=rules.dataset_test.output.meta,
    output:
        metrics=run_pattern("metrics"),
        model=run_pattern("model"),
        losses=run_pattern("losses"),
    params:
        settings=lambda w: STUDY.training(w.problem).as_dict(),
    threads: 1  # small networks train fastest on one thread; jobs run side by side
    priority: lambda w: STUDY.training_priority(w.problem, w.surrogate)  # longest first (polish, PINN, data)
    resources:
        gpu_jobs=lambda w: 1 if trains_on_gpu(w.problem) else 0,  # a share of the GPU (profiles/gpu: 8 at once)
    log:
        path(LAYOUT.log("train", "{problem}_{surrogate}_n{n}_{arch}_seed{seed}.log")),
    benchmark:
        job_record("train", "{problem}_{surrogate}_n{n}_{arch}_seed{seed}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


# training.cohort: the seeds of a data-only kind trained together as one stacked model (training/cohort.py);
# with training.side_by_side every kind's, those that cannot be stacked in threads on a GPU
# (training/side_by_side.py); one job writing every seed's files (the same files, so the rest of the DAG is unchanged; a killed cohort
# resumes from the seeds' checkpoint.pth files).
if COHORT:

    rule train_cohort:
        wildcard_constraints:
            surrogate="|".join(COHORT),
        input:
            train=rules.dataset_split.output.train,
            train_meta=rules.dataset_split.output.train_meta,
            val=rules.dataset_split.output.val,
            val_meta=rules.dataset_split.output.val_meta,
            test=rules.dataset_test.output.test,
            test_meta=rules.dataset_test.output.meta,
        output:
            metrics=expand(run_pattern("metrics"), seed=STUDY.seeds, allow_missing=True),
            model=expand(run_pattern("model"), seed=STUDY.seeds, allow_missing=True),
            losses=expand(run_pattern("losses"), seed=STUDY.seeds, allow_missing=True),
        params:
            settings=lambda w: STUDY.training(w.problem).as_dict(),
            seeds=list(STUDY.seeds),
        threads: 1
        priority: lambda w: STUDY.training_priority(w.problem, w.surrogate)
        resources:
            gpu_jobs=lambda w: 1 if trains_on_gpu(w.problem) else 0,
        log:
            path(LAYOUT.log("train", "{problem}_{surrogate}_n{n}_{arch}_cohort.log")),
        benchmark:
            job_record("train_cohort", "{problem}_{surrogate}_n{n}_{arch}"),
        conda:
            "../envs/pipeline.yaml"
        script:
            "../scripts/train_cohort.py"


# The mean of the seeds' networks, scored on the same held-out test set as a surrogate of its own
# (training.ensemble; needs >= 2 seeds). No training: it reads the seeds' best models.
rule ensemble:
    input:
        models=ensemble_members,
        metrics=lambda w: ensemble_members(w, "metrics"),  # their training times: what the ensemble cost
        test=rules.dataset_test.output.test,
        test_meta=rules.dataset_test.output.meta,
    output:
        metrics=path(LAYOUT.ensemble_file("{problem}", "{surrogate}", "{n}", "{arch}")),
    threads: 1
    log:
        path(LAYOUT.log("train", "{problem}_{surrogate}_n{n}_{arch}_ensemble.log")),
    benchmark:
        job_record("ensemble", "{problem}_{surrogate}_n{n}_{arch}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/ensemble.py"


rule itnn_transfer:
    input:
        models=transfer_members,
        test=lambda w: path(LAYOUT.test(w.target)),
        test_meta=lambda w: sidecar(LAYOUT.test(w.target)),
    output:
        metrics=path(LAYOUT.transfer_file("{problem}", "itnn", "{n}", "{arch}", "{target}")),
    threads: 1
    log:
        path(LAYOUT.log("train", "{problem}_itnn_n{n}_{arch}_on_{target}.log")),
    benchmark:
        job_record("itnn_transfer", "{problem}_itnn_n{n}_{arch}_on_{target}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/itnn_transfer.py"


# Before anything is scheduled: a finished model's dataset that was changed or damaged (not deleted) stops the
# run here, naming the file; else Snakemake would delete the model to rerun a job that then refuses the file.
if workflow.is_main_process:
    check_finished_inputs(STUDY)
