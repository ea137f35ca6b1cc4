"""The ODE residual's loss and closed-form gradient on a CPU as one compiled loop (Numba), generated from the
cell model's definition.

A residual step's own gradient, between its forward pass with tangents and its backward pass, was torch
operators on the ``n x outputs`` tensors: the right-hand side and its SymPy Jacobian
(:meth:`~solvers.model.CellModel.torch_rhs_jacobian`), the residual, its mean square and the two cotangents.
For a 1,024-point batch of the paper's FitzHugh-Nagumo problem C that is some forty small operators, ~180 us
of a ~1.7 ms residual step on the 2-vCPU VM, for a few thousand floating-point operations. Here one loop over
the rows does all of it: the states from the scaled outputs, the parameters from the points' input columns
(or the problem's fixed values, or the model's defaults), the right-hand side and its Jacobian by the same
generated statements as the torch path (:meth:`~solvers.model.CellModel.jacobian_statements`), the residual
``dy/dt / scale - f / scale`` and

    loss = mean(r^2),  d loss / d zt = 2 r / N,  d loss / d z_k = -scale_k sum_j (2 r_j / (N scale_j)) J_jk

(``N`` = rows x outputs), every row in double precision, the loss summed in double in row order: the same
value on every run, equal to the torch path's to float32 rounding (tests). The loop is also compiled as a C
callback (``tile``) that :class:`~training.cpu_step.CpuResidualStep` calls from inside its one compiled
call, once per tile of rows, between the tile's forward and backward passes. The kernel source is written to
the solvers' kernel cache (``SOLVERS_CACHE_DIR``) and Numba caches its compilation there (a few seconds, once
per machine).

Used where the compiled CPU steps train (:func:`training.cpu_step.residual_steps`, the engine's
``residual_kernel``); on a GPU the torch operators (captured in a CUDA graph) or the Triton residual step,
whose kernel is printed from the same statements and :func:`parameter_sources`.
"""
from __future__ import annotations

import hashlib
import importlib.util

from core.io import import_generated
from solvers.model import NUMBA_WHERE_SOURCE, numba_vtrap_source

_KERNELS: dict = {}


def parameter_sources(problem) -> list[tuple[str, object]]:
    """Per model parameter (model order): ``("column", i)`` where an input column gives it, else ``("value",
    v)``: the problem's fixed value, else the model's default (as :meth:`Problem.parameters` decides)."""
    model = problem.model
    out = []
    for name, par in model.parameters.items():
        if name in problem.inputs:
            out.append(("column", problem.inputs.index(name)))
        else:
            out.append(("value", float(problem.fixed.get(name, par.default))))
    return out


def kernel_source(problem) -> str | None:
    """Python source (for Numba) of the residual's loop for a trajectory problem, or ``None`` where the model
    has no closed-form Jacobian. Two functions:

    - ``rows(z, zt, x, out_center, out_scale, gz, gzt, c, acc) -> acc + sum of r^2`` over the rows given, the
      cotangents scaled by ``c`` (``2 / N`` for a loss over ``N`` = rows x outputs in all, however many
      pieces they come in);
    - ``tile``: ``rows`` as a C callback, ``double tile(int64 m, int64 inputs, double c, double acc, const
      double* z, const double* zt, const double* x, const double* out_center, const double* out_scale,
      double* gz, double* gzt)`` (``m`` rows, row-major, in double precision): what the compiled residual
      step (:class:`~training.cpu_step.CpuResidualStep`) calls on each tile of rows."""
    model = problem.model
    made = model.jacobian_statements()
    if made is None:
        return None
    if model.time_ident is not None:
        return None  # a right-hand side that depends on time: the torch operators do the work
    statements, J = made
    states = [model.ident(s) for s in model.state_names]
    col = [problem.outputs.index(s) for s in model.state_names]  # network output column of each model state
    n_out = len(problem.outputs)
    ind = " " * 8
    lines = [
        f"# generated from model {model.name!r} for problem {problem.name!r} by training.cpu_residual -- do not edit",
        "import math",
        "import numpy as np",
        "from numba import carray, cfunc, njit, types",
        "F = np.float64",
        "xp = math  # the model printer calls xp.exp, xp.log, ...",
        f"OUTPUTS = {n_out}",
        "",
        numba_vtrap_source(derivative=True),
        "",
        *([NUMBA_WHERE_SOURCE, ""] if model.uses_where() else []),
        "@njit(cache=True)",
        "def rows(_z, _zt, _x, _oc, _os, _gz, _gzt, _c, _acc):",
        "    for _i in range(_z.shape[0]):",
    ]
    lines += [f"{ind}{s} = F(_oc[{c}]) + F(_os[{c}]) * F(_z[_i, {c}])" for s, c in zip(states, col)]
    for name, (kind, v) in zip(model.param_names, parameter_sources(problem)):
        name = model.ident(name)
        lines.append(f"{ind}{name} = F(_x[_i, {v}])" if kind == "column" else f"{ind}{name} = F({v!r})")
    lines += [f"{ind}{st}" for st in statements]
    for j, (s, c) in enumerate(zip(states, col)):
        lines.append(f"{ind}_r{j} = F(_zt[_i, {c}]) - d_{s} / F(_os[{c}])")
        lines.append(f"{ind}_acc += _r{j} * _r{j}")
        lines.append(f"{ind}_gzt[_i, {c}] = _c * _r{j}")
        lines.append(f"{ind}_g{j} = _c * _r{j} / F(_os[{c}])")  # cotangent of f_j
    for k, c in enumerate(col):
        terms = " + ".join(f"_g{j} * {J[j][k]}" for j in range(len(states)))
        lines.append(f"{ind}_gz[_i, {c}] = -F(_os[{c}]) * ({terms})")
    lines += [
        "    return _acc",
        "",
        "_P = types.CPointer(types.float64)",
        "@cfunc(types.float64(types.int64, types.int64, types.float64, types.float64, _P, _P, _P, _P, _P, _P, _P),"
        " cache=True)",
        "def tile(_m, _k, _c, _acc, _z, _zt, _x, _oc, _os, _gz, _gzt):",
        "    return rows(carray(_z, (_m, OUTPUTS)), carray(_zt, (_m, OUTPUTS)), carray(_x, (_m, _k)),",
        "                carray(_oc, (OUTPUTS,)), carray(_os, (OUTPUTS,)), carray(_gz, (_m, OUTPUTS)),",
        "                carray(_gzt, (_m, OUTPUTS)), _c, _acc)",
    ]
    return "\n".join(lines) + "\n"


def residual_kernel(problem):
    """The compiled residual for ``problem``'s ODE residual: the module of :func:`kernel_source` (its ``rows``
    and ``tile``), or ``None`` where the model has no closed-form Jacobian or Numba cannot be
    imported (then the torch operators do the work). The module stays loaded (``tile``'s address stays valid)."""
    src = kernel_source(problem)
    if src is None:
        return None
    if src in _KERNELS:
        return _KERNELS[src]
    if importlib.util.find_spec("numba") is None:
        return None
    from solvers.backends.cpu import cache_dir

    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    path = cache_dir() / f"residual_{problem.model.name}_{digest}.py"
    _KERNELS[src] = import_generated(src, path, f"_surrogates_residual_{path.stem}")
    return _KERNELS[src]

