"""Datasets for the paper's problems A-D and the Hodgkin-Huxley gating problem ``hh_m``.

Every label is an exact forward-Euler state (``solver.dt``, float64 by default) computed with
``solvers.simulate``. Designs:

* continuous inputs (B, C, D): a scrambled Sobol sequence seeded with ``datasets.seed``; the training set
  of size n is the first n points, so smaller training sets are subsets of larger ones (validation sets
  likewise, from a second sequence seeded ``seed + 1``). ``t`` takes the Sobol coordinate onto the saved
  grid, so each row has its own initial condition and time.
* pools of time points (A, hh_m): the test rows are a share of the time grid drawn with ``test_seed``;
  the remaining points are ordered with ``seed`` (``problems.<p>.pool_order``: a permutation, evenly in time,
  or along the trace's arc length) and training takes the first n (nested too), validation the next ones
  (``arc_length``: a random draw set apart first).
* test sets: whole trajectories from initial conditions drawn with ``test_seed`` (B, C), C's trajectories
  for the iterative problem D, the held-out time points for A and hh_m. One per problem, shared by every
  size and surrogate.

Next to each test set the "solver floor" is written: the error of the Euler labels against a high-accuracy
solution at tolerance ``solver.floor_rtol``: Myokit's CVODES for a model imported from a Myokit or CellML
file where Myokit's simulator runs, else ``solve_ivp`` (DOP853; the record says why where CVODES was wanted).
A surrogate error below it means little.

CLI (what the Snakemake rules call)::

    python -m surrogates.datasets split --problem B --n 1000 --train out/train.npz --val out/val.npz
    python -m surrogates.datasets test --problem B --out results/datasets/B/test.npz
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
from scipy.stats import qmc

import solvers
from core.cli import Parser, run_main
from core.errors import InvalidInputError, NonFiniteStateError
from core.io import save_dataset
from core.provenance import project_version

from .metrics import error_metrics
from .problems import Problem, max_rows, n_test_pool, n_val, pool_size
from .study import Study

# ---------------------------------------------------------------- designs
ARC_SHARE = 0.5  # pool_order arc_length: the share of the rows placed by arc length (the rest evenly in time)


def _sobol(d: int, n: int, seed: int) -> np.ndarray:
    """The first n points of a scrambled Sobol sequence in [0, 1)^d (prefixes nest across n)."""
    with warnings.catch_warnings():  # prefixes of any length are wanted, not only powers of two
        warnings.filterwarnings("ignore", message=".*balance properties.*")
        return qmc.Sobol(d, scramble=True, seed=seed).random(n)


def _scale(u: np.ndarray, names, ranges) -> dict:
    return {n: ranges[n][0] + u[:, i] * (ranges[n][1] - ranges[n][0]) for i, n in enumerate(names)}


def _check_n(p: Problem, n, val_fraction: float) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InvalidInputError(f"training size n must be a positive integer, got {n!r}")
    limit = max_rows(p, val_fraction)
    if n > limit:
        raise InvalidInputError(
            f"problem {p.name!r}: n = {n} is larger than its design allows ({limit} distinct training rows "
            f"besides the test and validation rows)"
        )
    return int(n)


# ---------------------------------------------------------------- simulation helpers
def _simulate(p: Problem, y0, params, t_end, save_interval):
    return solvers.simulate(p.model, y0, t_end, p.dt, p.euler_steps(save_interval, "save interval"), params,
                            backend=p.backend, dtype=p.dtype)


def trace_states(p: Problem):
    """Time grid and states (K, n_states) of the trace problem under its pulse protocol."""
    segments = _protocol_segments(p)
    y = p.model.initial_state(1)
    out = [y.copy()]  # the state at t = 0
    for length, amp in segments:
        _, Y = _simulate(p, y, {"I_stim": amp}, length, p.save_interval)
        out.append(Y[1:, 0])
        y = Y[-1]
    return p.time_grid(), np.concatenate(out)


def _protocol_segments(p: Problem) -> list[tuple[float, float]]:
    """(duration, I_stim) pieces covering [0, t_end]: pulses of ``amplitude`` for ``duration`` every ``period``."""
    pr = p.protocol
    edges = {0.0, p.t_end}
    t = pr["start"]
    while t < p.t_end:
        edges.update({t, min(t + pr["duration"], p.t_end)})
        t += pr["period"]
    edges = sorted(edges)
    segs = []
    for a, b in zip(edges[:-1], edges[1:]):
        mid = 0.5 * (a + b)
        on = mid >= pr["start"] and ((mid - pr["start"]) % pr["period"]) < pr["duration"]
        segs.append((round((b - a) / p.save_interval) * p.save_interval, pr["amplitude"] if on else 0.0))
    return segs


def step_map(p: Problem, y0, params, t0) -> np.ndarray:
    """The states (n, n_states) one step of the step problem ``p`` after ``y0`` (n, n_states), each cell's step
    starting at its time ``t0`` (n,): forward Euler of ``p.dt``, the right-hand side (its stimulus) at
    ``t0 + i dt`` for the i-th Euler step, in ``p.dtype``. The labels of a step problem on a paced model."""
    m, F = p.model, np.dtype(p.dtype).type
    y, t0 = np.array(y0, dtype=p.dtype), np.asarray(t0, dtype=np.float64)
    for i in range(p.euler_steps(p.step, "step")):
        y = y + F(p.dt) * m.numpy_rhs(y, params, t=t0 + i * p.dt)
    bad = ~np.isfinite(y)
    if bad.any():
        cell, j = map(int, np.argwhere(bad)[0])
        raise NonFiniteStateError(m.name, m.state_names[j], cell, float(np.broadcast_to(t0, (len(y),))[cell] + p.step),
                                  float(y[cell, j]))
    return y


# ---------------------------------------------------------------- pools (A, hh_m)
def _pool(p: Problem):
    """All labelled rows of a pool problem: X (K, inputs), Y (K, outputs)."""
    m = p.model
    if p.kind == "trace":
        t, S = trace_states(p)
    else:
        y0, params = p.split({})
        t, Y = _simulate(p, y0, params, p.t_end, p.save_interval)
        S = Y[:, 0]
    cols = {"t": t, **{s: S[:, j] for j, s in enumerate(m.state_names)}}
    X = np.stack([cols[n] for n in p.inputs], axis=1)
    Y = np.stack([cols[o] for o in p.outputs], axis=1)
    return X, Y


def _test_rows(p: Problem, test_seed: int):
    """A pool problem's held-out test rows (sorted) and the others (sorted): the split ``test_seed`` draws."""
    K = pool_size(p)
    test = np.sort(np.random.default_rng(test_seed).permutation(K)[: n_test_pool(p)])
    return test, np.setdiff1d(np.arange(K), test)


