"""The Snakemake workflow: full DAG, config errors at load, a tiny end-to-end run of the whole chain."""
import math
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT, snakemake_cmd
from benchmarks.runlog import read_records
from core.layout import Layout
from conftest import run_snakemake as snakemake


def _job_counts(out: str) -> dict:
    block = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def _train_priorities(out: str) -> dict:
    """(rule, problem, surrogate) -> the set of priorities of those training jobs in a dry run's listing
    (Snakemake prints a job's priority where it is not 0)."""
    found = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if rule not in ("train", "train_cohort"):
            continue
        w = dict(re.findall(r"(problem|surrogate)=(\w+)", re.search(r"wildcards: (.*)", block).group(1)))
        pr = re.search(r"^\s+priority: (\d+)$", block, re.M)
        found.setdefault((rule, w["problem"], w["surrogate"]), set()).add(int(pr.group(1)) if pr else 0)
    return found


def test_dry_run_of_the_default_config_builds_the_full_grid(tmp_path):
    res = snakemake("-n", "--config", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = _job_counts(res.stdout)
    # the longest training jobs first (surrogates.study.Study.training_priority): hh_m's (an L-BFGS polish), then
    # the PINNs, then the data-only runs
    assert _train_priorities(res.stdout) == {
        **{("train", "hh_m", k): {2} for k in ("ddnn", "pinn", "pinn_seed")},
        **{("train", p, "pinn"): {1} for p in "ABC"}, **{("train", p, "ddnn"): {0} for p in "ABC"},
        ("train", "D", "itnn"): {0}}
    # the datasets before any training (every training waits on them; seconds each)
    datasets = [b for b in res.stdout.split("\nrule ")[1:] if b.startswith(("dataset_split:", "dataset_test:"))]
    assert len(datasets) == jobs["dataset_split"] + jobs["dataset_test"]
    assert all(re.search(r"^\s+priority: 10$", b, re.M) for b in datasets)
    # ddnn on A(1 size) B C(3 sizes) hh_m(2 sizes); pinn likewise; pinn_seed on hh_m; itnn on D(3): x 3 seeds
    assert jobs["train"] == 3 * ((1 + 3 + 3 + 2) * 2 + 2 + 3)
    assert jobs["ensemble"] == jobs["train"] // 3  # the mean of the 3 seeds of each configuration (training.ensemble)
    assert jobs["dataset_test"] == 5 and jobs["accuracy_table"] == 1 and jobs["speedup_table"] == 1
    assert jobs["benchmark_speed"] == 1 and jobs["figure_speed"] == 1 and jobs["export_onnx"] == jobs["train"]
    # D's ITNN (3 sizes) also rolled out over B's test set (I = 0.08 lies in D's box; A's I = 0 does not)
    assert jobs["itnn_transfer"] == 3 and jobs["transfer_table"] == 1


def test_cohort_config_trains_the_seeds_of_data_only_runs_in_one_job(tmp_path):
    """training.cohort: one train_cohort job per (problem, ddnn|itnn, n) writes every seed's files; PINN runs
    stay one job per seed; everything downstream (exports, ensembles, tables) is unchanged."""
    extra = tmp_path / "cohort.yaml"
    extra.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "training": {"cohort": True}}))
    res = snakemake("-n", "--configfile", "config/config.yaml", str(extra))
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = _job_counts(res.stdout)
    assert jobs["train_cohort"] == (1 + 3 + 3 + 2) + 3  # ddnn on A, B, C, hh_m; itnn on D: one job per size
    pr = _train_priorities(res.stdout)
    assert pr[("train_cohort", "hh_m", "ddnn")] == {2} and pr[("train_cohort", "C", "ddnn")] == {0}
    assert pr[("train", "hh_m", "pinn")] == {2} and pr[("train", "B", "pinn")] == {1}
    assert jobs["train"] == 3 * ((1 + 3 + 3 + 2) + 2)  # pinn and pinn_seed: one job per seed
    assert jobs["export_onnx"] == 3 * ((1 + 3 + 3 + 2) * 2 + 2 + 3) and jobs["ensemble"] == (1 + 3 + 3 + 2) * 2 + 2 + 3


