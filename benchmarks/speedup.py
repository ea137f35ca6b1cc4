"""Surrogate inference against the Euler solver on the same outputs: the paper's N and a sweep over K.

    python -m benchmarks.speedup --config config/quick.yaml --model ddnn=results/quick/models/C/ddnn/.../best_model.pth

Everything the study fixes comes from the configuration's ``speed`` section (problem, T, the N list, K and
the K sweep, backends, precisions, repeats); the command line may narrow it. For each point (N cells, K
kept states): the solver side runs the project's fastest solver backend on the device (``cpu`` on a CPU,
the ``cuda`` kernel on a GPU) in float32; each surrogate backend produces the same N x K outputs from cells
drawn from the problem's box. A direct network evaluates N x K rows; an iterative one (ITNN, trained on a
step problem such as D) rolls the N cells out for T / step steps and keeps the same K states (through the
backend's fused rollout where it has one). Every backend is checked against eager torch first.

Kernel-only and end-to-end times are both recorded (on a CPU they coincide). End to end, a direct network
does the solver's whole job: from the cells' inputs and the K kept times on the host to the N x K outputs on
the host, its N x K input rows built on the device it runs on (on a GPU: the cells go over, not the rows);
kernel-only, it runs on rows already on the device. The untimed warm-up of a
workload that is evaluated in several chunks runs its first and last chunk (every shape the timed calls
meet), not the whole call again; that of a step-by-step rollout on a CPU, one step of each chunk of cells.
Repeats continue while a
measurement's spread (IQR / median) is above 10%, up to ``speed.max_repeats``, and fewer (at least 3) where
one call is so long that the repeats would not fit in a tenth of the per-point time limit; a point that stays
noisy is flagged. A backend that fails to prepare, mismatches, or takes longer than
``speed.backend_time_limit_s`` for one point is recorded as a failed row with the reason (and not tried on
the larger points of that series); the others go on, and the program exits non-zero at the end.
"""
from __future__ import annotations

import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import solvers
from benchmarks import cli
from core.errors import InvalidInputError
from core.io import read_record, write_text
from core.layout import Layout
from core.machine import machine_info
from inference.backends import REGISTRY, check_against_torch, ensemble_runner
from inference.timing import TimingStats, measure
from inference import workloads
from inference.workloads import Case, rollout_runner, run_chunked, run_from_cells
from surrogates.config import load_config
from surrogates.network import load_checkpoint
from surrogates.problems import Problem
from surrogates.study import Study

BUDGET_SPENT = "not measured: the time budget of this run was spent"
ROLLOUT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}  # of the state range, after the whole rollout


@dataclass(frozen=True)
class Surrogate:
    """A trained network to time: its kind (the label), its test MAE, architecture, and for an iterative
    network the step problem it advances. A seed ensemble (label ``<kind>_ensemble``) has its networks in
    ``members`` and ``net`` is their mean (``surrogates.ensemble.Ensemble``, the reference it is checked
    against); each backend runs every member and averages the outputs."""

    label: str
    net: object
    mae: float
    arch: str
    step: Problem | None = None
    members: tuple = ()


@dataclass(frozen=True)
class SolverTiming:
    backend: str
    device: str
    kernel: TimingStats
    e2e: TimingStats
    wall_s: float = float("nan")  # what measuring the solver side of the point took


@dataclass(frozen=True)
class Settings:
    """How to measure: repeats (adaptive up to ``max_repeats``) and the time limit of one point."""

    repeats: int = 10
    max_repeats: int = 30
    backend_time_limit_s: float = 600.0
    deadline: float | None = None  # time.monotonic() after which the remaining points are recorded as skipped


# ---------------------------------------------------------------- what to measure
def cases(study: Study, n_cells=None, n_outputs=None, k_sweep=None) -> list[Case]:
    """The points of the ``speed`` section: the N sweep at K, then the K sweep at the first N; a point that is
    in both is measured once (``sweep="N,K"``)."""
    sp = study.speed
    problem = study.problem(sp.problem)
    n_cells = list(n_cells or sp.n_cells)
    K = int(n_outputs or sp.n_outputs)
    sweep = list(sp.k_sweep if k_sweep is None else k_sweep)
    points: dict[tuple[int, int], str] = {(N, K): "N" for N in n_cells}
    for k in sweep:
        key = (n_cells[0], int(k))
        points[key] = "N,K" if points.get(key) == "N" else "K"
    return [Case(problem, N, k, float(sp.t_end), s) for (N, k), s in points.items()]


