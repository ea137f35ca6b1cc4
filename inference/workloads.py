"""The speed workloads: the same N x K outputs on the solver side and the surrogate side.

Solver side: N cells integrated with forward Euler (the problem's ``dt``) over T, keeping K states per
cell. Surrogate side: a direct network evaluates exactly N x K rows (one per cell and kept time); an
iterative network rolls the N cells out for T / step steps and keeps the same K states. Inputs are drawn
from the problem's input box (initial states and currents), never constants. T, N, K and the problem come
from the configuration's ``speed`` section; nothing here has defaults of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InvalidInputError
from core.steps import keep_every
from surrogates.problems import Problem

CHUNK_ROWS = 1 << 20  # rows per network call: bounded memory for any N x K (100 M rows at K = 5001)


@dataclass(frozen=True)
class Case:
    """One measured point: N cells of ``problem`` over ``t_end`` with K kept states, drawn with ``seed``.

    ``sweep`` says which series the point belongs to (``"N"``: the paper's cell counts at its K; ``"K"``: the
    K sweep at the first N); a point in both is measured once and labelled ``"N,K"``.
    """

    problem: Problem
    n_cells: int
    n_outputs: int
    t_end: float
    sweep: str = "N"
    seed: int = 0
    cells: dict = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.n_cells < 1:
            raise InvalidInputError(f"n_cells must be >= 1, got {self.n_cells}")
        if self.n_outputs < 1:
            raise InvalidInputError(f"n_outputs must be >= 1, got {self.n_outputs}")
        if self.cells is None:
            object.__setattr__(self, "cells", sample_cells(self.problem, self.n_cells, self.seed))

    @property
    def n_steps(self) -> int:
        """Euler steps of the solver over ``t_end``."""
        return self.problem.euler_steps(self.t_end, "speed t_end")

    @property
    def save_every(self) -> int:
        """Euler steps between kept states (the solver keeps t = 0 as well; K = 1 keeps [0, T])."""
        return keep_every(self.n_steps, self.n_outputs, "speed workload")

    @property
    def n_saves(self) -> int:
        return self.n_steps // self.save_every

    def kept_times(self) -> np.ndarray:
        return kept_times(self.t_end, self.n_outputs)

    def direct_rows(self) -> np.ndarray:
        """Inputs of a direct network: (N*K, n_inputs) float32, cell-major."""
        return direct_rows_of(*self.cell_inputs())

    def cell_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """What a direct network's caller holds, as the solver's does: the cells' inputs (N, n_inputs - 1) and
        the K kept times (K, 1), float32; :func:`direct_rows_of` makes the rows of them on any device."""
        p = self.problem
        if p.kind != "trajectory" or p.inputs[0] != "t":
            raise InvalidInputError(f"direct workloads need a trajectory problem with t as first input, not {p.name!r}")
        cells = np.stack([self.cells[name] for name in p.inputs[1:]], axis=1).astype(np.float32)
        return cells, self.kept_times().astype(np.float32)[:, None]

    def solver_inputs(self):
        """Initial states (N, n_states) and per-cell parameters for ``solvers.simulate``."""
        return self.problem.split(self.cells, self.n_cells)

    def rollout_inputs(self, step: Problem):
        """The rollout start of the iterative ``step`` problem for these cells: states and parameter inputs."""
        y0, params = self.solver_inputs()
        return step.rollout_inputs(y0, params, self.n_cells)

    def rollout_plan(self, step: Problem) -> tuple[int, int] | str:
        """``(n_steps, keep_every)`` of the rollout that keeps these K states, or why there is none."""
        n_steps = round(self.t_end / step.step)
        if abs(n_steps * step.step - self.t_end) > 1e-9 * max(1.0, self.t_end):
            return f"T = {self.t_end:g} is not a whole number of steps of {step.step:g}"
        try:
            return n_steps, keep_every(n_steps, self.n_outputs, f"the {n_steps} rollout steps")
        except InvalidInputError as e:
            return str(e)


def kept_times(t_end: float, n_outputs: int) -> np.ndarray:
    """The K kept times: t = 0 and every T/(K-1) after it; K = 1 keeps only the final state."""
    if n_outputs < 1:
        raise InvalidInputError(f"n_outputs must be >= 1, got {n_outputs}")
    return np.array([t_end]) if n_outputs == 1 else np.linspace(0.0, t_end, n_outputs)


def sample_cells(problem: Problem, n_cells: int, seed: int = 0) -> dict:
    """Per-cell sampled inputs (initial states and parameters) drawn uniformly from the problem's box."""
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(*problem.ranges[name], size=n_cells) for name in problem.sampled}