def _pool_indices(p: Problem, test_seed: int, seed: int, pool=None, val_fraction: float = 0.1):
    """A pool problem's held-out test rows (sorted), the order in which training takes the others, and the
    order in which validation takes its rows (None: the training order's rows after the training rows), by
    ``problems.<p>.pool_order``:

    * ``permutation``: a seeded permutation;
    * ``space_filling``: the order of a scrambled one-dimensional Sobol sequence over the remaining time points, so
      that any prefix is spread evenly over the time axis (the largest gap between training rows stays near the
      mean gap; a permutation's prefix leaves gaps several times wider);
    * ``arc_length``: validation rows first set apart, a seeded random draw as large as the largest training size
      needs (so they stand for the trace as the test rows do, and nest across sizes), then the others in
      :func:`arc_length_order` (dense where the trace moves fast; it reads the pool's rows ``pool``, the pair
      :func:`_pool` returns, computed here if not given). Taken after the training rows, as the other orders'
      validation rows are, they would be the rows the order reaches last: where the trace rests.
    """
    test, rest = _test_rows(p, test_seed)
    if p.pool_order == "space_filling":
        return test, rest[space_filling_order(rest.size, seed)], None
    if p.pool_order == "arc_length":
        X, Y = _pool(p) if pool is None else pool
        drawn = rest[np.random.default_rng(seed).permutation(rest.size)]
        held = max_rows(p, val_fraction)  # rows the largest training set may take; the others validate
        train = np.sort(drawn[:held])
        return test, train[arc_length_order(X[train], Y[train], seed)], drawn[held:]
    return test, rest[np.random.default_rng(seed).permutation(rest.size)], None


