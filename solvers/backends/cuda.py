"""CUDA backend: a CuPy RawKernel generated from the model definition.

One thread per cell, the state in registers, the whole time loop inside the kernel, global memory read
once and written only at saved steps. Single precision uses ``expf``-style functions and ``f`` literals;
``fast_math=True`` adds ``--use_fast_math``. CuPy is imported only when the backend is used, so this
module imports on machines without a GPU; :func:`cuda_source` needs no GPU at all (tests compile it
with ``nvcc``).
"""
from __future__ import annotations

import numpy as np

from ..model import CellModel, _check_dtype, c_vtrap_source
from .base import Backend

THREADS_PER_BLOCK = 128


def kernel_name(model: CellModel, dtype: str) -> str:
    return f"euler_{model.name}_{dtype}"


def cuda_source(model: CellModel, dtype: str) -> str:
    """CUDA C source of the Euler kernel for ``model`` in ``dtype`` (``float32`` or ``float64``).

    Signature: ``(const T* y0 [n_cells, n_states], const T* p [n_params, n_cells], T* out [n_saves + 1,
    n_cells, n_states], long long n_cells, T dt, int n_saves, int save_every, int* bad)``; ``bad[0]`` is
    lowered (atomicMin) to the first saved index at which any state of any cell is non-finite.
    """
    _check_dtype(dtype)
    T = "float" if dtype == "float32" else "double"
    S, P, ns = model.state_names, model.param_names, model.n_states
    out = [f"// generated from model '{model.name}' ({dtype}) by solvers.backends.cuda -- do not edit"]
    if model.uses_vtrap():
        out.append(c_vtrap_source(dtype, qualifier="__device__ __forceinline__"))
    out += [
        f'extern "C" __global__ void {kernel_name(model, dtype)}(',
        f"    const {T}* __restrict__ _y0, const {T}* __restrict__ _p, {T}* __restrict__ _out,",
        f"    const long long _n_cells, const {T} _dt, const int _n_saves, const int _save_every,",
        "    int* __restrict__ _bad)",
        "{",
        "    const long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
        "    if (_i >= _n_cells) return;",
    ]
    out += [f"    {T} {s} = _y0[_i * {ns} + {j}];" for j, s in enumerate(S)]
    out += [f"    const {T} {p} = _p[{j} * _n_cells + _i];" for j, p in enumerate(P)]
    out += [f"    _out[_i * {ns} + {j}] = {s};" for j, s in enumerate(S)]
    out += [
        "    int _first_bad = _n_saves + 1;",
        "    for (int _k = 1; _k <= _n_saves; ++_k) {",
        "        for (int _step = 0; _step < _save_every; ++_step) {",
    ]
    out += [f"            {line}" for line in model.c_statements(dtype)]
    out += [f"            {s} = {s} + _dt * d_{s};" for s in S]
    out += ["        }", f"        const long long _o = ((long long)_k * _n_cells + _i) * {ns};"]
    out += [f"        _out[_o + {j}] = {s};" for j, s in enumerate(S)]
    finite = " && ".join(f"isfinite({s})" for s in S)
    out += [
        f"        if (_first_bad > _n_saves && !({finite})) _first_bad = _k;",
        "    }",
        "    if (_first_bad <= _n_saves) atomicMin(_bad, _first_bad);",
        "}",
        "",
    ]
    return "\n".join(out)


class CudaBackend(Backend):
    """CuPy RawKernel, one thread per cell (NVIDIA GPU and CuPy required)."""

    name = "cuda"
    options = ("fast_math",)
    _modules: dict = {}

    def unavailable_reason(self) -> str | None:
        try:
            import cupy
        except Exception as exc:  # ImportError, or a CUDA library error raised while importing
            return f"cupy is not importable ({type(exc).__name__}: {exc}); install cupy-cuda12x on a machine with an NVIDIA GPU"
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return f"no usable CUDA device ({type(exc).__name__}: {exc})"
        return None if n > 0 else "no CUDA device found"

    def function(self, model: CellModel, dtype: str, fast_math: bool = False):
        """The compiled kernel (cached per model, dtype and fast-math setting)."""
        import cupy as cp

        key = (model.name, dtype, bool(fast_math), cuda_source(model, dtype))
        if key not in self._modules:
            options = ("--std=c++11",) + (("--use_fast_math",) if fast_math else ())
            module = cp.RawModule(code=key[-1], options=options)
            self._modules[key] = module.get_function(kernel_name(model, dtype))
        return self._modules[key]

    def integrate_device(self, model, y0, P, dt, n_saves, save_every, dtype, fast_math=False):
        """As ``integrate``, on device arrays: returns (cupy out, cupy bad[1]) without synchronising."""
        import cupy as cp

        F = np.dtype(dtype).type
        n_cells = y0.shape[0]
        y0_d, P_d = cp.asarray(y0, dtype=dtype), cp.asarray(P, dtype=dtype)
        out = cp.empty((n_saves + 1, n_cells, model.n_states), dtype=dtype)
        bad = cp.full(1, n_saves + 1, dtype=cp.int32)
        grid = (n_cells + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        args = (y0_d, P_d, out, np.int64(n_cells), F(dt), np.int32(n_saves), np.int32(save_every), bad)
        self.function(model, dtype, fast_math)((grid,), (THREADS_PER_BLOCK,), args)
        return out, bad

    def integrate(self, model, y0, P, dt, n_saves, save_every, dtype, fast_math=False):
        out, bad = self.integrate_device(model, y0, P, dt, n_saves, save_every, dtype, fast_math)
        first = int(bad.get()[0])
        return out.get(), (first if first <= n_saves else None)
