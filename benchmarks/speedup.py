"""Surrogate inference against the Euler solver on the same outputs: the paper's N and a sweep over K.

    python -m benchmarks.speedup --model ddnn=results/models/C/ddnn/n100000/mlp3x64/seed0/best_model.pth

For each (N cells, K kept states): the solver side runs the project's fastest solver backend on the
device (``cpu`` on a CPU, ``cuda`` on a GPU) in float32; each surrogate backend produces the same N x K
outputs from cells drawn from problem C's box: a direct network evaluates N x K rows; an iterative one
(ITNN, trained on a step problem such as D) rolls the N cells out for T / step steps and keeps the same K
states (fp32 only; K - 1 must divide the number of steps). Every backend is checked against eager torch first. Kernel-only
and end-to-end times are both recorded (on a CPU they coincide). Networks are called on at most
2^20 rows at a time, so memory stays bounded for any N x K. Writes a tidy CSV with the machine and
versions in every row; the speedup columns compare medians.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import solvers
from solvers.backends import get_backend
from surrogates.network import load_checkpoint
from surrogates.problems import load_config, problem_from_config, validate_config

from .inference import REGISTRY, check_against_torch
from .machine import machine_info
from .timing import time_cpu, time_cuda, time_torch_cuda
from .workloads import K_SWEEP, PAPER_N, direct_rows, save_every, solver_inputs


CHUNK_ROWS = 1 << 20  # rows per network call: bounded memory for any N x K (100 M rows at K = 5001)


def run_chunked(runner, xd) -> list:
    """Evaluate all rows in calls of at most CHUNK_ROWS rows (device-side results, one per call)."""
    return [runner.run(xd[i:i + CHUNK_ROWS]) for i in range(0, len(xd), CHUNK_ROWS)]


def _concat(a, b):
    """[a, b] along columns for the array types runners use (NumPy, torch, CuPy)."""
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b], axis=1)
    lib = type(a).__module__.split(".")[0]
    if lib == "torch":
        import torch

        return torch.cat([a, b], dim=1)
    if lib == "cupy":
        import cupy

        return cupy.concatenate([a, b], axis=1)
    raise TypeError(f"cannot concatenate arrays of type {type(a).__name__}")


def rollout_runner(runner, y0, params, n_steps: int, keep_every: int, keep_first: bool) -> list:
    """Roll an increment network out through an inference runner: y <- y + net([y, params]).
    Cells go in chunks of at most CHUNK_ROWS; returns the kept states (device arrays), chunk by chunk."""
    kept = []
    for i in range(0, len(y0), CHUNK_ROWS):
        y, p = runner.device_input(y0[i:i + CHUNK_ROWS]), runner.device_input(params[i:i + CHUNK_ROWS])
        if keep_first:
            kept.append(y)
        for step in range(1, n_steps + 1):
            y = y + runner.run(_concat(y, p))
            if step % keep_every == 0:
                kept.append(y)
    return kept


def iterative_inputs(step_problem, traj_problem, c: dict):
    """Initial states (N, n_states) in the step problem's state order and its per-cell parameters."""
    y0, params = solver_inputs(traj_problem, c)
    m = step_problem.model
    Y = np.stack([y0[:, m.state_names.index(o)] for o in step_problem.outputs], axis=1).astype(np.float32)
    n = len(y0)
    P = np.stack([np.broadcast_to(np.asarray(params.get(name, step_problem.fixed.get(name, np.nan)), dtype=np.float64), (n,))
                  for name in step_problem.inputs if name not in step_problem.outputs], axis=1).astype(np.float32)
    if not np.isfinite(P).all():
        raise ValueError(f"problem {step_problem.name!r}: a parameter input has no value from {traj_problem.name!r}")
    return Y, P