def test_side_by_side_config_trains_the_seeds_of_every_kind_in_one_job(tmp_path):
    """training.side_by_side (with cohort): the PINN kinds' seeds too are one job per (problem, kind, n)
    (stacked where they can be, else side by side on a GPU); the rest of the DAG is unchanged, and the
    setting, like cohort, is not part of a run's fingerprint (the same run, whichever way its job is cut)."""
    from surrogates.config import load_config, validate_config

    extra = tmp_path / "sbs.yaml"
    extra.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"),
                                     "training": {"cohort": True, "side_by_side": True}}))
    res = snakemake("-n", "--configfile", "config/config.yaml", str(extra))
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = _job_counts(res.stdout)
    assert jobs["train_cohort"] == (1 + 3 + 3 + 2) * 2 + 2 + 3 and "train" not in jobs
    assert jobs["export_onnx"] == 69 and jobs["ensemble"] == 23
    cfg = load_config().as_dict()
    cfg["training"]["side_by_side"] = True
    assert validate_config(cfg).side_by_side and "side_by_side" not in validate_config(cfg).training("C").as_dict()


def _preset_dry_run(preset: str, tmp_path):
    """``snakemake -n`` of config/<preset>.yaml (results under tmp_path): the result and its job counts."""
    extra = tmp_path / "here.yaml"
    extra.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r")}))
    res = snakemake("-n", "--configfile", f"config/{preset}.yaml", str(extra))
    assert res.returncode == 0, res.stderr[-2000:]
    return res, _job_counts(res.stdout)


def test_the_accurate_preset_plans_the_grid_with_the_best_settings(tmp_path):
    """config/accurate.yaml (the best settings measured) is a valid preset: the same grid, the 4x128 net
    for B, C and D, the data-only seeds in cohort jobs."""
    res, jobs = _preset_dry_run("accurate", tmp_path)
    assert jobs["train_cohort"] == (1 + 3 + 3 + 2) + 3 and jobs["train"] == 3 * ((1 + 3 + 3 + 2) + 2)
    assert jobs["itnn_transfer"] == 3
    out = res.stdout
    for p in ("B/ddnn/n100000/silu4x128", "C/pinn/n1000/silu4x128", "D/itnn/n100000/silu4x128", "A/ddnn/n1000/mlp3x64",
              "hh_m/ddnn/n7000/tanh2x64"):
        assert p in out, p
    assert "B/ddnn/n100000/mlp3x64" not in out


def test_the_gpu_preset_plans_the_paper_grid_with_gpu_timings_only(tmp_path):
    """config/gpu.yaml (make gpu-grid): the same grid as config/config.yaml, data-only seeds in cohort jobs, and a
    speed benchmark of GPU backends only that holds the GPU; on this CPU machine its backends are refused by
    name rather than timing nothing."""
    from benchmarks.speedup import backends_for
    from core.config import read_config
    from core.errors import InvalidInputError
    from inference.backends import REGISTRY

    res, jobs = _preset_dry_run("gpu", tmp_path)
    assert jobs["train_cohort"] == (1 + 3 + 3 + 2) + 3 and jobs["train"] == 3 * ((1 + 3 + 3 + 2) + 2)
    assert jobs["benchmark_speed"] == 1 and jobs["benchmark_solver"] == 1 and jobs["export_onnx"] == 69
    assert "C/ddnn/n100000/mlp3x64" in res.stdout  # the paper's architecture, as in config/config.yaml
    speed = read_config(ROOT / "config/gpu.yaml")["speed"]
    assert {REGISTRY[b].device for b in speed["backends"]} == {"cuda"} and speed["device"] == "cuda"
    assert backends_for(speed["backends"], "cuda") == speed["backends"]
    with pytest.raises(InvalidInputError, match=r"has no CPU backend.*run it on a GPU machine"):
        backends_for(speed["backends"], "cpu")


