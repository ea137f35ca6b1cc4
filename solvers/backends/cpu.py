"""Compiled, multi-threaded CPU backend: a Numba kernel generated from the model definition.

Layout of the work: cells are cut into tiles of ``block`` cells that stay in L1/L2 cache; threads take
tiles (``prange``); inside a tile the time loop is outside and the loop over cells inside, so the
compiler vectorises the right-hand side across cells (SIMD). Global memory (the output) is written
only at saved steps. This is the loop order that reaches tens of G cell-steps/s on two cores, against
about 0.5 G for a per-cell time loop (see shared/REFERENCE.md).

The kernel source is written to a cache folder and imported from there, so Numba's on-disk cache
spares later processes the compilation.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from core.io import import_generated

from ..model import NUMBA_WHERE_SOURCE, CellModel, numba_vtrap_source
from .base import Backend

_DEFAULT_BLOCK = {"float32": 512, "float64": 256}
_KERNELS: dict = {}


def cache_dir() -> Path:
    """Where generated kernels live (``SOLVERS_CACHE_DIR``, else ``~/.cache/ephys-surrogates``)."""
    root = os.environ.get("SOLVERS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ephys-surrogates")
    return Path(root) / "numba"


def kernel_source(model: CellModel, dtype: str, contract: bool | None = None) -> str:
    """Python source of the tiled Euler kernel for ``model`` in ``dtype`` (compiled by Numba).

    ``contract`` lets LLVM fuse multiply-adds (FMA), about 15% faster; it changes rounding only, never
    NaN/Inf handling. Default: on for float32, off for float64 (which then matches the NumPy reference bit
    for bit).
    """
    if contract is None:
        contract = dtype == "float32"
    fastmath = "fastmath={'contract'}, " if contract else ""
    S, P = [model.ident(s) for s in model.state_names], [model.ident(p) for p in model.param_names]
    ind = " " * 20
    lines = [
        f"# generated from model {model.name!r} ({dtype}) by solvers.backends.cpu -- do not edit",
        "import math",
        "import numpy as np",
        "from numba import njit, prange",
        f"F = np.{dtype}",
        "xp = math  # the model printer calls xp.exp, xp.log, ...",
        "",
        numba_vtrap_source(),
        "",
        *([NUMBA_WHERE_SOURCE, ""] if model.uses_where() else []),
        f"@njit({fastmath}parallel=True, cache=True)",
        "def kernel(_y0, _p, _out, _dt, _n_saves, _save_every, _block, _bad):",
        "    _n_cells = _y0.shape[0]",
        "    _n_blocks = (_n_cells + _block - 1) // _block",
        "    for _b in prange(_n_blocks):",
        "        _c0 = _b * _block",
        "        _m = min(_block, _n_cells - _c0)",
    ]
    for i, s in enumerate(S):
        lines.append(f"        _s_{s} = np.empty(_m, dtype=F)")
    for i, p in enumerate(P):
        lines.append(f"        _p_{p} = _p[{i}, _c0:_c0 + _m]")
    lines.append("        for _j in range(_m):")
    for i, s in enumerate(S):
        lines.append(f"            _s_{s}[_j] = _y0[_c0 + _j, {i}]")
        lines.append(f"            _out[0, _c0 + _j, {i}] = _y0[_c0 + _j, {i}]")
    lines += [
        "        _first_bad = _n_saves + 1",
        "        for _k in range(1, _n_saves + 1):",
        "            for _step in range(_save_every):",
        "                for _j in range(_m):",
    ]
    lines += [f"{ind}{s} = _s_{s}[_j]" for s in S]
    lines += [f"{ind}{p} = _p_{p}[_j]" for p in P]
    if model.time_ident is not None:  # the time at the start of this step
        lines.append(f"{ind}{model.time_ident} = F((_k - 1) * _save_every + _step) * _dt")
    lines += [f"{ind}{st}" for st in model.python_statements()]
    lines += [f"{ind}_s_{s}[_j] = {s} + _dt * d_{s}" for s in S]
    lines.append("            for _j in range(_m):")
    for i, s in enumerate(S):
        lines.append(f"                _out[_k, _c0 + _j, {i}] = _s_{s}[_j]")
    finite = " and ".join(f"math.isfinite(_s_{s}[_j])" for s in S)
    lines += [
        f"                if not ({finite}):",
        "                    _first_bad = min(_first_bad, _k)",
        "        _bad[_b] = _first_bad",
        "",
    ]
    return "\n".join(lines)


def _load_kernel(model: CellModel, dtype: str, contract: bool | None = None):
    src = kernel_source(model, dtype, contract)
    key = (model.name, dtype, src)
    if key in _KERNELS:
        return _KERNELS[key]
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    path = cache_dir() / f"euler_{model.name}_{dtype}_{digest}.py"
    # written to a temporary name, then renamed: concurrent processes never see half a file
    module = import_generated(src, path, f"_solvers_generated_{path.stem}")
    _KERNELS[key] = module.kernel
    return module.kernel


class CpuBackend(Backend):
    """Numba-compiled, multi-threaded, cache-tiled and SIMD-vectorised over cells."""

    name = "cpu"
    options = ("block", "threads", "contract")

    def unavailable_reason(self) -> str | None:
        try:
            import numba  # noqa: F401
        except ImportError as exc:  # pragma: no cover - numba is a core dependency
            return f"numba is not importable ({exc}); pip install numba"
        return None

    def integrate(self, model, y0, P, dt, n_saves, save_every, dtype, block=None, threads=None, contract=None):
        import numba

        kernel = _load_kernel(model, dtype, contract)
        block = int(block or _DEFAULT_BLOCK[dtype])
        n_cells = y0.shape[0]
        out = np.empty((n_saves + 1, n_cells, model.n_states), dtype=dtype)
        bad = np.empty((n_cells + block - 1) // block, dtype=np.int64)
        old = numba.get_num_threads()
        if threads:
            numba.set_num_threads(int(threads))
        try:
            kernel(y0, P, out, np.dtype(dtype).type(dt), n_saves, save_every, block, bad)
        finally:
            numba.set_num_threads(old)
        first = int(bad.min())
        return out, (first if first <= n_saves else None)