def load_surrogates(study: Study, models: dict, expect: dict | None = None) -> dict[str, Surrogate]:
    """Load ``label -> checkpoint`` (the label is the surrogate kind), checking that each was made for the
    problem the speed benchmark times it on (``expect[label]`` adds n, seed, arch where the caller knows them)."""
    from core.provenance import check_provenance

    out = {}
    for label, path in models.items():
        problem = study.speed_problem_of(label)
        p = study.problem(problem)
        need = {"problem": p.name, "problem_fingerprint": p.fingerprint, "surrogate": label,
                **((expect or {}).get(label) or {})}
        net, meta = load_checkpoint(path, expect=need)
        metrics_path = Path(path).with_name("metrics.json")
        metrics = read_record(metrics_path, "metrics file") if metrics_path.exists() else {}
        if metrics:
            check_provenance(metrics.get("provenance", {}), need, f"metrics file {metrics_path}")
        arch = meta["provenance"].get("arch") or "x".join(f"{a}{w}" for a, w in net.hidden)
        out[label] = Surrogate(label, net.eval(), metrics.get("mae", np.nan), arch, p if p.kind == "step" else None)
    return out


def load_ensembles(study: Study, ensembles: dict) -> dict[str, Surrogate]:
    """Load ``kind -> [checkpoint, ...]`` as seed ensembles: every member checked to be the run of ``kind`` on
    its speed problem with the training size and architecture its first member records, each with its own
    seed, the seeds distinct (``surrogates.ensemble.load_members``). The MAE is the ensemble's own test score
    where the workflow wrote it (``training.ensemble``: the accuracy table's ``<kind>_ensemble`` row), checked
    to be the mean of the same seeds; NaN where it was not scored."""
    from core.provenance import check_provenance
    from surrogates import ensemble as ens

    out = {}
    layout = Layout(study.results_dir)
    for kind, paths in ensembles.items():
        p = study.speed_problem_of(kind)
        prob = study.problem(p)
        if len(paths) < 2:
            raise InvalidInputError(f"the {kind} ensemble needs at least 2 checkpoints, got {len(paths)}")
        _, meta = load_checkpoint(paths[0])
        first = meta.get("provenance", {})
        n, arch = first.get("n"), first.get("arch")
        if not isinstance(n, int) or not isinstance(arch, str):
            raise InvalidInputError(f"checkpoint {paths[0]} records no training size and architecture; it cannot be "
                                    f"a member of an ensemble")
        members, seeds = ens.load_members(study, p, kind, n, arch, paths)
        mae = np.nan
        scored = layout.ensemble_file(p, kind, n, arch)
        if scored.exists():
            metrics = read_record(scored, "ensemble metrics file")
            check_provenance(metrics.get("provenance", {}), ens.expected_ensemble(study, p, kind, n, arch, seeds),
                             f"ensemble metrics file {scored}")
            mae = metrics.get("mae", np.nan)
        label = ens.label(kind)
        out[label] = Surrogate(label, ens.Ensemble(members).eval(), mae, arch, prob if prob.kind == "step" else None,
                               tuple(members))
    return out


# ---------------------------------------------------------------- the solver side
def time_solver(case: Case, device: str, s: Settings) -> SolverTiming:
    """The project's fastest solver for this device, float32, on the case's cells: kernel and end to end."""
    p = case.problem
    y0, params = case.solver_inputs()
    name = "cuda" if device == "cuda" else "cpu"

    def e2e():
        return solvers.simulate(p.model, y0, case.t_end, p.dt, case.save_every, params, backend=name, dtype="float32")

    started = time.perf_counter()
    e = measure(e2e, "cpu", s.repeats, 1, s.max_repeats)
    if name != "cuda":
        return SolverTiming(name, device, e, e, time.perf_counter() - started)
    launch = solvers.get_backend("cuda").launcher(p.model, y0, p.parameter_matrix(case.cells, case.n_cells),
                                                 p.dt, case.n_saves, case.save_every, "float32")
    k = measure(launch, "cupy", s.repeats, 3, s.max_repeats)
    return SolverTiming(name, device, k, e, time.perf_counter() - started)