# ---------------------------------------------------------------- running a network over a workload
def run_chunked(runner, xd) -> list:
    """Evaluate all rows in calls of at most CHUNK_ROWS rows (device-side results, one per call)."""
    return [runner.run(xd[i:i + CHUNK_ROWS]) for i in range(0, len(xd), CHUNK_ROWS)]


def direct_rows_of(cells, times):
    """The (N*K, n_inputs) rows [t, cell inputs], cell-major, from (N, n_inputs - 1) cells and (K, 1) times, on
    whatever device the arrays are (NumPy, torch, CuPy): a GPU backend builds its rows where it runs them."""
    n, k = len(cells), len(times)
    if isinstance(cells, np.ndarray):
        return np.concatenate([np.tile(times, (n, 1)), np.repeat(cells, k, axis=0)], axis=1)
    lib = type(cells).__module__.split(".")[0]
    if lib == "torch":
        import torch

        return torch.cat([times.repeat(n, 1), cells.repeat_interleave(k, dim=0)], dim=1)
    if lib == "cupy":
        import cupy

        return cupy.concatenate([cupy.tile(times, (n, 1)), cupy.repeat(cells, k, axis=0)], axis=1)
    raise TypeError(f"cannot build rows from arrays of type {type(cells).__name__}")


def cells_per_call(n_outputs: int) -> int:
    """Cells whose N x K rows fit one network call of at most CHUNK_ROWS rows (at least one cell)."""
    return max(1, CHUNK_ROWS // max(1, int(n_outputs)))


def run_from_cells(runner, cells: np.ndarray, times: np.ndarray, starts=None) -> list:
    """A direct network's whole job, as the solver's: the cells' inputs and the kept times go to the device,
    the N x K rows are built there (:func:`direct_rows_of`) and evaluated in calls of at most CHUNK_ROWS rows,
    and the outputs come back to the host (one array per call, rows cell-major). ``starts``: only the chunks
    of cells beginning at these indices (a warm-up that meets every shape of the full call)."""
    per = cells_per_call(len(times))
    cd, td = runner.device_input(cells), runner.device_input(times)
    starts = range(0, len(cells), per) if starts is None else starts
    return [runner.to_host(runner.run(direct_rows_of(cd[a:a + per], td))) for a in starts]


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


def rollout_runner(runner, y0, params, n_steps: int, keep_every: int, keep_first: bool, clock=None) -> list:
    """Roll an increment network out through an inference runner: y <- y + net([y, params]).
    Cells go in chunks of at most CHUNK_ROWS; returns the kept states (device arrays), chunk by chunk.
    ``clock``: ``(column, step)`` of a time input that advances by ``step`` each step (as in
    ``surrogates.itnn.rollout``; the parameters go to the device again every step)."""
    kept = []
    for i in range(0, len(y0), CHUNK_ROWS):
        y, p = runner.device_input(y0[i:i + CHUNK_ROWS]), runner.device_input(params[i:i + CHUNK_ROWS])
        if clock is not None:
            host = np.array(params[i:i + CHUNK_ROWS], dtype=np.float32)
            t0 = host[:, clock[0]].astype(np.float64)
        if keep_first:
            kept.append(y)
        for step in range(1, n_steps + 1):
            y = y + runner.run(_concat(y, p))
            if clock is not None:
                host[:, clock[0]] = t0 + step * clock[1]
                p = runner.device_input(host)
            if step % keep_every == 0:
                kept.append(y)
    return kept
