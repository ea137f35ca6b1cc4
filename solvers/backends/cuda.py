"""CUDA backend: a CuPy RawKernel generated from the model definition.

One thread per cell, the state in registers, the whole time loop inside the kernel, global memory read
once and written only at saved steps. Single precision uses ``expf``-style functions and ``f`` literals;
``fast_math=True`` adds ``--use_fast_math``.

Host side, at the limit of the machine rather than of Python:

* the kernel source is generated and compiled once per (model, dtype, fast-math) and kept;
* :meth:`CudaBackend.launcher` allocates the device buffers once and returns a function that only launches
  the kernel: what the benchmarks time as "kernel";
* end to end, the saves are integrated in a few chunks of time on one stream while a second stream copies
  each finished chunk into a pinned host buffer, so the transfer of the result (the larger cost: 208 MB at
  N = 1e6, K = 26) overlaps the integration; ``device_output=True`` keeps the result on the GPU (a CuPy
  array) for consumers that work there.

CuPy is imported only when the backend is used, so this module imports on machines without a GPU;
:func:`cuda_source` needs no GPU at all (tests compile it with ``nvcc``).
"""
from __future__ import annotations

import numpy as np

from core.precision import precision

from ..model import CellModel, _check_dtype, c_vtrap_source
from .base import Backend

THREADS_PER_BLOCK = 128
COPY_CHUNKS = 4  # time chunks whose device-to-host copies overlap the integration of the next chunk
_SOURCES: dict = {}


def kernel_name(model: CellModel, dtype: str) -> str:
    return f"euler_{model.name}_{dtype}"


def cuda_source(model: CellModel, dtype: str) -> str:
    """CUDA C source of the Euler kernel for ``model`` in ``dtype`` (``float32`` or ``float64``).

    Signature: ``(const T* y0 [n_cells, n_states], const T* p [n_params, n_cells], T* out [saves, n_cells,
    n_states], long long n_cells, T dt, int k_begin, int k_end, int save_every, int* bad)``: starting from
    ``y0`` (the state at save ``k_begin``), integrate and write saves ``k_begin + 1 .. k_end`` into ``out``
    (indexed from save 0; save 0 itself is written when ``k_begin == 0``). ``bad[0]`` is lowered
    (atomicMin) to the first save at which any state of any cell is non-finite.
    """
    _check_dtype(dtype)
    T = precision(dtype).c
    S, P, ns = [model.ident(s) for s in model.state_names], [model.ident(p) for p in model.param_names], model.n_states
    out = [f"// generated from model '{model.name}' ({dtype}) by solvers.backends.cuda -- do not edit"]
    if model.uses_vtrap():
        out.append(c_vtrap_source(dtype, qualifier="__device__ __forceinline__"))
    out += [
        f'extern "C" __global__ void {kernel_name(model, dtype)}(',
        f"    const {T}* __restrict__ _y0, const {T}* __restrict__ _p, {T}* __restrict__ _out,",
        f"    const long long _n_cells, const {T} _dt, const int _k_begin, const int _k_end, const int _save_every,",
        "    int* __restrict__ _bad)",
        "{",
        "    const long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
        "    if (_i >= _n_cells) return;",
    ]
    out += [f"    {T} {s} = _y0[_i * {ns} + {j}];" for j, s in enumerate(S)]
    out += [f"    const {T} {p} = _p[{j} * _n_cells + _i];" for j, p in enumerate(P)]
    out += ["    if (_k_begin == 0) {"]
    out += [f"        _out[_i * {ns} + {j}] = {s};" for j, s in enumerate(S)]
    out += [
        "    }",
        "    int _first_bad = 0x7fffffff;",
        "    for (int _k = _k_begin + 1; _k <= _k_end; ++_k) {",
        "        for (int _step = 0; _step < _save_every; ++_step) {",
    ]
    if model.time_ident is not None:  # the time at the start of this step
        out.append(f"            const {T} {model.time_ident} = ({T})((long long)(_k - 1) * _save_every + _step) * _dt;")
    out += [f"            {line}" for line in model.c_statements(dtype)]
    out += [f"            {s} = {s} + _dt * d_{s};" for s in S]
    out += ["        }", f"        const long long _o = ((long long)_k * _n_cells + _i) * {ns};"]
    out += [f"        _out[_o + {j}] = {s};" for j, s in enumerate(S)]
    finite = " && ".join(f"isfinite({s})" for s in S)
    out += [
        f"        if (_first_bad == 0x7fffffff && !({finite})) _first_bad = _k;",
        "    }",
        "    if (_first_bad != 0x7fffffff) atomicMin(_bad, _first_bad);",
        "}",
        "",
    ]
    return "\n".join(out)


