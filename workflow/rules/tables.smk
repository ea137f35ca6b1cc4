# Tables: accuracy on the held-out test sets, with the Euler floor of each problem.


rule accuracy_table:
    input:
        metrics=trained() + ensembles(),
        floors=test_sidecars(),
    output:
        csv=report(path(LAYOUT.table("accuracy", "csv")), caption="../report/accuracy.rst", category="Tables"),
        md=path(LAYOUT.table("accuracy", "md")),
        tex=path(LAYOUT.table("accuracy", "tex")),
        by_output_csv=path(LAYOUT.table("accuracy_by_output", "csv")),
        by_output_md=path(LAYOUT.table("accuracy_by_output", "md")),
        by_output_tex=path(LAYOUT.table("accuracy_by_output", "tex")),
    log:
        path(LAYOUT.log("tables", "accuracy.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/accuracy_table.py"


rule transfer_table:
    input:
        metrics=transfers(),
    output:
        csv=report(path(LAYOUT.table("transfer", "csv")), caption="../report/transfer.rst", category="Tables"),
        md=path(LAYOUT.table("transfer", "md")),
        tex=path(LAYOUT.table("transfer", "tex")),
    log:
        path(LAYOUT.log("tables", "transfer.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/transfer_table.py"


rule provenance:
    output:
        report(path(LAYOUT.provenance), caption="../report/provenance.rst", category="Provenance"),
    params:
        config=STUDY.as_dict(),
    log:
        path(LAYOUT.log("provenance.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/provenance.py"
