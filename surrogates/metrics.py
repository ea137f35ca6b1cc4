"""Error metrics, the same everywhere: surrogates, the Euler "solver floor", the tables."""
from __future__ import annotations

import numpy as np


def error_metrics(pred, true, t=None, names=None) -> dict:
    """MAE, maximum absolute error and relative L2 error over all rows and outputs; with the outputs'
    ``names``, also the MAE of each output (``mae_by_output``: outputs in different units mix in one MAE).

    Rows with ``t == 0`` are excluded when ``t`` is given: an initial condition is an input, not a
    prediction. ``pred`` and ``true`` have shape (rows, outputs).
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {true.shape}")
    if t is not None:
        keep = np.asarray(t).reshape(-1) > 0
        pred, true = pred[keep], true[keep]
    if pred.size == 0:
        raise ValueError("no rows left to score")
    err = pred - true
    return {
        "mae": float(np.abs(err).mean()),
        "max_abs_err": float(np.abs(err).max()),
        "rel_l2": float(np.linalg.norm(err) / np.linalg.norm(true)),
        "rows": int(pred.shape[0]),
        **({} if names is None else {"mae_by_output": by_output(np.abs(err).mean(axis=0), names)}),
    }


def by_output(values, names) -> dict:
    """``{name: value}`` for one value per output column, refusing a count that differs from the names'."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} output columns for {len(names)} output names {list(names)}")
    return {str(n): float(v) for n, v in zip(names, values)}

