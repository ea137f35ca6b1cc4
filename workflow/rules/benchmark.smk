# Speed: the trained surrogates of `speed.problem` against the Euler solver on the same outputs.
# Timing jobs declare the GPU as a resource, so two of them never share it (run with --resources gpu=1).


rule benchmark_speed:
    input:
        **speed_models(),
    output:
        raw=path(LAYOUT.benchmark("speed_raw.csv")),
    params:
        speed=STUDY.speed.as_dict(),
        device=STUDY.speed.device,  # `auto` is resolved on the node that runs the job
    resources:
        gpu=1 if speed_wants_gpu() else 0,
    threads: 64  # timings own the machine (Snakemake scales this down to --cores)
    log:
        path(LAYOUT.log("benchmarks", "speed.log")),
    benchmark:
        job_record("benchmark_speed", "speed"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/benchmark_speed.py"


rule speedup_table:
    input:
        rules.benchmark_speed.output.raw,
    output:
        csv=report(path(LAYOUT.table("speedup", "csv")), caption="../report/speedup.rst", category="Tables"),
        md=path(LAYOUT.table("speedup", "md")),
        tex=path(LAYOUT.table("speedup", "tex")),
    log:
        path(LAYOUT.log("tables", "speedup.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/speedup_table.py"


rule benchmark_solver:
    output:
        csv=path(LAYOUT.benchmark("solver_throughput.csv")),
    params:
        speed=STUDY.speed.as_dict(),
        solver=STUDY.solver.as_dict(),
    threads: 64  # the compiled solver uses every core it is given (Snakemake scales this down to --cores)
    log:
        path(LAYOUT.log("benchmarks", "solver_throughput.log")),
    benchmark:
        job_record("benchmark_solver", "solver_throughput"),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/benchmark_solver.py"
