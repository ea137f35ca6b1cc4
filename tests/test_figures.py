"""Figures render from small synthetic inputs (metrics.json, losses.csv, the tables and benchmark CSVs) into
readable PNG and PDF files; the palette covers every registered surrogate kind and backend."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks import figures as F

KINDS = {"A": ["ddnn", "pinn"], "C": ["ddnn", "pinn"], "D": ["itnn"], "hh_m": ["ddnn", "pinn_seed", "pinn"]}
SIZES, SEEDS = [300, 1000], [0, 1]


def _is_figure(png, pdf):
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and min(im.size) > 200
    assert pdf.read_bytes()[:5] == b"%PDF-"


@pytest.fixture
def runs(tmp_path, rng):
    """metrics.json and losses.csv of every (problem, kind, n, seed), and the accuracy table with its floors.
    The folders are numbered, so nothing can be read from a path."""
    metrics, losses, i = [], [], 0
    for p, kinds in KINDS.items():
        for kind in kinds:
            for n in SIZES:
                for seed in SEEDS:
                    d = tmp_path / "models" / f"run{i}"
                    d.mkdir(parents=True)
                    i += 1
                    mae = 1e-2 * (1000 / n) * (1 + 0.2 * rng.random())
                    m = {"problem": p, "surrogate": kind, "n_train": n, "seed": seed, "arch": "mlp3x64", "mae": mae,
                         "max_abs_err": 30 * mae, "rel_l2": 5 * mae, "train_seconds": 5 + 20 * (kind != "ddnn"),
                         "iterations": 300, "euler_floor": {"mae": 3e-4, "max_abs_err": 0.03}}
                    if kind == "itnn":
                        t = np.linspace(0, 20, 201)
                        m["rollout_error"] = {"t": t.tolist(), "mae": (mae * (0.1 + t / 20)).tolist()}
                    (d / "metrics.json").write_text(json.dumps(m))
                    it = np.arange(50, 301, 50)
                    cols = {"iteration": it, "data": 1 / it, "total": 2 / it, "val_mae": 0.5 / it}
                    if kind != "ddnn":
                        cols["physics_total" if p == "hh_m" else "physics"] = 0.3 / it
                    pd.DataFrame(cols).to_csv(d / "losses.csv", index=False)
                    metrics.append(d / "metrics.json")
                    losses.append(d / "losses.csv")
    table = pd.DataFrame([{"problem": p, "surrogate": "euler_floor", "mae_mean": 3e-4, "max_abs_err_mean": 0.03}
                          for p in KINDS])
    table.to_csv(tmp_path / "accuracy.csv", index=False)
    return metrics, losses, tmp_path / "accuracy.csv"


def _speed_raw(path, gpu: bool):
    rows = [{"backend": "tensorrt", "skipped": "no TensorRT here"}]
    devices = [("cpu", ["torch", "onnxruntime"], ["fp32"])] + ([("cuda", ["torch_cuda", "fused_cuda"], ["fp32", "fp16"])]
                                                               if gpu else [])
    points = [(N, 26, "N,K" if N == 1000 else "N") for N in (1000, 4000)] + [(1000, k, "K") for k in (1, 101)]
    for device, backends, precs in devices:
        for N, K, sweep in points:
            solver = 1e-6 * N * (1 + K / 500)
            for kind in ("ddnn", "pinn", "itnn"):
                for b in backends:
                    for prec in precs:
                        sur = 2e-7 * N * (K if kind != "itnn" else 50) * (0.5 if prec == "fp16" else 1)
                        rows.append({"sweep": sweep, "workload": "direct N x K, T=50", "device": device, "n_cells": N,
                                     "n_outputs": K, "solver_backend": "cuda" if device == "cuda" else "cpu",
                                     "solver_seconds": solver, "solver_kernel_seconds": 0.7 * solver,
                                     "surrogate": kind, "arch": "mlp3x64", "backend": b, "precision": prec,
                                     "surrogate_seconds": sur, "surrogate_kernel_seconds": 0.5 * sur,
                                     "speedup": solver / sur, "kernel_speedup": 1.4 * solver / sur,
                                     "mae": {"ddnn": 7e-3, "pinn": 9e-3, "itnn": 5e-4}[kind], "noisy": N == 4000,
                                     "cpu": "AMD EPYC", "cores": 2, "gpu": "NVIDIA H100" if gpu else None})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _throughput(path):
    rows = [{"backend": "cuda", "skipped": "no CUDA driver or device"}]
    for b, rate in (("numpy", 4e8), ("cpu", 1.4e10), ("cuda", 2e11)):
        for dtype in ("float32", "float64"):
            for n in (10_000, 100_000, 1_000_000):
                row = {"backend": b, "dtype": dtype, "n_cells": n, "n_steps": 5000, "model": "fhn", "n_outputs": 26,
                       "cell_steps_per_s": rate * (1 - 0.1 * (dtype == "float64")), "seconds_noisy": n == 10_000,
                       "cpu": "AMD EPYC", "cores": 2, "gpu": None}
                if b == "cuda":
                    row.update(kernel_cell_steps_per_s=2 * rate, kernel_seconds_noisy=False)
                rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_accuracy_figures_render_from_metrics_files(runs, tmp_path):
    metrics, losses, acc = runs
    units = {p: "dimensionless" for p in KINDS}
    for name, draw in {"error_vs_size": lambda png, pdf: F.error_vs_size(metrics, acc, png, pdf, units),
                       "pinn_vs_ddnn": lambda png, pdf: F.pinn_vs_ddnn(metrics, png, pdf, units),
                       "training_curves": lambda png, pdf: F.training_curves(losses, metrics, png, pdf, units),
                       "itnn_rollout_error": lambda png, pdf: F.rollout_error(metrics, png, pdf)}.items():
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        draw(png, pdf)
        _is_figure(png, pdf)


@pytest.mark.parametrize("gpu", [False, True])
def test_speed_figures_render_with_skipped_noisy_and_gpu_rows(tmp_path, runs, gpu):
    raw = _speed_raw(tmp_path / "speed_raw.csv", gpu)
    for name, draw in {"speedup_vs_n": lambda png, pdf: F.speedup_vs_n(raw, png, pdf),
                       "speedup_vs_k": lambda png, pdf: F.speedup_vs_k(raw, png, pdf),
                       "time_vs_error": lambda png, pdf: F.time_vs_error(raw, runs[2], "C", png, pdf)}.items():
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        draw(png, pdf)
        _is_figure(png, pdf)


def test_a_k_sweep_left_out_by_the_time_budget_gives_a_figure_that_says_so(tmp_path, runs):
    """A speed run whose budget ran out before its K sweep (speed.time_budget_s): the K figure names why
    instead of failing the workflow; a sweep of one K with nothing skipped is still a configuration error."""
    raw = pd.read_csv(_speed_raw(tmp_path / "speed_raw.csv", True))
    late = raw.sweep == "K"
    budget = "not measured: the time budget of this run was spent"
    cut = raw[~late].copy()
    cut = pd.concat([cut, pd.DataFrame([{"sweep": "K", "n_cells": 1000, "n_outputs": k, "skipped": budget}
                                        for k in (1, 101)])])
    cut.to_csv(tmp_path / "cut.csv", index=False)
    png, pdf = tmp_path / "k.png", tmp_path / "k.pdf"
    F.speedup_vs_k(tmp_path / "cut.csv", png, pdf)
    _is_figure(png, pdf)
    assert F._unmeasured(tmp_path / "cut.csv", "K") == [budget]
    F.speedup_vs_n(tmp_path / "cut.csv", tmp_path / "n.png", tmp_path / "n.pdf")  # the N sweep as measured
    raw[~late].to_csv(tmp_path / "one_k.csv", index=False)
    with pytest.raises(ValueError, match="at least two values of K"):
        F.speedup_vs_k(tmp_path / "one_k.csv", png, pdf)


def test_solver_throughput_figure_renders(tmp_path):
    png, pdf = tmp_path / "t.png", tmp_path / "t.pdf"
    F.solver_throughput(_throughput(tmp_path / "solver_throughput.csv"), png, pdf)
    _is_figure(png, pdf)


def test_trajectory_and_hh_m_figures_render(tmp_path, rng):
    n_traj, K = 6, 21
    t = np.tile(np.linspace(0, 20, K), n_traj)
    X = np.column_stack([t, rng.random((n_traj * K, 3))])
    Y = np.column_stack([np.sin(t), np.cos(t)])
    np.savez(tmp_path / "test.npz", X=X, Y=Y, trajectory=np.repeat(np.arange(n_traj), K),
             input_names=np.array(["t", "u0", "w0", "I"]), output_names=np.array(["u", "w"]))
    preds = {k: Y + s * rng.standard_normal(Y.shape) for k, s in (("ddnn", 0.05), ("pinn", 0.1), ("itnn", 0.02))}
    F.trajectories(tmp_path / "test.npz", preds, tmp_path / "tr.png", tmp_path / "tr.pdf", {"t": "1", "u": "1", "w": "1"})
    _is_figure(tmp_path / "tr.png", tmp_path / "tr.pdf")

    tt = np.linspace(0, 100, 1001)
    m = 0.5 + 0.4 * np.sin(tt)
    it = np.arange(100, 601, 100)
    losses = {"ddnn": pd.DataFrame({"iteration": it, "data": 1 / it, "total": 1 / it, "val_mae": 0.1 / it}),
              "pinn": pd.DataFrame({"iteration": it, "data": 1 / it, "physics_total": 2 / it, "total": 3 / it,
                                    "val_mae": 0.2 / it})}
    F.hh_m_figure(tt, -65 + 100 * (m > 0.8), m, tt[::5], {"ddnn": m + 0.01, "pinn": m - 0.01}, losses,
                  tmp_path / "h.png", tmp_path / "h.pdf", {"t": "ms", "V": "mV", "m": "1"})
    _is_figure(tmp_path / "h.png", tmp_path / "h.pdf")


def test_a_trajectory_figure_of_one_trajectory_has_one_column_in_time_order(tmp_path, rng, monkeypatch):
    """A problem drawn from one trajectory (A: held-out time points, shuffled in the test set): one column, the
    lines drawn in time order; several trajectories: the median, 90th percentile and worst, three columns."""
    saved = []
    monkeypatch.setattr(F, "save", lambda fig, png, pdf: saved.append(fig))
    t = rng.permutation(np.linspace(0, 20, 401))
    Y = np.column_stack([np.sin(t), np.cos(t)])
    np.savez(tmp_path / "a.npz", X=t[:, None], Y=Y, input_names=np.array(["t"]),  # as A's: no trajectory ids
             output_names=np.array(["u", "w"]))
    F.trajectories(tmp_path / "a.npz", {"ddnn": Y + 0.01}, None, None, {"t": "1", "u": "1", "w": "1"})
    axes = saved[-1].axes
    assert len(axes) == 2 and "one trajectory" in saved[-1].get_suptitle()
    x = axes[0].lines[0].get_xdata()
    assert np.all(np.diff(x) > 0) and len(x) == 401
    n_traj, K = 6, 21
    tt = np.tile(np.linspace(0, 20, K), n_traj)
    Y = np.column_stack([np.sin(tt), np.cos(tt)])
    np.savez(tmp_path / "c.npz", X=np.column_stack([tt, rng.random(n_traj * K)]), Y=Y,
             trajectory=np.repeat(np.arange(n_traj), K), input_names=np.array(["t", "u0"]),
             output_names=np.array(["u", "w"]))
    F.trajectories(tmp_path / "c.npz", {"ddnn": Y + 0.05 * rng.standard_normal(Y.shape)}, None, None)
    assert len(saved[-1].axes) == 6


def test_palette_names_every_registered_kind_and_backend_once():
    import solvers
    from inference.backends import REGISTRY
    from surrogates.problems import SURROGATE_KINDS

    assert set(SURROGATE_KINDS) | {"euler_floor"} <= set(F.SURROGATE_COLORS)
    assert set(REGISTRY) | (set(solvers.list_backends()) - {"auto"}) <= set(F.BACKEND_COLORS)
    for palette in (F.SURROGATE_COLORS, F.BACKEND_COLORS):
        assert len(set(palette.values())) == len(palette), "a colour is used twice"
    assert F.color("some_new_backend") == F.color("some_new_backend")


def test_crossings_are_interpolated_in_log_log():
    assert F._crossings([1, 100], [10, 0.1]) == pytest.approx([10.0])
    assert F._crossings([1, 10, 100], [2, 3, 4]) == []


def test_ensembles_timed_at_one_point_stay_out_of_the_sweep_panels():
    df = pd.DataFrame({"sweep": ["N,K", "N,K", "N", "K"], "surrogate": ["ddnn", "ddnn_ensemble", "ddnn", "ddnn"],
                       "n_cells": [100, 100, 200, 100], "n_outputs": [26, 26, 26, 1]})
    assert list(F._swept(df, "N").surrogate) == ["ddnn", "ddnn"] and list(F._swept(df, "N").n_cells) == [100, 200]
    assert list(F._swept(df, "K").n_outputs) == [26, 1]


def test_an_ensembles_label_names_its_kind():
    assert F.label("itnn_ensemble") == "ITNN (rolled out), mean of the seeds" and F.label("odd_ensemble") == "odd_ensemble"
