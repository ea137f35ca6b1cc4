"""``simulate``: forward Euler for many independent cells, on any registered backend."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from core.errors import InvalidInputError, NonFiniteStateError
from core.precision import numpy_name, precision
from core.steps import divides, whole_steps

from .backends import get_backend
from .model import DTYPES, CellModel
from .models import get_model


def simulate(
    model: str | CellModel,
    y0,
    t_end: float,
    dt: float = 0.01,
    save_every: int = 1,
    params: Mapping | None = None,
    backend: str = "numpy",
    dtype: str = "float64",
    **backend_options,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate ``model`` with forward Euler from ``y0`` over ``[0, t_end]``.

    Parameters
    ----------
    model : registry name (``"fhn"``, ``"fhn_classic"``, ``"hh"``) or a :class:`CellModel`.
    y0 : array (n_cells, n_states), initial states in the model's state order.
    t_end : final time, in the model's time units; must be a whole number of ``save_every * dt``.
    dt : Euler step.
    save_every : keep the state every ``save_every`` steps (and at t = 0).
    params : parameter name -> scalar or per-cell array of shape (n_cells,); others take their defaults.
    backend : ``"numpy"``, ``"cpu"``, ``"cuda"`` or ``"auto"`` (the fastest that runs here).
    dtype : ``"float32"`` or ``"float64"`` (also spelt ``"fp32"``, ``"fp64"``): the precision of the whole
        integration.
    backend_options : backend-specific tuning (``cpu``: block, threads; ``cuda``: fast_math, block, and
        ``device_output=True`` to get ``Y`` as a CuPy array that stays on the GPU).

    Returns
    -------
    t : (K,) saved times including 0, float64.
    Y : (K, n_cells, n_states) saved states, in ``dtype``.

    Raises ``InvalidInputError`` (a ``ValueError``) naming what is wrong with the input,
    ``BackendUnavailableError`` when the backend cannot run here, and ``NonFiniteStateError`` naming the
    variable, cell and time when a state becomes NaN or infinite.
    """
    m = get_model(model)
    try:
        dtype = numpy_name(precision(dtype, allowed=DTYPES))
    except InvalidInputError:
        raise InvalidInputError(f"unknown dtype {dtype!r}; valid: {list(DTYPES)} (or fp32, fp64)") from None
    be = get_backend(backend)
    unknown_opts = set(backend_options) - set(be.options)
    if unknown_opts:
        raise InvalidInputError(
            f"backend {be.name!r} takes no option(s) {sorted(unknown_opts)}; valid: {list(be.options)}"
        )
    n_saves, save_every = _time_grid(t_end, dt, save_every)
    y0 = _initial_state(m, y0, dtype)
    P = parameter_matrix(m, params, y0.shape[0], dtype)
    Y, first_bad = be.integrate(m, y0, P, float(dt), n_saves, save_every, dtype, **backend_options)
    if first_bad is not None:
        host = Y if isinstance(Y, np.ndarray) else Y.get()  # device_output: locate on a host copy
        raise _locate_nonfinite(m, host, P, first_bad, float(dt), save_every, dtype)
    t = np.arange(n_saves + 1, dtype=np.float64) * (save_every * float(dt))
    return t, Y


def _time_grid(t_end, dt, save_every) -> tuple[int, int]:
    for name, v in (("t_end", t_end), ("dt", dt)):
        if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
    if dt <= 0:
        raise InvalidInputError(f"dt must be > 0, got {dt}")
    if t_end < dt:
        raise InvalidInputError(f"t_end must be at least dt ({dt}), got {t_end}")
    if isinstance(save_every, bool) or not isinstance(save_every, (int, np.integer)) or save_every < 1:
        raise InvalidInputError(f"save_every must be an integer >= 1, got {save_every!r}")
    n_steps = whole_steps(t_end, dt, "t_end")
    if n_steps % save_every:
        raise InvalidInputError(
            f"t_end / dt = {n_steps} steps is not a multiple of save_every ({save_every}); "
            f"choose t_end as a multiple of {save_every * dt:g}"
        )
    return divides(n_steps, int(save_every), "save_every"), int(save_every)


