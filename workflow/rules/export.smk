# ONNX export of every trained surrogate (dynamic batch), checked against eager torch with onnxruntime.
# The checkpoint must have been made for the model this folder names (problem, kind, n, arch, seed).


rule export_onnx:
    input:
        model=rules.train.output.model,
        val=rules.dataset_split.output.val,
        val_meta=rules.dataset_split.output.val_meta,
    output:
        onnx=run_pattern("onnx"),
        check=run_pattern("onnx_check"),
    log:
        path(LAYOUT.log("export", "{problem}_{surrogate}_n{n}_{arch}_seed{seed}.log")),
    benchmark:
        job_record("export_onnx", "{problem}_{surrogate}_n{n}_{arch}_seed{seed}"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/export_onnx.py"