def solver_time(problem, c, t_end, n_outputs, device, repeats):
    y0, params = solver_inputs(problem, c)
    se = save_every(t_end, problem.dt, n_outputs)
    name = "cuda" if device == "cuda" else "cpu"
    e2e = time_cpu(lambda: solvers.simulate(problem.model, y0, t_end, problem.dt, se, params, backend=name,
                                            dtype="float32"), repeats=repeats, warmup=1)
    kernel = e2e
    if name == "cuda":
        be, m = get_backend("cuda"), problem.model
        P = np.stack([np.broadcast_to(params.get(p, m.parameters[p].default), (len(y0),)) for p in m.param_names])
        import cupy as cp

        y0_d, P_d = cp.asarray(y0, dtype=np.float32), cp.asarray(P, dtype=np.float32)
        n_saves = round(t_end / problem.dt) // se
        kernel = time_cuda(lambda: be.integrate_device(m, y0_d, P_d, problem.dt, n_saves, se, "float32"), repeats=repeats)
    return name, kernel, e2e


def run(models: dict, backends, precisions, n_cells, n_outputs_list, t_end=50.0, repeats=10, config=None,
        problem_name="C", workdir=None) -> pd.DataFrame:
    cfg = validate_config(config) if isinstance(config, dict) else load_config(config)
    problem = problem_from_config(problem_name, cfg)
    info = machine_info()
    status = {n: b.unavailable_reason() for n, b in REGISTRY.items()}
    workdir = Path(workdir or tempfile.mkdtemp(prefix="speedup_"))
    nets = {}
    for label, path in models.items():
        net, _ = load_checkpoint(path)
        metrics = Path(path).with_name("metrics.json")
        meta = json.loads(metrics.read_text()) if metrics.exists() else {}
        trained_on = problem_from_config(meta["problem"], cfg) if meta.get("problem") in cfg["problems"] else None
        step = trained_on if trained_on is not None and trained_on.kind == "step" else None
        arch = "x".join(f"{a}{w}" for a, w in net.hidden)
        nets[label] = (net.eval(), meta.get("mae", np.nan), arch, step)
    rows, runners = [], {}
    for name in backends:
        if status.get(name) is not None:
            rows.append({"backend": name, "skipped": status[name]})
            print(f"{name}: skipped ({status[name]})", flush=True)
    live = [b for b in backends if status.get(b) is None]
    for N in n_cells:
        for K in n_outputs_list:
            X, c = direct_rows(problem, N, K, t_end)
            for device in sorted({REGISTRY[b].device for b in live}):
                sb, s_kernel, s_e2e = solver_time(problem, c, t_end, K, device, max(10, repeats))
                for label, (net, mae, arch, step) in nets.items():
                    if step is not None:
                        rows += _iterative(label, net, mae, arch, step, problem, c, N, K, t_end, device, live,
                                           precisions, runners, workdir, repeats, (sb, s_kernel, s_e2e))
                        continue
                    for b in [b for b in live if REGISTRY[b].device == device]:
                        for prec in [p for p in precisions if p in REGISTRY[b].precisions]:
                            key = (label, b, prec)
                            if key not in runners:
                                r = REGISTRY[b].prepare(net, prec, workdir / f"{label}_{b}")
                                err = check_against_torch(net, r, X[:4096], prec, b)
                                runners[key] = (r, err)
                            r, err = runners[key]
                            timer = time_torch_cuda if device == "cuda" else time_cpu
                            xd = r.device_input(X)
                            k = timer(lambda: run_chunked(r, xd), repeats=repeats, warmup=1)
                            e = time_cpu(lambda: [r.to_host(y) for y in run_chunked(r, r.device_input(X))],
                                         repeats=repeats, warmup=1)
                            rows.append(_row(f"direct N x K, T={t_end:g}", device, N, K, len(X), (sb, s_kernel, s_e2e),
                                             label, arch, b, prec, k, e, mae, err))
    df = pd.DataFrame(rows)
    for k, v in info.items():
        df[k] = v
    return df


