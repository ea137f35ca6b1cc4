"""The speed workloads, the same outputs on both sides.

Solver side: N cells integrated with forward Euler (dt = 0.01) over T = 50, keeping K states per cell.
Surrogate side: a direct network evaluates exactly N x K rows (one per cell and kept time); an iterative
network rolls N cells out for T / step steps and keeps the same K states. Inputs are drawn from the
problem's input box (initial states and currents), never constants.
"""
from __future__ import annotations

import numpy as np

from solvers.errors import InvalidInputError
from surrogates.problems import Problem

PAPER_N = (20_000, 40_000, 80_000, 160_000)
K_SWEEP = (1, 2, 6, 26, 101, 501, 2501, 5001)


def kept_times(t_end: float, n_outputs: int) -> np.ndarray:
    """The K kept times: t = 0 and every T/(K-1) after it; K = 1 keeps only the final state."""
    if n_outputs < 1:
        raise InvalidInputError(f"n_outputs must be >= 1, got {n_outputs}")
    return np.array([t_end]) if n_outputs == 1 else np.linspace(0.0, t_end, n_outputs)


def save_every(t_end: float, dt: float, n_outputs: int) -> int:
    """Euler steps between kept states (the solver keeps t = 0 as well; K = 1 keeps [0, T])."""
    n_steps = round(t_end / dt)
    gaps = max(1, n_outputs - 1)
    if n_steps % gaps:
        raise InvalidInputError(f"K = {n_outputs}: {n_steps} Euler steps do not split into {gaps} equal gaps")
    return n_steps // gaps


def cells(problem: Problem, n_cells: int, seed: int = 0) -> dict:
    """Per-cell sampled inputs (initial states and parameters) drawn uniformly from the problem's box."""
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(*problem.ranges[name], size=n_cells) for name in problem.sampled}


def direct_rows(problem: Problem, n_cells: int, n_outputs: int, t_end: float = 50.0, seed: int = 0):
    """Inputs of a direct network for N cells x K kept times: (N*K, n_inputs) float32, cell-major."""
    if problem.kind != "trajectory" or problem.inputs[0] != "t":
        raise InvalidInputError(f"direct workloads need a trajectory problem with t as first input, not {problem.name!r}")
    c = cells(problem, n_cells, seed)
    t = kept_times(t_end, n_outputs)
    cols = [np.tile(t, n_cells)] + [np.repeat(c[name], len(t)) for name in problem.inputs[1:]]
    return np.stack(cols, axis=1).astype(np.float32), c


def solver_inputs(problem: Problem, c: dict):
    """Initial states (N, n_states) and per-cell parameters for ``solvers.simulate`` from sampled cells."""
    m = problem.model
    n = len(next(iter(c.values())))
    y0 = m.initial_state(n)
    for j, s in enumerate(m.state_names):
        key = f"{s}0"
        if key in c:
            y0[:, j] = c[key]
        elif key in problem.fixed:
            y0[:, j] = problem.fixed[key]
    params = {k: v for k, v in {**problem.fixed, **c}.items() if k in m.parameters}
    return y0, params
