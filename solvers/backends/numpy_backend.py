"""The readable reference backend: NumPy, vectorised over cells."""
from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    """Vectorised over cells with NumPy; new temporaries every step. Slow but plain."""

    name = "numpy"

    def integrate(self, model, y0, P, dt, n_saves, save_every, dtype):
        F = np.dtype(dtype).type
        rhs = model._array_rhs(np, F)
        params = {model.ident(n): row for n, row in zip(model.param_names, P)}
        time = model.time_ident  # a model paced by a stimulus protocol depends on time: t = step * dt
        dt = F(dt)
        out = np.empty((n_saves + 1, *y0.shape), dtype=dtype)
        out[0] = y0
        y = [y0[:, i].copy() for i in range(model.n_states)]
        with np.errstate(all="ignore"):  # non-finite states are detected below and reported by the caller
            for k in range(1, n_saves + 1):
                for step in range(save_every):
                    if time is not None:
                        params[time] = F((k - 1) * save_every + step) * dt
                    d = rhs(*y, **params)
                    y = [yi + dt * di for yi, di in zip(y, d)]
                for i, yi in enumerate(y):
                    out[k, :, i] = yi
                if not np.isfinite(out[k]).all():
                    return out, k
        return out, None