# ---------------------------------------------------------------- the surrogate side
class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Interrupt Python-level work after ``seconds`` (main thread only; a call stuck in C is interrupted when
    it returns)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Bench:
    """Runs the surrogate side, keeping prepared runners, each backend's time used, and its failures."""

    def __init__(self, settings: Settings, workdir: Path):
        self.s, self.workdir = settings, workdir
        self.runners: dict = {}
        self.too_slow: dict = {}  # (label, backend, precision) -> (n_cells, n_outputs) of the point that timed out
        self.broken: dict = {}  # (label, backend, precision) -> why it failed: never tried again
        self.skips: dict = {}  # (label, backend, precision) -> why it does not apply

    def _runner(self, sur: Surrogate, backend: str, prec: str, case: Case):
        key = (sur.label, backend, prec)
        if key not in self.runners:
            b = REGISTRY[backend]
            if sur.members:  # every member on this backend and precision, averaged on the device
                r = ensemble_runner([b.prepare(m, prec, self.workdir / f"{sur.label}_{backend}_{i}")
                                     for i, m in enumerate(sur.members)], sur.label)
            else:
                r = b.prepare(sur.net, prec, self.workdir / f"{sur.label}_{backend}")
            if sur.step is None:
                err = check_against_torch(sur.net, r, case.direct_rows()[:4096], prec, backend)
                fused = None
            else:
                Y0, P = case.rollout_inputs(sur.step)
                err = check_against_torch(sur.net, r, np.concatenate([Y0, P], axis=1)[:4096], prec, backend)
                # a fused rollout advances one network: an ensemble (the mean increment each step) rolls out
                # step by step through its runner
                # (a fused kernel keeps its inputs fixed: a paced model's time input rolls out step by step too)
                fused = None if sur.members or sur.step.rollout_clock else b.prepare_rollout(
                    sur.net, Y0.shape[1], prec, self.workdir / f"{sur.label}_{backend}")
                if fused is None and prec != "fp32":
                    raise _Skip("step-by-step rollouts are timed in fp32 only (a fused rollout keeps the state in "
                                "fp32 registers; a step-by-step one would round it every step)")
                if fused is not None:
                    self._check_rollout(sur, fused, r, case, prec, backend)
            self.runners[key] = (r, err, fused)
        return self.runners[key]

    def _check_rollout(self, sur, fused, runner, case, prec, backend):
        from surrogates.itnn import rollout

        plan = case.rollout_plan(sur.step)
        if isinstance(plan, str):
            return
        n_steps, keep_every = plan
        Y0, P = case.rollout_inputs(sur.step)
        Y0, P = Y0[:1024], P[:1024]
        ref = rollout(sur.net, Y0, P, n_steps, keep_every)
        got = np.concatenate([runner.to_host(k) for k in fused(Y0, P, n_steps, keep_every, True)]).reshape(ref.shape)
        span = np.maximum(ref.max(axis=(0, 1)) - ref.min(axis=(0, 1)), 1e-12)
        err = float((np.abs(got - ref) / span).max())
        if not np.isfinite(err) or err > ROLLOUT_TOLERANCE[prec]:
            from inference.backends import BackendMismatchError

            raise BackendMismatchError(f"fused rollout of {backend} ({prec}) differs from the torch rollout by {err:.3g} "
                                       f"of the state range after {n_steps} steps (tolerance {ROLLOUT_TOLERANCE[prec]:g})")

    def point(self, case: Case, sur: Surrogate, backend: str, prec: str, solver: SolverTiming) -> dict:
        base = _base(case, sur, backend, prec, solver)
        if self.s.deadline is not None and time.monotonic() > self.s.deadline:
            return {**base, "skipped": BUDGET_SPENT}
        key = (sur.label, backend, prec)
        if key in self.broken:
            return {**base, "failed": self.broken[key]}
        if key in self.skips:
            return {**base, "skipped": self.skips[key]}
        slow = self.too_slow.get(key)
        if slow is not None and case.n_cells >= slow[0] and case.n_outputs >= slow[1]:
            return {**base, "failed": f"not tried: the smaller point N = {slow[0]}, K = {slow[1]} already took longer "
                                      f"than the time limit of {self.s.backend_time_limit_s:g} s (speed.backend_time_limit_s)"}
        if sur.step is not None:
            plan = case.rollout_plan(sur.step)
            if isinstance(plan, str):
                return {**base, "skipped": plan}
        try:
            with _time_limit(self.s.backend_time_limit_s):
                started = time.perf_counter()
                row = self._measure(case, sur, backend, prec, solver)
                # what this row cost the benchmark: preparation (first use), checks, warm-up and every repeat
                return {**base, **row, "wall_s": time.perf_counter() - started}
        except _Skip as exc:
            self.skips[key] = str(exc)
            return {**base, "skipped": str(exc)}
        except _Timeout:
            self.too_slow[key] = (case.n_cells, case.n_outputs)
            return {**base, "failed": f"{backend} took longer than the time limit of {self.s.backend_time_limit_s:g} s "
                                      "for this point (speed.backend_time_limit_s)"}
        except Exception as exc:  # a failing backend is recorded, never allowed to lose the other rows
            reason = f"{type(exc).__name__}: {exc}".strip()
            print(f"{backend} {prec} {sur.label}: FAILED: {reason}\n{traceback.format_exc(limit=3)}", file=sys.stderr,
                  flush=True)
            self.broken[key] = reason
            return {**base, "failed": reason}

    def _measure(self, case, sur, backend, prec, solver) -> dict:
        r, err, fused = self._runner(sur, backend, prec, case)
        b = REGISTRY[backend]
        gpu = b.device == "cuda"
        clock = "torch" if gpu else "cpu"
        s = self.s
        budget = s.backend_time_limit_s / 10  # repeats adapt to fit (at least 3)

        def timed(fn, clk, warm=None):
            return measure(fn, clk, s.repeats, b.warmup, s.max_repeats, budget_s=budget, warm=warm)

        if sur.step is None:
            # end to end, as the solver's: from the cells' inputs and the kept times on the host to the N x K
            # outputs on the host, the rows built where the network runs; many chunks: warm up on the first
            # and the last (every shape a call meets), not on a whole call
            cells, times = case.cell_inputs()
            per = workloads.cells_per_call(case.n_outputs)
            starts = sorted({0, per * ((case.n_cells - 1) // per)}) if case.n_cells > per else None
            warm_e = (lambda: run_from_cells(r, cells, times, starts)) if starts else None
            e = timed(lambda: run_from_cells(r, cells, times), "cpu", warm_e)
            rows = case.n_cells * case.n_outputs
            if gpu:  # kernel only: the network on rows already on the device
                X = case.direct_rows()
                xd = r.device_input(X)
                c = workloads.CHUNK_ROWS
                ends = sorted({0, c * ((len(X) - 1) // c)}) if len(X) > c else None
                warm_k = (lambda: [r.run(xd[a:a + c]) for a in ends]) if ends else None
                k = timed(lambda: run_chunked(r, xd), clock, warm_k)
            else:  # on a CPU the rows are where the network runs: the kernel time is the end-to-end one
                k = e
        else:
            n_steps, keep_every = case.rollout_plan(sur.step)
            Y0, P = case.rollout_inputs(sur.step)
            roll = fused or (lambda y, p, n, ke, kf: rollout_runner(r, y, p, n, ke, kf, sur.step.rollout_clock))
            if fused is not None:  # inputs placed once, as for the direct kernel-only time
                y_d, p_d = r.device_input(Y0), r.device_input(P)
                k = timed(lambda: roll(y_d, p_d, n_steps, keep_every, case.n_outputs > 1), clock)
            elif gpu:
                k = timed(lambda: roll(Y0, P, n_steps, keep_every, case.n_outputs > 1), clock)
            else:  # a rollout is n_steps equal calls per chunk of cells: one step of each chunk warms up every
                # shape and first-use cost the timed rollouts meet (not a whole 4-35 s rollout on a CPU)
                k = timed(lambda: roll(Y0, P, n_steps, keep_every, case.n_outputs > 1), clock,
                          lambda: rollout_runner(r, Y0, P, 1, 1, False))
            e = timed(lambda: [r.to_host(y) for y in roll(Y0, P, n_steps, keep_every, case.n_outputs > 1)],
                      "cpu") if gpu else k
            rows = case.n_cells * n_steps
        row = {"rows": rows, "surrogate_seconds": e.median, "surrogate_kernel_seconds": k.median,
               "speedup": solver.e2e.median / e.median, "kernel_speedup": solver.kernel.median / k.median,
               "max_rel_diff_vs_torch": err, "rows_per_s": rows / k.median,
               "noisy": bool(k.noisy or e.noisy or solver.kernel.noisy or solver.e2e.noisy),
               **k.as_dict("kernel_"), **e.as_dict("e2e_")}
        print(f"[{case.sweep}] N={case.n_cells:>7d} K={case.n_outputs:>5d} {backend:14s} {prec} {sur.label}: solver "
              f"{solver.e2e.median:.4g} s (kernel {solver.kernel.median:.4g}), surrogate {e.median:.4g} s (kernel "
              f"{k.median:.4g}) -> speedup {row['speedup']:.3g} (kernel {row['kernel_speedup']:.3g})"
              f"{' NOISY' if row['noisy'] else ''} [{k.repeats}+{e.repeats if gpu else 0} repeats]", flush=True)
        return row


class _Skip(Exception):
    pass


def backends_for(names: list, device: str) -> list:
    """The backends of ``names`` that a speed run on ``device`` times (``cuda``: all of them, GPU and CPU;
    ``cpu``: the CPU ones), or an error that names the list when none is left (e.g. a GPU preset on a
    machine without a GPU)."""
    if device not in ("cpu", "cuda"):
        raise InvalidInputError(f"speed device must be cpu or cuda, got {device!r}")
    unknown = [b for b in names if b not in REGISTRY]
    if unknown:
        raise InvalidInputError(f"unknown speed backend(s) {unknown}; valid: {sorted(REGISTRY)}")
    kept = [b for b in names if device == "cuda" or REGISTRY[b].device == "cpu"]
    if not kept:
        raise InvalidInputError(f"speed.backends {list(names)} has no CPU backend, and the speed benchmark runs on "
                                f"the CPU here (no GPU seen, or speed.device: cpu): add torch or onnxruntime, or "
                                f"run it on a GPU machine")
    return kept


def _fastest(rows: list, case: Case, device: str, ensemble: Surrogate) -> tuple[str, str] | None:
    """(backend, precision) that ran one network of the ensemble's kind fastest end to end at this point and
    device (fp32 only for an iterative kind: an ensemble rolls out step by step). An ensemble costs one
    evaluation per member on any backend, so it is timed on the one that serves its kind best."""
    from surrogates.ensemble import SUFFIX

    kind = ensemble.label[:-len(SUFFIX)]
    done = [r for r in rows if r.get("surrogate") == kind and r.get("device") == device
            and r.get("n_cells") == case.n_cells and r.get("n_outputs") == case.n_outputs
            and "surrogate_seconds" in r and not r.get("skipped") and not r.get("failed")
            and (ensemble.step is None or r.get("precision") == "fp32")]
    if not done:
        return None
    best = min(done, key=lambda r: r["surrogate_seconds"])
    return best["backend"], best["precision"]


def _base(case: Case, sur: Surrogate, backend: str, prec: str, solver: SolverTiming) -> dict:
    if sur.step is None:
        workload = f"direct N x K, T={case.t_end:g}"
    else:
        workload = f"iterative rollout N x K, T={case.t_end:g}, step={sur.step.step:g}"
    return {"sweep": case.sweep, "workload": workload, "device": solver.device, "n_cells": case.n_cells,
            "n_outputs": case.n_outputs, "solver_backend": solver.backend, "solver_seconds": solver.e2e.median,
            "solver_kernel_seconds": solver.kernel.median, "solver_noisy": bool(solver.e2e.noisy or solver.kernel.noisy),
            "solver_wall_s": solver.wall_s,
            "surrogate": sur.label, "arch": sur.arch, "backend": backend, "precision": prec, "mae": sur.mae,
            **solver.kernel.as_dict("solver_kernel_"), **solver.e2e.as_dict("solver_e2e_")}


def run(study: Study, models: dict, backends=None, precisions=None, points: list[Case] | None = None,
        settings: Settings | None = None, workdir=None, expect: dict | None = None,
        ensembles: dict | None = None) -> pd.DataFrame:
    """Measure every (point, surrogate, backend, precision); returns the tidy table (one row each, timed,
    ``skipped`` with the reason, or ``failed`` with the reason).

    ``ensembles``: ``kind -> [checkpoint, ...]`` seed ensembles (:func:`load_ensembles`), timed at the first
    point of the N sweep only (the paper's workload: the first N at K = ``speed.n_outputs``), on each device
    with the backend and precision that ran one network of their kind fastest there (:func:`_fastest`): an
    ensemble costs one evaluation per member on any backend. Their rows are labelled ``<kind>_ensemble``."""
    sp = study.speed
    backends = list(backends or sp.backends)
    precisions = list(precisions or sp.precisions)
    budget = sp.time_budget_s
    settings = settings or Settings(sp.repeats, sp.max_repeats, sp.backend_time_limit_s,
                                    time.monotonic() + budget if budget else None)
    points = points if points is not None else cases(study)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="speedup_"))
    info = machine_info()
    surs = load_surrogates(study, models, expect)
    surs.update(load_ensembles(study, ensembles or {}))
    ens_point = next((c for c in points if "N" in c.sweep.split(",")), points[0] if points else None)
    status = {n: REGISTRY[n].unavailable_reason() for n in backends}
    rows = []
    for name in backends:
        if status[name] is not None:
            rows.append({"backend": name, "skipped": status[name]})
            print(f"{name}: skipped ({status[name]})", flush=True)
    live = [b for b in backends if status[b] is None]
    if not live:
        raise InvalidInputError("no speed backend can run on this machine: " + ("; ".join(
            f"{n}: {status[n]}" for n in backends) if backends else "none was given"))
    bench = _Bench(settings, workdir)
    for case in points:
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            rows.append({"n_cells": case.n_cells, "n_outputs": case.n_outputs, "sweep": case.sweep,
                         "skipped": BUDGET_SPENT})
            print(f"N={case.n_cells} K={case.n_outputs}: skipped (time budget spent)", flush=True)
            continue
        for device in sorted({REGISTRY[b].device for b in live}):
            solver = time_solver(case, device, settings)
            for sur in [x for x in surs.values() if not x.members]:
                for b in [b for b in live if REGISTRY[b].device == device]:
                    for prec in [p for p in precisions if p in REGISTRY[b].precisions]:
                        rows.append(bench.point(case, sur, b, prec, solver))
            for sur in [x for x in surs.values() if x.members] if case is ens_point else []:
                best = _fastest(rows, case, device, sur)
                if best is None:
                    rows.append({**_base(case, sur, "", "", solver),
                                 "skipped": "no backend timed a single network of its kind at this point"})
                    continue
                rows.append(bench.point(case, sur, *best, solver))
    df = cli.table_with_machine(rows, info)
    for col in ("skipped", "failed"):
        if col not in df:
            df[col] = None
    if "wall_s" in df and df["wall_s"].notna().any():  # where the benchmark's own time went
        solver = df.dropna(subset=["solver_wall_s"]).drop_duplicates(["n_cells", "n_outputs", "device"])
        spent = df.groupby(["backend", "precision"])["wall_s"].sum().sort_values(ascending=False)
        print(f"time spent measuring: solver {solver['solver_wall_s'].sum():.1f} s; by backend and precision:\n"
              + spent[spent > 0].round(1).to_string(), flush=True)
    return df


def _pairs(option: str, value: str) -> tuple[str, str]:
    kind, sep, path = value.partition("=")
    if not sep or not kind or not path:
        raise InvalidInputError(f"argument {option}: expected KIND=PATH, got {value!r}")
    return kind, path


def resolve_device(name: str) -> str:
    """``speed.device`` on this machine: ``auto`` is ``cuda`` where torch sees a GPU, else ``cpu``; ``cuda``
    where there is none is refused (it would time the CPU backends alone, silently)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("speed.device is cuda, but torch sees no usable GPU on this machine: set speed.device "
                                "to auto or cpu, or run the speed benchmark on a GPU machine")
    return name


def main(argv=None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--model", action="append", default=[],
                    help="KIND=path/to/best_model.pth (default: the configured speed.surrogates of results_dir)")
    ap.add_argument("--ensemble", action="append", default=[],
                    help="KIND=SEED0.pth,SEED1.pth,... a seed ensemble to time at the first N (default: none when --model "
                         "is given, else speed.ensembles of results_dir where the configuration has ensembles)")
    ap.add_argument("--backends", nargs="+", help="default: speed.backends")
    ap.add_argument("--precisions", nargs="+", help="default: speed.precisions")
    ap.add_argument("--n", type=int, nargs="+", help="default: speed.n_cells")
    ap.add_argument("--k", type=int, help="default: speed.n_outputs")
    ap.add_argument("--k-sweep", type=int, nargs="*", help="default: speed.k_sweep (give none to skip the sweep)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: speed.device")
    ap.add_argument("--out", type=Path, help="default: RESULTS/benchmarks/speed_raw.csv")
    a = ap.parse_args(argv)
    return cli.run_main(lambda: _main(a))


def _main(a) -> int:
    # the options narrow the configuration and are checked as the workflow checks it, before any timing
    unknown = [b for b in a.backends or [] if b not in REGISTRY]  # the registry, not the schema: it may hold more
    if unknown:
        raise InvalidInputError(f"argument --backends: unknown speed backend(s) {unknown}; valid: {sorted(REGISTRY)}")
    study = cli.narrow(load_config(*a.config), {
        "--precisions": ("speed.precisions", a.precisions),
        "--n": ("speed.n_cells", a.n), "--k": ("speed.n_outputs", a.k), "--k-sweep": ("speed.k_sweep", a.k_sweep),
        "--device": ("speed.device", a.device)})
    sp = study.speed
    try:
        device = resolve_device(sp.device)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{'argument --device: ' if a.device else ''}{exc}") from None
    backends = backends_for(a.backends or sp.backends, device)
    layout = Layout(study.results_dir)
    models = dict(_pairs("--model", m) for m in a.model) or configured_models(study)
    ensembles = ({k: v.split(",") for k, v in (_pairs("--ensemble", e) for e in a.ensemble)} if a.ensemble
                 else {} if a.model else configured_ensembles(study))
    for label, files in [*((k, [v]) for k, v in models.items()), *ensembles.items()]:
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise InvalidInputError(f"argument --model/--ensemble: {label}: checkpoint {missing[0]} does not exist")
    out = a.out or layout.benchmark("speed_raw.csv")
    df = run(study, models, backends, sp.precisions, cases(study), ensembles=ensembles)
    write_text(out, df.to_csv(index=False))
    print(f"wrote {out}")
    failed = df[df["failed"].notna()]
    if len(failed):
        print(f"{len(failed)} row(s) FAILED:\n" + failed[["backend", "precision", "surrogate", "failed"]]
              .drop_duplicates().to_string(index=False), file=sys.stderr)
        return 1
    return 0


def configured_models(study: Study) -> dict:
    """``kind -> best_model.pth`` of the surrogates the configuration times (largest n, first seed)."""
    layout = Layout(study.results_dir)
    out = {}
    for kind in study.speed.surrogates:
        p = study.speed_problem_of(kind)
        size = max(study.problem(p).sizes)
        out[kind] = layout.run_file("model", p, kind, size, study.training(p).architecture,
                                    study.seeds[0])
        if not out[kind].exists():
            raise InvalidInputError(f"no trained {kind} model at {out[kind]}: run the workflow first, or name one "
                                    f"with --model {kind}=PATH")
    return out


def configured_ensembles(study: Study) -> dict:
    """``kind -> [best_model.pth of each seed]`` of the ensembles the configuration times (``speed.ensembles``)."""
    layout = Layout(study.results_dir)
    out = {}
    for kind, p, n, arch, seeds in study.speed_ensembles():
        out[kind] = [layout.run_file("model", p, kind, n, arch, s) for s in seeds]
        missing = [str(f) for f in out[kind] if not f.exists()]
        if missing:
            raise InvalidInputError(f"the {kind} ensemble lacks trained members {missing}: run the workflow first, or "
                                    f"name them with --ensemble {kind}=PATH,PATH,...")
    return out


if __name__ == "__main__":
    sys.exit(main())
