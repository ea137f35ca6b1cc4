"""Everything that needs a GPU, measured in one command of a few minutes: ``make gpu-check``.

    python -m benchmarks.gpu_check [--out results/gpu_check] [--budget 330] [--skip STEP ...]

Plain Python (no Snakemake), for a machine lent for minutes. The steps, in this order (the least known
first; ``--skip`` leaves any out):

1. ``tests``: the GPU tests (``pytest -m gpu``; the Triton kernels' file first);
2. ``training table``: ``benchmarks.training_speed``'s table on the GPU (DDNN and PINN steps, captured and
   not, 3 seeds as one stacked model, row costs);
3. ``lbfgs``: seconds per iteration of hh_m's L-BFGS polish: torch.optim.LBFGS, training.lbfgs, and the
   latter with the objective replayed from a CUDA graph;
3b. ``share``: several training processes on the GPU at once (1, 4, 8), without and with NVIDIA MPS
   (:mod:`benchmarks.gpu_share`): whether jobs sharing the GPU, as the GPU profile has them, pay; and 3
   networks in one process one after the other against side by side (:mod:`training.side_by_side`);
4. ``grid``: one real training job of each (problem, surrogate) of the configured grid, as the workflow
   runs it, C's ddnn seeds also as a cohort; the grid's trainings one after the other estimated from them;
5. ``kernels``: the fused tensor-core kernel's rows/s for the 4x128 and 3x64 nets at 2^20 rows, beside the
   torch backends;
6. ``solver``: the ``cuda`` kernel against a plain one-thread-per-cell kernel over N, kernel only, and
   ``simulate(backend="cuda")`` end to end (pinned, overlapped copies) and with the result left on the GPU;
7. ``training``: iterations/s of the plain eager loop, the fused engine and the captured step (C);
8. ``speed``: the trained C and D surrogates of the configuration if they exist, else C (ddnn, 3 seeds) and D (itnn)
   trained briefly here; the speed benchmark at the configured N with K = 26 (C's seed ensemble too) and
   the K sweep.

Each step has a share of the time budget and records what it could not finish; a step that fails is
recorded and the others go on. At most eight files are written into one folder (summary.md, pytest.log,
training_speed.md, grid.csv, kernels.csv, solver.csv, training.csv, speed_raw.csv), and the summary is
printed with the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import cli
from core.io import write_text
from core.layout import Layout
from core.machine import describe_machine, machine_info
from surrogates.study import Study

ROOT = Path(__file__).resolve().parents[1]

PLAIN_KERNEL = r"""
extern "C" __global__ void plain_fhn(const float* y0, const float* I, float* out, long long n, float dt,
                                     int n_saves, int save_every) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float u = y0[2 * i], w = y0[2 * i + 1];
    const float c = I[i];
    out[2 * i] = u; out[2 * i + 1] = w;
    for (int k = 1; k <= n_saves; ++k) {
        for (int s = 0; s < save_every; ++s) {
            float du = 10.0f * (u * (u - 0.4f) * (1.0f - u) - w + c);
            float dw = 0.04f * u - 0.16f * w;
            u += dt * du; w += dt * dw;
        }
        out[(k * n + i) * 2] = u; out[(k * n + i) * 2 + 1] = w;
    }
}
"""


class Budget:
    """Seconds left for the whole check, shared out among the steps."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def step(name, summary, fn, *args):
    """Run one step; a failure is recorded (with the reason) and the check goes on."""
    t0 = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        result = fn(*args)
        summary.append((name, "ok", f"{time.monotonic() - t0:.0f} s", result or ""))
    except Exception as exc:  # recorded, never lost: the other steps still run
        traceback.print_exc()
        summary.append((name, "FAILED", f"{time.monotonic() - t0:.0f} s", f"{type(exc).__name__}: {exc}"[:300]))


# ---------------------------------------------------------------- 1. the GPU tests
# the files with GPU tests, the one never yet seen passing on a GPU first; any other file after them
GPU_TEST_FILES = ["test_triton_step.py", "test_triton_kernels.py", "test_cohort.py", "test_engine.py", "test_cuda.py", "test_inference.py"]


