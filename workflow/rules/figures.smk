# Figures (PNG and PDF), each with a caption in workflow/report/.


rule figure_error_vs_size:
    input:
        rules.accuracy_table.output.csv,
    output:
        png=report(figure("error_vs_size"), caption="../report/error_vs_size.rst", category="Figures"),
        pdf=figure("error_vs_size", "pdf"),
    log:
        path(LAYOUT.log("figures", "error_vs_size.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_training_curves:
    input:
        losses=trained(filename="losses.csv"),
        metrics=trained(),
    output:
        png=report(figure("training_curves"), caption="../report/training_curves.rst", category="Figures"),
        pdf=figure("training_curves", "pdf"),
    log:
        path(LAYOUT.log("figures", "training_curves.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_rollout_error:
    input:
        trained(surrogate="itnn"),
    output:
        png=report(figure("itnn_rollout_error"), caption="../report/rollout.rst", category="Figures"),
        pdf=figure("itnn_rollout_error", "pdf"),
    log:
        path(LAYOUT.log("figures", "itnn_rollout_error.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_trajectories:
    input:
        test=path(LAYOUT.test("C")),
        models=lambda w: [model_file("C", k, max(sizes("C")), config["training"]["seeds"][0], "model")
                          for k in ("ddnn", "pinn") if "C" in config["training"]["surrogates"].get(k, [])],
    output:
        png=report(figure("trajectories_C"), caption="../report/trajectories.rst", category="Figures"),
        pdf=figure("trajectories_C", "pdf"),
    log:
        path(LAYOUT.log("figures", "trajectories_C.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_hh_m:
    input:
        test=path(LAYOUT.test("hh_m")),
        models=lambda w: [model_file("hh_m", k, max(sizes("hh_m")), config["training"]["seeds"][0], "model")
                          for k in ("ddnn", "pinn_seed", "pinn") if "hh_m" in config["training"]["surrogates"].get(k, [])],
    output:
        png=report(figure("hh_m"), caption="../report/hh_m.rst", category="Figures"),
        pdf=figure("hh_m", "pdf"),
    log:
        path(LAYOUT.log("figures", "hh_m.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_speed:
    input:
        raw=rules.benchmark_speed.output.raw,
        accuracy=rules.accuracy_table.output.csv,
    output:
        n_png=report(figure("speedup_vs_n"), caption="../report/speedup_vs_n.rst", category="Figures"),
        n_pdf=figure("speedup_vs_n", "pdf"),
        k_png=report(figure("speedup_vs_k"), caption="../report/speedup_vs_k.rst", category="Figures"),
        k_pdf=figure("speedup_vs_k", "pdf"),
        e_png=report(figure("time_vs_error"), caption="../report/time_vs_error.rst", category="Figures"),
        e_pdf=figure("time_vs_error", "pdf"),
    params:
        speed=config["speed"],
    log:
        path(LAYOUT.log("figures", "speed.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"