@pytest.mark.slow
def test_a_cohort_job_writes_every_seed_as_a_lone_run_would(tmp_path, tiny_config):
    """... and the speed benchmark times the two seeds' ensemble beside the first seed's network, with the
    ensemble's own test score as its MAE."""
    import json

    extra = tiny_config({"training": {"cohort": True, "seeds": [0, 1]},
                         "speed": {"surrogates": ["ddnn"], "ensembles": ["ddnn"], "n_cells": [300], "k_sweep": []}})
    lay = Layout(tmp_path / "results")
    targets = [str(lay.run_file("metrics", "C", "ddnn", 300, "mlp3x64", s)) for s in (0, 1)]
    speed_raw = lay.benchmark("speed_raw.csv")
    res = snakemake(*targets, str(speed_raw), "--cores", "1", "--configfile", "config/quick.yaml", extra)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert _job_counts(res.stdout + res.stderr).get("train_cohort") == 1
    speed = pd.read_csv(speed_raw)
    scored = json.loads(lay.ensemble_file("C", "ddnn", 300, "mlp3x64").read_text())
    ens = speed[speed.surrogate == "ddnn_ensemble"]
    single = speed[(speed.surrogate == "ddnn") & (speed.n_outputs == 26)].sort_values("surrogate_seconds")
    assert list(ens.backend) == [single.backend.iloc[0]]  # one row, on the backend that served ddnn best
    assert (ens.speedup > 0).all() and (ens.mae == scored["mae"]).all()
    assert set(speed.surrogate) == {"ddnn", "ddnn_ensemble"}
    m = [json.loads(open(t).read()) for t in targets]
    assert [r["seed"] for r in m] == [0, 1] and [r["cohort"] for r in m] == [2, 2]
    assert m[0]["mae"] != m[1]["mae"] and all(math.isfinite(r["mae"]) for r in m)
    assert m[0]["provenance"]["seed"] == 0 and m[1]["provenance"]["seed"] == 1
    for t in targets:
        d = os.path.dirname(t)
        assert os.path.exists(os.path.join(d, "best_model.pth")) and not os.path.exists(os.path.join(d, "checkpoint.pth"))
    # every job that did work left Snakemake's `benchmark:` record, where the Layout puts it
    assert lay.job_record("train_cohort", "C_ddnn_n300_mlp3x64").exists()
    jobs = read_records(lay.job_records)
    assert {"dataset_split", "dataset_test", "train_cohort", "ensemble", "benchmark_speed"} <= {j.rule for j in jobs}
    assert all(j.seconds > 0 for j in jobs)
    # a record is no output: a results folder without them (made before the rules recorded them) is complete
    for p in lay.job_records.glob("*/*.tsv"):
        p.unlink()
    again = snakemake(*targets, str(speed_raw), "-n", "--configfile", "config/quick.yaml", extra)
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


def test_slurm_profile_dry_run_submits_every_job_with_account_and_partition(tmp_path):
    res = snakemake("-n", "--profile", "workflow/profiles/slurm", "--config", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    # the slurm profile, and the workflow's own default profile (rerun-incomplete) under it
    assert "Using profiles workflow/profiles/slurm and workflow specific profile profiles/default" in out
    assert "slurm_account=MYPROJECT" in out and "slurm_partition=sequana_cpu_shared" in out
    assert (ROOT / "workflow/profiles/slurm/profile.yaml").resolve() == (ROOT / "workflow/profiles/slurm/config.yaml")
    # a GPU partition has never been tried through the profile: by default the timings ask for none
    jobs = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.M)}
    for rule in ("benchmark_speed", "benchmark_solver"):
        assert "slurm_partition=sequana_cpu_shared" in jobs[rule] and "gpu=0" in jobs[rule], jobs[rule]


def test_mps_sharing_which_never_ran_on_a_gpu_is_off_by_default_in_gpu_grid():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^GPU_MPS \?= 0$", make, re.M)