def _row(workload, device, N, K, n_rows, solver, label, arch, backend, prec, k, e, mae, err) -> dict:
    sb, s_kernel, s_e2e = solver
    row = {"workload": workload, "device": device, "n_cells": N, "n_outputs": K, "rows": n_rows,
           "solver_backend": sb, "solver_seconds": s_e2e.median, "solver_kernel_seconds": s_kernel.median,
           "surrogate": label, "arch": arch, "backend": backend, "precision": prec, "surrogate_seconds": e.median,
           "surrogate_kernel_seconds": k.median, "speedup": s_e2e.median / e.median,
           "kernel_speedup": s_kernel.median / k.median, "mae": mae, "max_rel_diff_vs_torch": err,
           "rows_per_s": n_rows / k.median, **k.as_dict("kernel_"), **e.as_dict("e2e_")}
    print(f"N={N:>7d} K={K:>5d} {backend:14s} {prec} {label}: solver {s_e2e.median:.4f} s, "
          f"surrogate {e.median:.4f} s -> speedup {row['speedup']:.3g}", flush=True)
    return row


def _iterative(label, net, mae, arch, step, traj, c, N, K, t_end, device, live, precisions, runners, workdir,
               repeats, solver) -> list:
    """The ITNN side of one (N, K) point: roll N cells out for T / step steps, keeping K states."""
    n_steps = round(t_end / step.step)
    workload = f"iterative rollout N x K, T={t_end:g}, step={step.step:g}"
    skip = None
    if abs(n_steps * step.step - t_end) > 1e-9:
        skip = f"T = {t_end:g} is not a whole number of steps of {step.step:g}"
    elif K > 1 and n_steps % (K - 1):
        skip = f"K - 1 = {K - 1} does not divide the {n_steps} rollout steps"
    base = {"workload": workload, "device": device, "n_cells": N, "n_outputs": K, "surrogate": label, "arch": arch}
    if skip:
        return [{**base, "backend": b, "skipped": skip} for b in live if REGISTRY[b].device == device]
    keep_every = n_steps if K == 1 else n_steps // (K - 1)
    Y0, P = iterative_inputs(step, traj, c)
    rows = []
    for b in [b for b in live if REGISTRY[b].device == device]:
        for prec in [p for p in precisions if p in REGISTRY[b].precisions]:
            if prec != "fp32":
                rows.append({**base, "backend": b, "precision": prec,
                             "skipped": "iterative rollouts are timed in fp32 only"})
                continue
            key = (label, b, prec)
            if key not in runners:
                r = REGISTRY[b].prepare(net, prec, workdir / f"{label}_{b}")
                err = check_against_torch(net, r, np.concatenate([Y0, P], axis=1)[:4096], prec, b)
                runners[key] = (r, err)
            r, err = runners[key]
            timer = time_torch_cuda if device == "cuda" else time_cpu
            k = timer(lambda: rollout_runner(r, Y0, P, n_steps, keep_every, K > 1), repeats=repeats, warmup=1)
            e = time_cpu(lambda: [r.to_host(y) for y in rollout_runner(r, Y0, P, n_steps, keep_every, K > 1)],
                         repeats=repeats, warmup=1)
            rows.append(_row(workload, device, N, K, N * n_steps, solver, label, arch, b, prec, k, e, mae, err))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="label=path/to/best_model.pth")
    ap.add_argument("--backends", nargs="+", default=list(REGISTRY))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--n", type=int, nargs="+", default=list(PAPER_N))
    ap.add_argument("--k", type=int, nargs="+", default=[26])
    ap.add_argument("--k-sweep", action="store_true", help=f"K in {K_SWEEP} at the first N")
    ap.add_argument("--t-end", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/speedup.csv"))
    a = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in a.model)
    frames = [run(models, a.backends, a.precisions, a.n, a.k, a.t_end, a.repeats, a.config)]
    if a.k_sweep:
        frames.append(run(models, a.backends, a.precisions, a.n[:1], list(K_SWEEP), a.t_end, a.repeats, a.config))
    df = pd.concat(frames, ignore_index=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, index=False)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