def space_filling_order(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` whose prefixes are spread evenly: the indices hit in turn by a scrambled
    Sobol sequence in [0, 1) (each index once, at its first hit); those it never hits follow in a seeded
    permutation. Prefixes nest, as the other designs' do."""
    u = _sobol(1, 1 << max(1, int(np.ceil(np.log2(n)))), seed)[:, 0]
    return _first_hits(np.minimum((u * n).astype(np.int64), n - 1), n, seed)


def _first_hits(hits: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)``: the indices in the order ``hits`` first reaches them, then those it never
    reaches in a seeded permutation."""
    _, first = np.unique(hits, return_index=True)
    order = hits[np.sort(first)]
    missed = np.setdiff1d(np.arange(n), order)
    return np.concatenate([order, missed[np.random.default_rng(seed).permutation(missed.size)]])


def arc_length_order(X: np.ndarray, Y: np.ndarray, seed: int, share: float = ARC_SHARE) -> np.ndarray:
    """A permutation of the rows of a trace (``X`` its inputs, time first and increasing; ``Y`` its labels) whose
    prefixes are spread evenly over a mixture of time and the trace's arc length: a scrambled Sobol sequence in
    [0, 1) is mapped through ``(1 - share) * time + share * arc`` (each normalised to [0, 1]; the arc measured
    over the other inputs and the labels, each scaled by its span) and each row is taken at its first hit; rows it
    never hits follow in a seeded permutation. Where the trace moves fast (an upstroke) the rows are dense; where it
    rests they are spread evenly in time. Prefixes nest."""
    t = X[:, 0]
    Z = np.concatenate([X[:, 1:], Y], axis=1)
    span = np.ptp(Z, axis=0)
    Z = Z / np.where(span > 0, span, 1.0)
    d_arc = np.sqrt((np.diff(Z, axis=0) ** 2).sum(axis=1))
    d_time = np.diff(t)
    s = np.zeros(len(t))
    s[1:] = (1 - share) * np.cumsum(d_time) / max(d_time.sum(), 1e-300) + share * np.cumsum(d_arc) / max(d_arc.sum(), 1e-300)
    n = len(t)
    u = _sobol(1, 1 << max(1, int(np.ceil(np.log2(8 * n)))), seed)[:, 0] * s[-1]
    right = np.clip(np.searchsorted(s, u), 1, n - 1)
    return _first_hits(np.where(u - s[right - 1] <= s[right] - u, right - 1, right), n, seed)


# ---------------------------------------------------------------- public functions
def pool_training_points(p: Problem, test_seed: int) -> np.ndarray:
    """Indices of a pool problem's rows (time points) outside its held-out test split, in time order: where
    a physics term may look without seeing the test rows."""
    if not p.uses_pool:
        raise InvalidInputError(f"problem {p.name} has no pool of rows (kind {p.kind!r})")
    return _test_rows(p, test_seed)[1]


def make_split(p: Problem, n: int, seed: int, test_seed: int, val_fraction: float = 0.1):
    """Training (n rows) and validation sets of problem ``p``; returns two dicts of arrays."""
    n = _check_n(p, n, val_fraction)
    nv = n_val(n, val_fraction)
    names = dict(input_names=np.array(p.inputs), output_names=np.array(p.outputs))
    if p.uses_pool:
        X, Y = _pool(p)
        _, order, val_order = _pool_indices(p, test_seed, seed, (X, Y), val_fraction)
        tr = np.sort(order[:n])
        va = np.sort(order[n:n + nv] if val_order is None else val_order[:nv])
        return dict(X=X[tr], Y=Y[tr], **names), dict(X=X[va], Y=Y[va], **names)
    return (dict(**_sobol_rows(p, n, seed), **names), dict(**_sobol_rows(p, nv, seed + 1), **names))


def _sobol_rows(p: Problem, n: int, seed: int) -> dict:
    m = p.model
    if p.kind == "step":
        vals = _scale(_sobol(len(p.inputs), n, seed), p.inputs, p.ranges)
        y0, params = p.split(vals, n)
        Y = _simulate(p, y0, params, p.step, p.step)[1][-1] if p.rollout_clock is None else step_map(p, y0, params, vals["t"])
        X = np.stack([vals[i] for i in p.inputs], axis=1)
        out = np.stack([Y[:, m.state_names.index(o)] for o in p.outputs], axis=1)
        return dict(X=X, Y=out)
    grid = p.time_grid()
    u = _sobol(1 + len(p.sampled), n, seed)
    k = np.minimum((u[:, 0] * len(grid)).astype(np.int64), len(grid) - 1)
    vals = _scale(u[:, 1:], p.sampled, p.ranges)
    y0, params = p.split(vals, n)
    # integrate only as far as the latest time asked for
    t_last = grid[k.max()] if k.max() > 0 else p.save_interval
    _, Y = _simulate(p, y0, params, t_last, p.save_interval)
    rows = np.arange(n)
    X = np.stack([grid[k] if name == "t" else vals[name] for name in p.inputs], axis=1)
    out = np.stack([Y[k, rows, m.state_names.index(o)] for o in p.outputs], axis=1)
    return dict(X=X, Y=out)


def make_test(p: Problem, test_seed: int, seed: int, problems: dict | None = None, rtol: float = 1e-10):
    """The fixed held-out test set of ``p`` (dict of arrays), and the Euler solver floor (dict): the
    error of the Euler labels against the high-accuracy solution at tolerance ``rtol`` (which one: its
    ``reference``, see :func:`floor_reference`)."""
    if p.kind == "step":
        if problems is None or p.test_from not in problems:
            raise InvalidInputError(f"problem {p.name!r} takes its test set from {p.test_from!r}; pass it in `problems`")
        return make_test(problems[p.test_from], test_seed, seed, rtol=rtol)
    names = dict(input_names=np.array(p.inputs), output_names=np.array(p.outputs))
    if p.uses_pool:
        X, Y = _pool(p)
        test, _ = _test_rows(p, test_seed)
        ref = _reference_pool(p, rtol)
        floor = error_metrics(Y[test], ref[test], X[test, 0], p.outputs)
        return dict(X=X[test], Y=Y[test], **names), {**floor, "reference": floor_reference(p, rtol)}
    m = p.model
    n_traj = p.test_trajectories
    grid = p.time_grid()
    vals = _scale(_sobol(len(p.sampled), n_traj, test_seed), p.sampled, p.ranges)
    y0, params = p.split(vals, n_traj)
    _, Y = _simulate(p, y0, params, p.t_end, p.save_interval)  # (K, n_traj, n_states)
    K = len(grid)
    traj = np.repeat(np.arange(n_traj), K)
    tt = np.tile(grid, n_traj)
    X = np.stack([tt if name == "t" else np.repeat(vals[name], K) for name in p.inputs], axis=1)
    idx = [m.state_names.index(o) for o in p.outputs]
    Yo = Y[:, :, idx].transpose(1, 0, 2).reshape(-1, len(idx))
    ref = _reference_trajectories(p, y0, params, grid, rtol)[:, :, idx].transpose(1, 0, 2).reshape(-1, len(idx))
    floor = error_metrics(Yo, ref, tt, p.outputs)
    return dict(X=X, Y=Yo, trajectory=traj, **names), {**floor, "reference": floor_reference(p, rtol)}


# ---------------------------------------------------------------- high-accuracy reference (solver floor)
def _cvodes_unavailable(p: Problem) -> str | None:
    """Why the floor of ``p`` is not taken against Myokit's CVODES: ``""`` for a model not imported by Myokit
    (nothing to say), the reason where it was but Myokit's simulator cannot run here, ``None`` where it can."""
    from solvers.myokit_import import SUFFIXES, simulator_unavailable

    ref = p.model.reference
    if not ref.lower().endswith(SUFFIXES):
        return ""
    return simulator_unavailable() or (None if Path(ref).is_file() else f"its model file {ref!r} is not there")


def floor_reference(p: Problem, rtol: float) -> str:
    """The high-accuracy solution the Euler floor of ``p`` is measured against, as its record names it."""
    why = _cvodes_unavailable(p)
    if why is None:
        return f"myokit CVODES rtol={rtol:g} atol={rtol:g}"
    dop = f"solve_ivp DOP853 rtol={rtol:g}"
    return f"{dop} (Myokit's CVODES unavailable: {why})" if why else dop


def _reference_trajectories(p: Problem, y0, params, grid, rtol: float) -> np.ndarray:
    """The high-accuracy solution of all trajectories at once: (K, n, n_states); Myokit's CVODES where
    :func:`floor_reference` says so, else solve_ivp (DOP853)."""
    m = p.model
    if _cvodes_unavailable(p) is None:
        from solvers.myokit_import import cvodes_trajectories

        return cvodes_trajectories(m, y0, params, grid, rtol)
    n, ns = y0.shape
    pv = {k: (np.asarray(v) if np.ndim(v) else v) for k, v in params.items()}

    timed = m.time_ident is not None  # a paced model's stimulus depends on time

    def f(t, y):
        return m.numpy_rhs(y.reshape(n, ns), pv, **({"t": t} if timed else {})).reshape(-1)

    sol = solve_ivp(f, (0.0, grid[-1]), y0.reshape(-1), method="DOP853", t_eval=grid, rtol=rtol, atol=rtol * 1e-2)
    if not sol.success:
        raise RuntimeError(f"reference solve_ivp failed for problem {p.name!r}: {sol.message}")
    return sol.y.T.reshape(len(grid), n, ns)


def _reference_pool(p: Problem, rtol: float) -> np.ndarray:
    """High-accuracy solution at every pool row, in the problem's output columns: (K, outputs)."""
    m = p.model
    grid = p.time_grid()
    if p.kind == "trace":
        pieces, y = [m.initial_state(1)], m.initial_state(1)
        for length, amp in _protocol_segments(p):
            k = round(length / p.save_interval)
            local = np.arange(k + 1) * p.save_interval
            S = _reference_trajectories(p, y, {"I_stim": amp}, local, rtol)
            pieces.append(S[1:, 0])
            y = S[-1]
        S = np.concatenate(pieces)
    else:
        y0, params = p.split({})
        S = _reference_trajectories(p, y0, params, grid, rtol)[:, 0]
    cols = {"t": grid, **{s: S[:, j] for j, s in enumerate(m.state_names)}}
    return np.stack([cols[o] for o in p.outputs], axis=1)


# ---------------------------------------------------------------- files
def provenance(p: Problem, study: Study, part: str, n: int | None = None) -> dict:
    """What a dataset file is: the problem (name and fingerprint), the part, its size and the design's seeds.
    Training checks it against what it is asked to train on before any work is done."""
    d = study.datasets
    out = {"problem": p.name, "problem_fingerprint": p.fingerprint, "part": part, "test_seed": d.test_seed}
    if part != "test":
        out.update({"n": int(n), "seed": d.seed, "val_fraction": d.val_fraction})
    elif p.kind == "step":  # judged on another problem's trajectories: that problem's definition counts too
        out.update({"test_from": p.test_from, "test_from_fingerprint": study.problem(p.test_from).fingerprint})
    return out


POOL_DESIGNS = {  # the sidecar's words for each pool_order
    "permutation": "permutation of the time grid",
    "space_filling": "space-filling order (scrambled Sobol) of the time grid",
    "arc_length": f"scrambled Sobol order over {1 - ARC_SHARE:g} time and {ARC_SHARE:g} the trace's arc length",
}


def _meta(p: Problem, study: Study, part: str, n: int | None = None, **extra) -> dict:
    return {
        "provenance": provenance(p, study, part, n),
        "problem": p.describe(),
        "part": part,
        "model": p.model.name,
        "parameters": p.used_parameters(),
        "dt": p.dt,
        "save_interval": p.save_interval,
        "solver": {"method": "forward Euler", "backend": p.backend, "dtype": p.dtype},
        "design": POOL_DESIGNS[p.pool_order] if p.uses_pool else "scrambled Sobol (scipy.stats.qmc)",
        "seed": study.datasets.seed,
        "test_seed": study.datasets.test_seed,
        "version": project_version(),
        **extra,
    }


def write_split(study: Study, problem: str, n: int, train_path, val_path) -> None:
    """Generate and write the training and validation sets of ``problem`` at size ``n``."""
    p = study.problem(problem)
    d = study.datasets
    train, val = make_split(p, n, d.seed, d.test_seed, d.val_fraction)
    save_dataset(train_path, train, _meta(p, study, "train", n))
    save_dataset(val_path, val, _meta(p, study, "val", n, val_fraction=d.val_fraction))


def write_test(study: Study, problem: str, out_path) -> None:
    """Generate and write the test set of ``problem`` with its solver floor in the sidecar."""
    p = study.problem(problem)
    d = study.datasets
    rtol = float(study.solver.floor_rtol)
    test, floor = make_test(p, d.test_seed, d.seed, study.rollout_sources(p), rtol)
    extra = {"euler_floor": floor}
    if p.kind == "step":
        extra["test_from"] = p.test_from
    save_dataset(out_path, test, _meta(p, study, "test", **extra))


def expected_provenance(p: Problem, study: Study, part: str, n: int | None = None) -> dict:
    """What a consumer requires of a dataset it reads: everything :func:`provenance` records but the
    validation share (whose effect the row count and checksums already pin)."""
    return {k: v for k, v in provenance(p, study, part, n).items() if k != "val_fraction"}


def main(argv=None) -> int:
    ap = Parser(prog="python -m surrogates.datasets", description=__doc__)
    ap.add_argument("--config", type=Path, default=None, help="YAML config (default config/config.yaml)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="training and validation sets")
    s.add_argument("--problem", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--train", type=Path, required=True)
    s.add_argument("--val", type=Path, required=True)
    t = sub.add_parser("test", help="the held-out test set and its solver floor")
    t.add_argument("--problem", required=True)
    t.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from .config import load_config

    def body():
        study = load_config(a.config)
        if a.cmd == "split":
            write_split(study, a.problem, a.n, a.train, a.val)
            print(f"wrote {a.train} and {a.val}")
        else:
            write_test(study, a.problem, a.out)
            print(f"wrote {a.out}")

    return run_main(body)  # a project error or the OS's (a full disk): one line, exit status 2


if __name__ == "__main__":
    sys.exit(main())
