# Figures (PNG and PDF), each with a caption in workflow/report/.


rule figure_error_vs_size:
    input:
        rules.accuracy_table.output.csv,
    output:
        png=report(f"{FIG}/error_vs_size.png", caption="../report/error_vs_size.rst", category="Figures"),
        pdf=f"{FIG}/error_vs_size.pdf",
    log:
        f"{RESULTS}/logs/figures/error_vs_size.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_training_curves:
    input:
        trained(filename="losses.csv"),
    output:
        png=report(f"{FIG}/training_curves.png", caption="../report/training_curves.rst", category="Figures"),
        pdf=f"{FIG}/training_curves.pdf",
    log:
        f"{RESULTS}/logs/figures/training_curves.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_rollout_error:
    input:
        trained(surrogate="itnn"),
    output:
        png=report(f"{FIG}/itnn_rollout_error.png", caption="../report/rollout.rst", category="Figures"),
        pdf=f"{FIG}/itnn_rollout_error.pdf",
    log:
        f"{RESULTS}/logs/figures/itnn_rollout_error.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_trajectories:
    input:
        test=f"{RESULTS}/datasets/C/test.npz",
        models=lambda w: [f"{model_dir('C', k, max(sizes('C')), config['training']['seeds'][0])}/best_model.pth"
                          for k in ("ddnn", "pinn") if "C" in config["training"]["surrogates"].get(k, [])],
    output:
        png=report(f"{FIG}/trajectories_C.png", caption="../report/trajectories.rst", category="Figures"),
        pdf=f"{FIG}/trajectories_C.pdf",
    log:
        f"{RESULTS}/logs/figures/trajectories_C.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_hh_m:
    input:
        test=f"{RESULTS}/datasets/hh_m/test.npz",
        models=lambda w: [f"{model_dir('hh_m', k, max(sizes('hh_m')), config['training']['seeds'][0])}/best_model.pth"
                          for k in ("ddnn", "pinn_seed", "pinn") if "hh_m" in config["training"]["surrogates"].get(k, [])],
    output:
        png=report(f"{FIG}/hh_m.png", caption="../report/hh_m.rst", category="Figures"),
        pdf=f"{FIG}/hh_m.pdf",
    log:
        f"{RESULTS}/logs/figures/hh_m.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_speed:
    input:
        raw=rules.benchmark_speed.output.raw,
        accuracy=rules.accuracy_table.output.csv,
    output:
        n_png=report(f"{FIG}/speedup_vs_n.png", caption="../report/speedup_vs_n.rst", category="Figures"),
        n_pdf=f"{FIG}/speedup_vs_n.pdf",
        k_png=report(f"{FIG}/speedup_vs_k.png", caption="../report/speedup_vs_k.rst", category="Figures"),
        k_pdf=f"{FIG}/speedup_vs_k.pdf",
        e_png=report(f"{FIG}/time_vs_error.png", caption="../report/time_vs_error.rst", category="Figures"),
        e_pdf=f"{FIG}/time_vs_error.pdf",
    params:
        speed=config["speed"],
    log:
        f"{RESULTS}/logs/figures/speed.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"