def test_slurm_profile_takes_the_site_settings_from_the_environment_keeping_the_rest(tmp_path):
    env = {**os.environ, "SBATCH_ACCOUNT": "proj42", "SBATCH_PARTITION": "cpu_small", "SPEED_PARTITION": "gpu_small",
           "SPEED_GPUS": "0", "SPEED_CPUS": "4"}
    res = snakemake("-n", "--profile", "workflow/profiles/slurm", "--config", f"results_dir={tmp_path}", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.M)}
    assert "slurm_account=proj42, slurm_partition=cpu_small, runtime=240" in jobs["train"]
    assert "mem_mb=8000" in jobs["train"]  # the profile's other settings stay
    speed = jobs["benchmark_speed"]
    assert "slurm_partition=gpu_small" in speed and "gpu=0" in speed and "runtime=120" in speed
    solver = jobs["benchmark_solver"]
    assert "slurm_partition=gpu_small" in solver and "gpu=0" in solver


def test_every_rule_that_asks_for_all_cores_gets_a_node_s_worth_on_slurm():
    """A rule declaring ``threads: 64`` ("all cores": Snakemake scales it down to --cores locally) would ask
    SLURM for 64 CPUs, which a smaller partition never schedules (the job pends forever): the profile must
    set its threads."""
    rules = "".join(f.read_text() for f in sorted((ROOT / "workflow/rules").glob("*.smk")))
    many = {m.group(1) for m in re.finditer(r"^rule (\w+):\n(?:[ \t].*\n|\n)*?    threads: (\d+)", rules, re.M)
            if int(m.group(2)) > 1}
    assert {"benchmark_speed", "benchmark_solver"} <= many
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert many <= set(profile["set-threads"]), many - set(profile["set-threads"])


