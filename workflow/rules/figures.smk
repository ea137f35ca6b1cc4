# Figures (PNG and PDF), each with a caption in workflow/report/; the plotting lives in benchmarks/figures.py.


def judged_on(problem):
    """(kind, trained problem) of every surrogate drawn over `problem`'s test trajectories: those trained on it,
    and the iterative ones trained on a step problem judged on it (D for C)."""
    out = []
    for kind, trained_on in STUDY.surrogates.items():
        for p in trained_on:
            q = STUDY.problem(p)
            if p == problem or (q.kind == "step" and q.test_from == problem):
                out.append((kind, p))
    return out


def first_seed_models(problem):
    """The checkpoints drawn over `problem`'s held-out trajectories: each at its largest n, first seed."""
    seed = STUDY.seeds[0]
    return [model_file(p, kind, max(sizes(p)), seed, "model") for kind, p in judged_on(problem)]


def first_seed_runs(problem):
    """What each of first_seed_models(problem) must be, in the same order: [problem, kind, n, seed, arch]
    (the script checks every checkpoint's provenance against it, as every other consumer does)."""
    seed = STUDY.seeds[0]
    return [[p, kind, max(sizes(p)), seed, arch_of(p)] for kind, p in judged_on(problem)]


def compared_with_ddnn():
    """Problems where a data-only and a physics-informed network both train."""
    s = STUDY.surrogates
    physics = set(s.get("pinn", [])) | set(s.get("pinn_seed", []))
    return sorted(set(s.get("ddnn", [])) & physics)


rule figure_error_vs_size:
    input:
        metrics=trained(),
        accuracy=rules.accuracy_table.output.csv,
    output:
        png=report(figure("error_vs_size"), caption="../report/error_vs_size.rst", category="Figures"),
        pdf=figure("error_vs_size", "pdf"),
    log:
        path(LAYOUT.log("figures", "error_vs_size.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_pinn_vs_ddnn:
    input:
        metrics=[f for p in compared_with_ddnn() for k in ("ddnn", "pinn", "pinn_seed")
                 for f in trained(problem=p, surrogate=k)],
    output:
        png=report(figure("pinn_vs_ddnn"), caption="../report/pinn_vs_ddnn.rst", category="Figures"),
        pdf=figure("pinn_vs_ddnn", "pdf"),
    log:
        path(LAYOUT.log("figures", "pinn_vs_ddnn.log")),
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


def trajectory_figures():
    """The trajectory problems that some surrogate is drawn over (trained on it, or an ITNN judged on it): one
    figure each (trajectories_<problem>)."""
    return [p for p in PROBLEMS if STUDY.problem(p).kind == "trajectory" and judged_on(p)]


rule figure_trajectories:
    input:
        test=path(LAYOUT.test("{problem}")),
        models=lambda w: first_seed_models(w.problem),
    output:
        png=report(figure("trajectories_{problem}"), caption="../report/trajectories.rst", category="Figures"),
        pdf=figure("trajectories_{problem}", "pdf"),
    params:
        problem=lambda w: w.problem,
        time_range=lambda w: STUDY.problem(w.problem).time_range,
        runs=lambda w: first_seed_runs(w.problem),
    log:
        path(LAYOUT.log("figures", "trajectories_{problem}.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_hh_m:
    input:
        test=path(LAYOUT.test("hh_m")),
        models=first_seed_models("hh_m"),
    output:
        png=report(figure("hh_m"), caption="../report/hh_m.rst", category="Figures"),
        pdf=figure("hh_m", "pdf"),
    params:
        runs=first_seed_runs("hh_m"),
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
        speed=STUDY.speed.as_dict(),
    log:
        path(LAYOUT.log("figures", "speed.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"


rule figure_solver_throughput:
    input:
        csv=rules.benchmark_solver.output.csv,
    output:
        png=report(figure("solver_throughput"), caption="../report/solver_throughput.rst", category="Figures"),
        pdf=figure("solver_throughput", "pdf"),
    log:
        path(LAYOUT.log("figures", "solver_throughput.log")),
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/figures.py"