def cached_source(model: CellModel, dtype: str) -> str:
    """:func:`cuda_source`, generated once per model object and dtype (printing the equations is slow)."""
    key = (id(model), dtype)
    hit = _SOURCES.get(key)
    if hit is None or hit[0] is not model:
        hit = _SOURCES[key] = (model, cuda_source(model, dtype))
    return hit[1]


def time_chunks(n_saves: int, chunks: int = COPY_CHUNKS) -> list[tuple[int, int]]:
    """``(k_begin, k_end)`` pairs cutting saves ``1..n_saves`` into at most ``chunks`` near-equal pieces."""
    chunks = max(1, min(chunks, n_saves))
    edges = np.linspace(0, n_saves, chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class CudaBackend(Backend):
    """CuPy RawKernel, one thread per cell (NVIDIA GPU and CuPy required)."""

    name = "cuda"
    options = ("fast_math", "block", "device_output")
    _functions: dict = {}

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

        src = cached_source(model, dtype)
        key = (model.name, dtype, bool(fast_math), src)
        if key not in self._functions:
            options = ("--std=c++11",) + (("--use_fast_math",) if fast_math else ())
            self._functions[key] = cp.RawModule(code=src, options=options).get_function(kernel_name(model, dtype))
        return self._functions[key]

    def launcher(self, model, y0, P, dt, n_saves, save_every, dtype, fast_math=False, block=None):
        """Device buffers set up once; returns ``launch()`` that runs the whole integration asynchronously on
        the current stream and returns ``(out, bad)`` (CuPy arrays: states and the first non-finite save)."""
        import cupy as cp

        T = np.dtype(dtype).type
        n_cells = y0.shape[0]
        y0_d, P_d = cp.asarray(y0, dtype=dtype), cp.asarray(P, dtype=dtype)
        out = cp.empty((n_saves + 1, n_cells, model.n_states), dtype=dtype)
        bad = cp.empty(1, dtype=cp.int32)
        fn = self.function(model, dtype, fast_math)
        block = int(block or THREADS_PER_BLOCK)
        grid = ((n_cells + block - 1) // block,)
        args = (y0_d, P_d, out, np.int64(n_cells), T(dt), np.int32(0), np.int32(n_saves), np.int32(save_every), bad)
        bad_init = np.array([n_saves + 1], dtype=np.int32)

        def launch():
            bad.set(bad_init)  # a 4-byte host-to-device copy on the current stream
            fn(grid, (block,), args)
            return out, bad

        return launch

    def integrate_device(self, model, y0, P, dt, n_saves, save_every, dtype, fast_math=False, block=None):
        """As ``integrate``, on device arrays: returns (CuPy out, CuPy bad[1]) without synchronising."""
        return self.launcher(model, y0, P, dt, n_saves, save_every, dtype, fast_math, block)()

    def integrate(self, model, y0, P, dt, n_saves, save_every, dtype, fast_math=False, block=None, device_output=False):
        import cupy as cp

        if device_output:
            out, bad = self.integrate_device(model, y0, P, dt, n_saves, save_every, dtype, fast_math, block)
            first = int(bad.get()[0])
            return out, (first if first <= n_saves else None)
        return self._integrate_overlapped(cp, model, y0, P, dt, n_saves, save_every, dtype, fast_math, block)

    def _integrate_overlapped(self, cp, model, y0, P, dt, n_saves, save_every, dtype, fast_math, block):
        """Integrate in time chunks on one stream, copying each finished chunk to pinned host memory on another."""
        import cupyx

        T = np.dtype(dtype).type
        n_cells, ns = y0.shape[0], model.n_states
        fn = self.function(model, dtype, fast_math)
        block = int(block or THREADS_PER_BLOCK)
        grid = ((n_cells + block - 1) // block,)
        compute, copy = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
        host = cupyx.empty_pinned((n_saves + 1, n_cells, ns), dtype=dtype)
        with compute:
            y0_d, P_d = cp.asarray(y0, dtype=dtype), cp.asarray(P, dtype=dtype)
            out = cp.empty((n_saves + 1, n_cells, ns), dtype=dtype)
            bad = cp.full(1, n_saves + 1, dtype=cp.int32)
        state = y0_d
        for k0, k1 in time_chunks(n_saves):
            with compute:
                fn(grid, (block,), (state, P_d, out, np.int64(n_cells), T(dt), np.int32(k0), np.int32(k1),
                                    np.int32(save_every), bad))
            copy.wait_event(compute.record())
            first = 0 if k0 == 0 else k0 + 1
            out[first:k1 + 1].get(stream=copy, out=host[first:k1 + 1], blocking=False)
            state = out[k1]
        copy.synchronize()
        compute.synchronize()
        first_bad = int(bad.get()[0])
        return host, (first_bad if first_bad <= n_saves else None)
