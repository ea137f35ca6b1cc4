# Speed: the trained surrogates of `speed.problem` against the Euler solver on the same outputs.
# Timing jobs declare the GPU as a resource, so two of them never share it (run with --resources gpu=1).


def speed_device():
    d = config["speed"]["device"]
    if d == "auto":
        import torch

        d = "cuda" if torch.cuda.is_available() else "cpu"
    return d


def speed_models():
    p = config["speed"]["problem"]
    return {k: f"{model_dir(p, k, max(sizes(p)), config['training']['seeds'][0])}/best_model.pth"
            for k in config["speed"]["surrogates"]}


SPEED_DEVICE = speed_device()


rule benchmark_speed:
    input:
        **speed_models(),
    output:
        raw=f"{RESULTS}/benchmarks/speed_raw.csv",
    params:
        speed=config["speed"],
        device=SPEED_DEVICE,
    resources:
        gpu=1 if SPEED_DEVICE == "cuda" else 0,
    threads: 64  # timings own the machine (Snakemake scales this down to --cores)
    log:
        f"{RESULTS}/logs/benchmarks/speed.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/benchmark_speed.py"


rule speedup_table:
    input:
        rules.benchmark_speed.output.raw,
    output:
        csv=report(f"{RESULTS}/tables/speedup.csv", caption="../report/speedup.rst", category="Tables"),
        md=f"{RESULTS}/tables/speedup.md",
        tex=f"{RESULTS}/tables/speedup.tex",
    log:
        f"{RESULTS}/logs/tables/speedup.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/speedup_table.py"