def _initial_state(m: CellModel, y0, dtype) -> np.ndarray:
    y0 = np.asarray(y0)
    if y0.ndim == 2 and y0.shape[0] == 0:
        raise InvalidInputError(f"y0 holds no cell: give at least one initial state of shape ({m.n_states},) "
                                f"(states {list(m.state_names)})")
    if y0.ndim != 2 or y0.shape[1] != m.n_states:
        raise InvalidInputError(
            f"y0 must have shape (n_cells, {m.n_states}) for model {m.name!r} (states {list(m.state_names)}), "
            f"got shape {y0.shape}"
        )
    if not np.issubdtype(y0.dtype, np.number):
        raise InvalidInputError(f"y0 must be numeric, got dtype {y0.dtype}")
    y0 = np.ascontiguousarray(y0, dtype=dtype)
    bad = ~np.isfinite(y0)
    if bad.any():
        cell, j = map(int, np.argwhere(bad)[0])
        raise InvalidInputError(f"y0 is not finite: state {m.state_names[j]!r} of cell {cell} is {y0[cell, j]}")
    return y0


def parameter_matrix(model, params, n_cells: int, dtype="float64") -> np.ndarray:
    """Every parameter of ``model``, one row each in its order, for ``n_cells`` cells: the layout the backends
    take. ``params`` maps names to scalars or per-cell arrays; the others take their defaults."""
    m = get_model(model)
    dtype = numpy_name(dtype)
    values = m._param_values(params)  # defaults filled in; unknown names rejected with the valid ones
    P = np.empty((len(m.param_names), n_cells), dtype=dtype)
    for i, name in enumerate(m.param_names):
        v = np.asarray(values[name], dtype=np.float64)
        if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape[0] != n_cells):
            raise InvalidInputError(
                f"parameter {name!r} must be a scalar or an array of shape ({n_cells},) (one per cell), got shape {v.shape}"
            )
        if not np.isfinite(v).all():
            raise InvalidInputError(f"parameter {name!r} has non-finite values")
        P[i] = v
    return P


def _locate_nonfinite(m: CellModel, Y, P, k: int, dt: float, save_every: int, dtype) -> NonFiniteStateError:
    """Find the cell, variable and Euler step at which the state first left the finite numbers.

    ``Y[k]`` is the first saved row with a non-finite value; the offending cell is re-integrated from
    ``Y[k - 1]`` step by step with the reference NumPy right-hand side to find the exact step.
    """
    row = ~np.isfinite(Y[k])
    cell = int(np.argwhere(row.any(axis=1))[0][0])
    F = np.dtype(dtype).type
    rhs = m._array_rhs(np, F)
    params = {m.ident(n): P[i, cell] for i, n in enumerate(m.param_names)}
    y = [Y[k - 1, cell, j] for j in range(m.n_states)]
    with np.errstate(all="ignore"):
        for step in range(1, save_every + 1):
            if m.time_ident is not None:  # the time at the start of this step, as the backends take it
                params[m.time_ident] = F((k - 1) * save_every + step - 1) * F(dt)
            d = rhs(*y, **params)
            y = [yi + F(dt) * di for yi, di in zip(y, d)]
            bad = [j for j, yi in enumerate(y) if not np.isfinite(yi)]
            if bad:
                j = bad[0]
                return NonFiniteStateError(m.name, m.state_names[j], cell, ((k - 1) * save_every + step) * dt, float(y[j]))
    j = int(np.argwhere(row[cell])[0][0])  # the backend's arithmetic differed from the reference's: report the save
    return NonFiniteStateError(m.name, m.state_names[j], cell, k * save_every * dt, float(Y[k, cell, j]))