def gpu_tests(out: Path, budget: Budget, seconds: float = 150.0, only=None) -> str:
    files = [ROOT / "tests" / Path(f).name if not (ROOT / f).is_file() else ROOT / f for f in (only or GPU_TEST_FILES)]
    if not only:
        files += sorted(set((ROOT / "tests").glob("test_*.py")) - set(files))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "--durations=12", "-p", "no:cacheprovider",
           *map(str, files)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, min(seconds, budget.left() - 150)),
                             cwd=ROOT)
        text, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout), -1
    write_text(out / "pytest.log", text)
    tail = [line for line in text.strip().splitlines() if " passed" in line or " failed" in line or " error" in line]
    return (tail[-1] if tail else f"pytest exit {rc}") + " (pytest.log)"


# ---------------------------------------------------------------- 2. the solver
def solver(study: Study, out: Path, budget: Budget) -> str:
    import cupy as cp

    import solvers
    from inference.timing import measure
    from inference.workloads import Case

    p = study.problem(study.speed.problem)
    plain = cp.RawKernel(PLAIN_KERNEL, "plain_fhn")
    be = solvers.get_backend("cuda")
    rows = []
    for n in (20_000, 160_000, 1_000_000, 10_000_000):
        if budget.left() < 60:
            break
        case = Case(p, n, study.speed.n_outputs, study.speed.t_end)
        y0, params = case.solver_inputs()
        launch = be.launcher(p.model, y0, p.parameter_matrix(case.cells, n, "float32"), p.dt, case.n_saves, case.save_every,
                             "float32")
        k = measure(launch, "cupy", 20, 3, 100)
        y0_d = cp.asarray(y0, dtype=cp.float32)
        I_d = cp.asarray(np.broadcast_to(params.get("I", p.model.parameters["I"].default), (n,)), dtype=cp.float32)
        o = cp.empty((case.n_saves + 1, n, 2), dtype=cp.float32)
        args = (y0_d, I_d, o, np.int64(n), np.float32(p.dt), np.int32(case.n_saves), np.int32(case.save_every))
        ref = measure(lambda: plain(((n + 127) // 128,), (128,), args), "cupy", 20, 3, 100)
        row = {"n_cells": n, "kernel_ms": k.median * 1e3, "plain_kernel_ms": ref.median * 1e3,
               "kernel_vs_plain": k.median / ref.median}
        if n == 1_000_000:
            run = lambda **o_: solvers.simulate(p.model, y0, case.t_end, p.dt, case.save_every, params, backend="cuda",
                                               dtype="float32", **o_)
            e = measure(lambda: run(), "cpu", 5, 1, 10)
            d = measure(lambda: run(device_output=True), "cpu", 5, 1, 10)
            row.update({"end_to_end_ms": e.median * 1e3, "device_output_ms": d.median * 1e3,
                        "end_to_end_vs_kernel": e.median / k.median})
        rows.append(row)
        print(row, flush=True)
    pd.DataFrame(rows).to_csv(out / "solver.csv", index=False)
    worst = max(r["kernel_vs_plain"] for r in rows)
    e2e = next((r["end_to_end_vs_kernel"] for r in rows if "end_to_end_vs_kernel" in r), float("nan"))
    return f"kernel / plain kernel <= {worst:.2f}x over N; end to end at N = 1e6: {e2e:.1f}x the kernel (solver.csv)"


# ---------------------------------------------------------------- 3. training
def training(study: Study, out: Path, budget: Budget, device: str = "cuda", iters: int = 3000) -> str:
    from benchmarks.training_speed import _data, reference_loop

    p = study.problem("C")
    s = study.training("C")
    hidden = [tuple(h) for h in s.architectures[s.architecture]]
    X, Y = _data(p, 100_000)
    rows = []
    for name, fn in (("plain eager loop", lambda: reference_loop(p, hidden, X, Y, 1024, iters // 3, s.lr, device)),
                     ("fused engine", lambda: _rate(p, hidden, X, Y, "fused", False, device, iters)),
                     ("fused engine, CUDA graph", lambda: _rate(p, hidden, X, Y, "fused", True, device, iters)),
                     ("autograd path", lambda: _rate(p, hidden, X, Y, "autograd", False, device, iters))):
        if budget.left() < 120:
            break
        rows.append({"variant": name, "it_per_s": fn(), "device": device})
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(out / "training.csv", index=False)
    return ", ".join(f"{r['variant']} {r['it_per_s']:.0f} it/s" for r in rows) + " (C, 3x64, batch 1024; training.csv)"


def training_table(study: Study, out: Path, budget: Budget, device: str = "cuda") -> str:
    """``benchmarks.training_speed``'s table on the GPU: DDNN and PINN steps (captured and not) against the
    plain eager loop, and the cost of a collocation row against a data row."""
    from benchmarks.training_speed import measure, table

    iters = 1000  # x 2 rounds: the capture included in each run's time, as in benchmarks/reference/recorded.md's figures
    results, costs = measure(study, iters, 2, device)
    write_text(out / "training_speed.md", table(results, costs, machine_info(), device, iters, 2))
    best = {r["problem"] + " " + r["variant"]: r["it_per_s"] for r in results}
    return "; ".join(f"{k} {v:.0f} it/s" for k, v in best.items() if "CUDA graph" in k or "stacked" in k) + " (training_speed.md)"


def _rate(p, hidden, X, Y, engine, capture, device="cuda", iters=3000):
    """Iterations/s of the Trainer on ``device`` (a first short run warms up: compilation, graph capture)."""
    from benchmarks.training_speed import _net, _sync
    from surrogates.losses import DataLoss
    from training.trainer import Trainer

    rate = 0.0
    for n in (min(200, iters), iters):
        net = _net(p, hidden, X, Y, device)
        with tempfile.TemporaryDirectory() as d:
            tr = Trainer(net, d, val_every=n, lr=3e-3, lr_schedule="cosine", engine=engine, capture=capture,
                         progress=False)
            tr.add_loss(DataLoss(X, Y, batch_size=1024, seed=0, name="data"))
            _sync(device)
            t0 = time.perf_counter()
            tr.train(n)
            _sync(device)
            rate = n / (time.perf_counter() - t0)
    return rate


# ---------------------------------------------------------------- 3b. several trainings sharing the GPU
def share(study: Study, out: Path, budget: Budget, counts=(1, 4, 8), steps: int = 10_000) -> str:
    """:mod:`benchmarks.gpu_share`: K training processes at once, aggregate network-iterations/s against one
    alone, without MPS and with a private MPS daemon where one starts."""
    from benchmarks.gpu_share import describe, sweep

    if budget.left() < 150:
        return "skipped: the check's time budget"
    text = describe(sweep(list(counts), steps, "cuda", "auto", "auto"))
    if budget.left() > 60:  # the same within one process: 3 networks one after the other, then side by side
        from benchmarks.gpu_share import in_process

        try:
            r = in_process(3, steps, "cuda")
            text += (f"; in one process, 3 networks: one after the other {r['sequential']:.0f} network-it/s, side by "
                     f"side (threads, streams) {r['side_by_side']:.0f}")
        except Exception as exc:  # recorded: the rows above stand
            text += f"; side by side in one process FAILED: {type(exc).__name__}: {exc}"[:300]
    return text


# ---------------------------------------------------------------- 4. networks
def networks(study: Study, budget: Budget, iterations: int = 3000) -> tuple[dict, dict]:
    """``(kind -> checkpoint, kind -> [checkpoint of each seed])`` for the speed benchmark: the configured
    trained models and ensembles, else brief GPU trainings (C's ddnn with three seeds, its ensemble timed
    too, and D's itnn)."""
    from benchmarks.speedup import configured_ensembles, configured_models
    from benchmarks.surrogate_accuracy import ensure_datasets
    from core.errors import InvalidInputError
    from training.train import train_surrogate

    try:
        models = configured_models(study)
        try:
            return models, configured_ensembles(study)
        except InvalidInputError:
            return models, {}
    except InvalidInputError:
        pass
    lay = Layout(study.results_dir)
    runs = [("C", "ddnn", 10_000, (0, 1, 2)), ("D", "itnn", 10_000, (0,))]
    arch = study.architecture
    ensure_datasets(study, [(p, k, n, arch, s) for p, k, n, seeds in runs for s in seeds])
    out, ens = {}, {}
    for p, k, n, seeds in runs:
        paths = []
        for seed in seeds:
            d = lay.model_dir(p, k, n, arch, seed)
            if not (d / "metrics.json").exists():
                train_surrogate(study, p, k, n, seed, lay.dataset_dir(p), d, arch, iterations=iterations)
            paths.append(d / "best_model.pth")
        out[k] = paths[0]
        if len(paths) > 1:
            ens[k] = paths
    return out, ens


# ---------------------------------------------------------------- 4b. the grid's trainings
GRID_ORDER = [("C", "ddnn"), ("C", "pinn"), ("D", "itnn"), ("hh_m", "pinn"), ("hh_m", "ddnn"), ("hh_m", "pinn_seed"),
              ("B", "pinn"), ("B", "ddnn"), ("A", "pinn"), ("A", "ddnn")]


def grid(study: Study, out: Path, budget: Budget, reserve: float = 150.0, wide_iterations: int = 20_000) -> str:
    """One real training job of each (problem, surrogate) of the configured grid, as the workflow runs it
    (its datasets, settings, validation, checkpoints, scoring) at its largest n and first seed; the seeds of
    C's ddnn also as one stacked cohort; then the grid's trainings one after the other, estimated from these
    measured jobs (a job of a class costs what its measured job did: per-step cost does not depend on n)."""
    from benchmarks.surrogate_accuracy import ensure_datasets
    from training.train import train_surrogates

    jobs = study.training_grid()
    lay = Layout(study.results_dir)
    classes = {}
    for j in jobs:
        classes.setdefault((j[0], j[1]), []).append(j)
    order = [c for c in GRID_ORDER if c in classes] + [c for c in classes if c not in GRID_ORDER]
    picks = [max(classes[c], key=lambda j: (j[2], -j[4])) for c in order]
    seeds = study.seeds
    picks = [(*j, None) for j in picks]  # (problem, surrogate, n, arch, seed(s), iterations or None)
    if ("C", "ddnn") in classes and len(seeds) > 1:  # the cohort: C's ddnn seeds together
        c = picks[0]
        picks.insert(1, (c[0], c[1], c[2], c[3], tuple(seeds), None))
    wide = "silu4x128"  # config/accurate.yaml's D: 3 seeds of the 4x128 ITNN stacked (20k of its 120k steps)
    if wide_iterations and ("D", "itnn") in classes and wide in study.architectures and len(seeds) > 1:
        d = next(j for j in picks if j[:2] == ("D", "itnn"))
        picks.insert(picks.index(d) + 1, (d[0], d[1], d[2], wide, tuple(seeds), wide_iterations))
    rows, work = [], Path(tempfile.mkdtemp(prefix="grid-"))
    for p, s, n, arch, seed, n_iter in picks:
        if budget.left() < reserve:
            rows.append({"problem": p, "surrogate": s, "n": n, "arch": arch, "seeds": str(seed),
                         "skipped": "the check's time budget"})
            continue
        sd = list(seed) if isinstance(seed, tuple) else [seed]
        try:
            t0 = time.perf_counter()
            ensure_datasets(study, [(p, s, n, arch, x) for x in sd])
            t1 = time.perf_counter()
            res = train_surrogates(study, p, s, n, sd, lay.dataset_dir(p),
                                   [work / f"{p}-{s}-{n}-{arch}-{x}-{len(sd)}" for x in sd], arch, iterations=n_iter)
            t2 = time.perf_counter()
            r = res[0]
            iters = int(r.get("iterations") or 0)
            rows.append({"problem": p, "surrogate": s, "n": n, "arch": arch, "seeds": " ".join(map(str, sd)),
                         "dataset_s": t1 - t0, "job_s": t2 - t1, "per_network_s": (t2 - t1) / len(sd),
                         "train_s": sum(x["train_seconds"] for x in res), "iterations": iters,
                         "network_it_per_s": len(sd) * iters / sum(x["train_seconds"] for x in res)
                         if iters else float("nan"),
                         "test_mae": float(np.mean([x["mae"] for x in res])), "device": str(r.get("device", ""))})
        except Exception as exc:  # recorded: the other classes still run
            traceback.print_exc()
            rows.append({"problem": p, "surrogate": s, "n": n, "arch": arch, "seeds": " ".join(map(str, sd)),
                         "failed": f"{type(exc).__name__}: {exc}"[:300]})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "grid.csv", index=False)
    timed = {(r["problem"], r["surrogate"], len(r["seeds"].split())): r["per_network_s"] for r in rows
             if "per_network_s" in r and r["arch"] == study.training(r["problem"]).architecture}
    lone = {(p, s): v for (p, s, k), v in timed.items() if k == 1}
    covered = [j for j in jobs if (j[0], j[1]) in lone]
    total = sum(lone[(j[0], j[1])] for j in covered)
    text = (f"{len(timed)} job(s) timed; the {len(covered)} of {len(jobs)} grid trainings they cover, one after "
            f"the other: {total:.0f} s (estimated from the timed jobs)")
    if len(seeds) > 1 and ("C", "ddnn", len(seeds)) in timed and ("C", "ddnn") in lone:
        text += (f"; C ddnn alone {lone[('C', 'ddnn')]:.1f} s, as a cohort of {len(seeds)} "
                 f"{timed[('C', 'ddnn', len(seeds))]:.1f} s per network")
    for r in rows:
        if r["arch"] == wide and "network_it_per_s" in r:
            text += (f"; D itnn {wide}, {len(seeds)} seeds stacked: {r['network_it_per_s']:.0f} network-it/s "
                     f"({r['job_s']:.0f} s for {r['iterations']} steps)")
    return text + " (grid.csv)"


def lbfgs(study: Study, out: Path, budget: Budget, iterations: int = 200) -> str:
    """Seconds per iteration of the L-BFGS polish on hh_m's full set (ddnn: data only; pinn_seed: with the
    gate residual), alternately in one process: torch.optim.LBFGS and training.lbfgs.LBFGS with the
    objective evaluated kernel by kernel, and training.lbfgs.LBFGS with the objective replayed from a CUDA
    graph (the default on a GPU; on a CPU the same as "ours")."""
    import torch

    import training.lbfgs as lb
    import training.trainer as tm
    from benchmarks.surrogate_accuracy import ensure_datasets
    from core.config import merge
    from surrogates.config import validate_config
    from training.train import train_surrogate

    lay = Layout(study.results_dir)
    problem = "hh_m"
    if problem not in study.problems:
        return "no hh_m problem in the configuration"
    n = max(study.problem(problem).sizes)
    ensure_datasets(study, [(problem, "ddnn", n, None, 0)])
    ours, theirs = lb.LBFGS, torch.optim.LBFGS
    c = validate_config(merge(study.as_dict(), {"training": {"overrides": {problem: {
        "iterations": 10, "lbfgs_iterations": iterations}}}}))
    captured = tm.Trainer._polish_objective

    def op_by_op(self, fused):  # the objective evaluated kernel by kernel (no CUDA graph)
        return None if fused is None else (lambda: self._fused_objective(fused[1], fused[0]))

    variants = (("torch", theirs, op_by_op), ("ours", ours, op_by_op), ("ours+graph", ours, captured))
    res = {}
    try:
        for kind in ("ddnn", "pinn_seed"):
            for name, cls, objective in variants + variants:
                if budget.left() < 60:
                    break
                lb.LBFGS, tm.Trainer._polish_objective = cls, objective
                with tempfile.TemporaryDirectory() as d:
                    r = train_surrogate(c, problem, kind, n, 0, lay.dataset_dir(problem), d)
                res.setdefault((kind, name), []).append(r["train_seconds"] / iterations)
    finally:
        lb.LBFGS, tm.Trainer._polish_objective = ours, captured
    text = "; ".join(f"{k} {name} {1e3 * min(v):.2f} ms" for (k, name), v in res.items())
    return f"hh_m n = {n}, {iterations} L-BFGS iterations, seconds an iteration (best of 2): {text}"


# ---------------------------------------------------------------- 5. inference
def kernels(study: Study, out: Path, budget: Budget) -> str:
    import torch

    from inference.backends import REGISTRY, check_against_torch
    from inference.timing import measure
    from surrogates.network import MLP

    p = study.problem(study.speed.problem)
    rows = []
    for arch in ("silu4x128", "mlp3x64"):  # the 4x128 first: the 3x64's figures are in benchmarks/reference/recorded.md
        hidden = study.architectures.get(arch)
        if hidden is None:
            continue
        torch.manual_seed(0)
        net = MLP(len(p.inputs), len(p.outputs), hidden, input_range=p.box()).eval()
        lo, hi = p.box()
        X = np.random.default_rng(0).uniform(lo, hi, size=(1 << 20, len(lo))).astype(np.float32)
        _spread_outputs(net, X[:4096])
        for backend in ("fused", "torch_cuda", "torch_compile"):
            b = REGISTRY[backend]
            if b.unavailable_reason():
                continue
            for prec in b.precisions:
                if budget.left() < 90:
                    break
                t0 = time.perf_counter()
                try:
                    r = b.prepare(net, prec, Path(tempfile.mkdtemp()))
                    prep = time.perf_counter() - t0
                    err = check_against_torch(net, r, X[:4096], prec, backend)
                    xd = r.device_input(X)
                    k = measure(lambda: r.run(xd), "torch", 20, b.warmup, 50)
                    rows.append({"arch": arch, "backend": backend, "precision": prec, "rows": len(X),
                                 "G_rows_per_s": len(X) / k.median / 1e9, "kernel_ms": k.median * 1e3,
                                 "prepare_s": prep, "max_rel_diff_vs_torch": err})
                except Exception as exc:
                    rows.append({"arch": arch, "backend": backend, "precision": prec, "failed": f"{type(exc).__name__}: {exc}"[:200]})
                print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(out / "kernels.csv", index=False)
    ok = [r for r in rows if "G_rows_per_s" in r and r["backend"] == "fused"]
    return "; ".join(f"fused {r['arch']} {r['precision']} {r['G_rows_per_s']:.2f} G rows/s" for r in ok) + " (kernels.csv)"


def _spread_outputs(net, X) -> None:
    """Make a freshly initialised net vary like a trained surrogate: weights 2.5 x torch's initialisation and
    the last layer rescaled so each output spans [-1, 1] over ``X`` (at initialisation the outputs barely
    vary, and an error relative to their range would measure the rounding of a constant)."""
    import torch

    last = net.linear_layers()[-1]
    with torch.no_grad():
        for lin in net.linear_layers():  # pre-activations of order 1-2, as in the Triton kernels' tests
            lin.weight.mul_(2.5)
            lin.bias.mul_(2.5)
        y = net.net(((torch.as_tensor(X) - net.in_center) / net.in_halfwidth))
        lo, hi = y.min(0).values, y.max(0).values
        s = 2.0 / (hi - lo).clamp_min(1e-12)
        last.weight.mul_(s[:, None])
        last.bias.sub_((lo + hi) / 2).mul_(s)


def speed(study: Study, models: dict, out: Path, budget: Budget, backends=None, ensembles=None) -> str:
    from benchmarks.speedup import Settings, cases, run

    sp = study.speed
    backends = backends or [b for b in sp.backends if b not in ("torch", "onnxruntime")]  # the GPU side
    settings = Settings(sp.repeats, sp.max_repeats, min(sp.backend_time_limit_s, max(30.0, budget.left() / 8)),
                        deadline=time.monotonic() + budget.left() - 20)
    # the configured point first, then the K sweep, then the N sweep: what the budget leaves out is the least
    first = (sp.n_cells[0], sp.n_outputs)
    points = sorted(cases(study), key=lambda c: ((c.n_cells, c.n_outputs) != first, c.sweep == "N", c.n_outputs, c.n_cells))
    df = run(study, models, backends, sp.precisions, points, settings, ensembles=ensembles)
    df.to_csv(out / "speed_raw.csv", index=False)
    timed = df[df["failed"].isna() & df["skipped"].isna()] if "failed" in df else df
    at = timed[(timed.n_cells == sp.n_cells[0]) & (timed.n_outputs == sp.n_outputs)]
    if at.empty:
        return "no timed rows (speed_raw.csv)"
    best = at.loc[at.kernel_speedup.idxmax()]
    failed = int(df["failed"].notna().sum()) if "failed" in df else 0
    ens = "".join(f"; {r.surrogate} ({r.backend} {r.precision}) end to end {r.speedup:.2f}x"
                  for r in at[at.surrogate.str.endswith("_ensemble")].itertuples())
    return (f"best at N = {sp.n_cells[0]}, K = {sp.n_outputs}: {best.surrogate} {best.backend} {best.precision} "
            f"kernel speedup {best.kernel_speedup:.2f}x, end to end {best.speedup:.2f}x{ens}; {failed} failed row(s) "
            "(speed_raw.csv)")


def main(argv=None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--out", type=Path, help="default: RESULTS/gpu_check")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the whole check")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["tests", "solver", "training", "training table", "lbfgs", "share", "grid", "kernels", "speed"])
    ap.add_argument("--test-seconds", type=float, default=150.0, help="at most this long for the GPU tests")
    ap.add_argument("--test-files", nargs="*", help="only these files of tests/ (default: every GPU test)")
    ap.add_argument("--grid-reserve", type=float, default=150.0,
                    help="the grid step starts no job with fewer seconds than this left (for the steps after it)")
    a = ap.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from surrogates.config import load_config

    study = load_config(*a.config)
    out = a.out or Layout(study.results_dir).root / "gpu_check"
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(a.budget)
    info = machine_info()
    summary: list = []
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        summary.append(("GPU", "skipped", "", "torch sees no CUDA device: nothing here can be measured on this machine"))
    else:
        for name, fn, args in (("tests", gpu_tests, (out, budget, a.test_seconds, a.test_files)),
                               ("training table", training_table, (study, out, budget)),
                               ("lbfgs", lbfgs, (study, out, budget)),
                               ("share", share, (study, out, budget)),
                               ("grid", grid, (study, out, budget, a.grid_reserve)),
                               ("kernels", kernels, (study, out, budget)), ("solver", solver, (study, out, budget)),
                               ("training", training, (study, out, budget))):
            if name not in a.skip:
                step(name, summary, fn, *args)
        if "speed" not in a.skip:
            models, ensembles = {}, {}

            def _networks():
                m, e = networks(study, budget)
                models.update(m)
                ensembles.update(e)
                return ", ".join(models) + "".join(f", {k} ensemble of {len(v)}" for k, v in ensembles.items())

            step("networks", summary, _networks)
            if models:
                step("speed", summary, speed, study, models, out, budget, None, ensembles)
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}", "", f"Machine: {describe_machine(info)}; "
             + ", ".join(f"{k} {info[k]}" for k in ("torch", "triton", "cupy-cuda12x", "cupy-cuda13x") if k in info)
             + f"; driver {info.get('gpu_driver')}", "", "| step | status | time | result |", "|---|---|---|---|"]
    lines += [f"| {n} | {s} | {t} | {r} |" for n, s, t, r in summary]
    text = "\n".join(lines) + "\n"
    write_text(out / "summary.md", text)
    print(text)
    print(f"files in {out}: {sorted(p.name for p in out.iterdir())}")
    print(json.dumps({"machine": info}, default=str)[:2000])
    return 1 if any(s == "FAILED" for _, s, _, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
