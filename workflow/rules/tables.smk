# Tables: accuracy on the held-out test sets, with the Euler floor of each problem.


rule accuracy_table:
    input:
        metrics=trained(),
        floors=test_sidecars(),
    output:
        csv=report(f"{RESULTS}/tables/accuracy.csv", caption="../report/accuracy.rst", category="Tables"),
        md=f"{RESULTS}/tables/accuracy.md",
        tex=f"{RESULTS}/tables/accuracy.tex",
    log:
        f"{RESULTS}/logs/tables/accuracy.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/accuracy_table.py"


rule provenance:
    output:
        report(f"{RESULTS}/provenance.json", caption="../report/provenance.rst", category="Provenance"),
    params:
        config=config,
    log:
        f"{RESULTS}/logs/provenance.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/provenance.py"
