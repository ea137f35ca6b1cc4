# ONNX export of every trained surrogate (dynamic batch), checked against eager torch with onnxruntime.


rule export_onnx:
    input:
        model=rules.train.output.model,
        val=rules.dataset_split.output.val,
    output:
        onnx=f"{MODELS}/{{problem}}/{{surrogate}}/n{{n}}/{{arch}}/seed{{seed}}/model.onnx",
        check=f"{MODELS}/{{problem}}/{{surrogate}}/n{{n}}/{{arch}}/seed{{seed}}/onnx_check.json",
    log:
        f"{RESULTS}/logs/export/{{problem}}_{{surrogate}}_n{{n}}_{{arch}}_seed{{seed}}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/export_onnx.py"