@pytest.mark.parametrize("override,message", [
    ({"datasets": {"sizes": [-5]}}, r"config key datasets\.sizes\.0: -5 is less than the minimum of 1"),
    ({"solver": {"backend": "gpu"}}, r"config key solver\.backend: 'gpu' is not one of"),
    ({"trainning": {"iterations": 5}}, r"'trainning' was unexpected"),
    ({"training": {"iterations": "many"}}, r"config key training\.iterations: 'many' is not of type 'integer'"),
    ({"problems": {"C": {"sizes": "1000"}}}, r"config key problems\.C\.sizes: '1000' is not of type 'array'"),
    ({"problems": {"B": {"ranges": {"u0": [0.5, 0.1]}}}}, r"config key problems\.B\.ranges\.u0: empty or invalid range"),
])
def test_config_errors_fail_at_load_naming_the_key(override, message, tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text(yaml.safe_dump(override))
    res = snakemake("-n", "--configfile", "config/config.yaml", str(extra))
    assert res.returncode != 0
    assert re.search(message, res.stderr + res.stdout), (res.stderr + res.stdout)[-2000:]


@pytest.mark.slow
def test_tiny_preset_runs_end_to_end_resumes_after_interruption_and_tables_are_finite(tmp_path, tiny_config):
    extra = tiny_config()
    # interrupt the run (SIGTERM) once two models are trained ...
    first = subprocess.Popen(snakemake_cmd("--cores", "1", "--configfile", "config/quick.yaml", extra), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lay = Layout(tmp_path / "results")
    deadline = time.monotonic() + 600
    while len(lay.models_glob("metrics")) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=300)
    done = {p: p.stat().st_mtime_ns for p in lay.models_glob("metrics")}
    assert len(done) >= 2 and not lay.table("accuracy", "csv").exists()
    # ... and the rerun finishes the work, keeping what was complete
    res = snakemake("--cores", "2", "--configfile", "config/quick.yaml", str(extra))
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "completed models were trained again"
    table = pd.read_csv(lay.table("accuracy", "csv"))
    assert list(table.columns) == ["problem", "surrogate", "n_train", "arch", "seeds", "mae_mean", "mae_std",
                                   "max_abs_err_mean", "max_abs_err_min", "max_abs_err_max", "rel_l2_mean",
                                   "train_seconds_mean", "n_params"]
    assert set(table.surrogate) == {"ddnn", "pinn", "pinn_seed", "itnn", "euler_floor"}
    assert (table.surrogate == "euler_floor").sum() == 5
    runs = table[table.surrogate != "euler_floor"]
    assert all(math.isfinite(v) for v in runs[["mae_mean", "max_abs_err_mean", "rel_l2_mean"]].to_numpy().ravel())
    # each output's MAE beside it: over the same rows, their mean is the row's MAE
    by = pd.read_csv(lay.table("accuracy_by_output", "csv"))
    assert set(by.surrogate) == set(table.surrogate) and math.isfinite(by.mae_mean.sum())
    keys = ["problem", "surrogate", "n_train", "arch"]
    means = by.fillna({"arch": "", "n_train": -1}).groupby(keys)["mae_mean"].mean()
    for row in table.fillna({"arch": "", "n_train": -1}).itertuples():
        assert means[(row.problem, row.surrogate, row.n_train, row.arch)] == pytest.approx(row.mae_mean, rel=1e-6)
    checks = lay.models_glob("onnx_check")
    assert len(checks) == len(lay.models_glob("metrics")) == 10
    records = {r: len(list((lay.job_records / r).glob("*.tsv"))) for r in ("train", "export_onnx", "benchmark_speed",
                                                                             "benchmark_solver")}
    assert records == {"train": 10, "export_onnx": 10, "benchmark_speed": 1, "benchmark_solver": 1}
    assert all(yaml.safe_load(c.read_text())["max_rel_diff_vs_torch"] < 1e-4 for c in checks)
    speed = pd.read_csv(lay.table("speedup", "csv"))
    assert list(speed.columns) == ["sweep", "workload", "device", "n_cells", "n_outputs", "solver_backend",
                                   "solver_seconds", "solver_kernel_seconds", "surrogate", "arch", "backend", "precision",
                                   "surrogate_seconds", "surrogate_kernel_seconds", "speedup", "kernel_speedup", "mae",
                                   "noisy"]
    assert (speed.speedup > 0).all() and speed.mae.notna().all() and set(speed.device) == {"cpu"}
    # one row per measured point: (N = 300, K = 26) is in both sweeps and measured once
    key = ["n_cells", "n_outputs", "surrogate", "backend", "precision"]
    assert not speed.duplicated(key).any()
    assert set(speed[(speed.n_cells == 300) & (speed.n_outputs == 26)].sweep) == {"N,K"}
    for f in ("error_vs_size", "training_curves", "itnn_rollout_error", "trajectories_A", "trajectories_B",
              "trajectories_C", "hh_m", "speedup_vs_n", "speedup_vs_k", "time_vs_error"):
        for ext in ("png", "pdf"):
            assert lay.figure(f, ext).stat().st_size > 1000, f
    assert lay.table("accuracy", "md").read_text().startswith("Test-set accuracy")
    # D's ITNN rolled out over B's test set too, scored beside B's Euler floor (one seed: no ensemble row)
    tr = pd.read_csv(lay.table("transfer", "csv"))
    assert list(tr.network) == ["seed 0", "mean over seeds"] and set(tr.test_on) == {"B"} and set(tr.problem) == {"D"}
    assert (tr.mae > 0).all() and (tr.floor_mae > 0).all()  # 60 steps: not accurate, but scored (finite)
    # nothing left to do: a second run finds every output complete
    again = snakemake("-n", "--configfile", "config/quick.yaml", str(extra))
    assert "Nothing to be done" in again.stdout + again.stderr
    # the README's report command (as `make run` ends) gives one self-contained HTML page
    report = lay.report
    res = snakemake("--configfile", "config/quick.yaml", str(extra), "--report", str(report))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000 and "error_vs_size.png" in html and "accuracy.csv" in html
