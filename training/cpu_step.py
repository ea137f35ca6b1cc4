"""The fused engine's data and residual steps on a CPU as compiled calls (``cpu_step.cpp``, built on first use).

On a CPU the fused engine's data step (:meth:`~training.engine.MLPEngine.data_step`) is some forty torch
operators for the paper's 3x64 network: eleven matrix products, the activations and their derivatives, the
bias gradients, each a separate pass over the batch with its own call overhead. Here one C++ call does the
same arithmetic: rows in tiles of :data:`TILE` (a tile's activations stay in the core's cache), every wide
product by a register-blocked loop of the source's own on an AVX-512 machine (else by the BLAS that torch
links, ``sgemm_``; below), a thin one (a layer of a few inputs or outputs) by a plain loop, the bias, activation and derivative in the pass that reads the product, the bias gradient in the pass
that forms the layer below's cotangent; the loss is summed in double precision. Every sum has a fixed order:
a resumed run equals an uninterrupted one, as on the other paths. Exponentials go through a vectorised
polynomial (within 2 ulp of ``expf``), so results equal the engine's to float32 rounding, not bit for bit
(tests: loss and gradients to 1e-5 relative, every activation, ragged tiles, a term added to another).
The ODE residual's step is one call too, :class:`CpuResidualStep`: per tile of :data:`RESIDUAL_TILE` rows the
inputs scaled, the forward pass with tangents, the residual's loss and closed-form gradient by a C callback
generated from the cell model (:mod:`~training.cpu_residual`, compiled by Numba), and the backward pass, so
that a tile's arrays stay in the core's cache throughout. A residual whose gradient is torch operators on the
small output tensors (hh_m's gate residual, a model without a printable Jacobian) takes two calls,
:class:`CpuTangentStep` (:meth:`~training.engine.MLPEngine.tangent_step_closed`): the forward pass with
tangents, then, after the residual's gradient, the backward pass; over more than 2,048 rows (hh_m's 8,001
trace points) in tiles of 256 rows.

Both steps run in float32 (the training steps) and in float64 (a float64 L-BFGS polish, ``lbfgs_dtype``: the
loss comes back in float64, every product and activation in double; results equal the engine's torch
operators in float64 to ~1e-14). On an AVX-512 machine the products are the source's own register-blocked
loop (6 rows by 4 registers of sums, the weights read in place, no packing copies) rather than the BLAS's
``sgemm_``/``dgemm_``: on the 2-vCPU AMD EPYC (Zen 4) of CHANGELOG.md (2026-11-28), torch's MKL reached 84-93
GFLOP/s on these shapes (64 inputs and outputs, 256 to 2,048 rows) in float32, packing included, and 18-30 in
float64; the own loop 105-111 and 28-50 (the core's float32 peak at its boost clock is ~115). Without AVX-512
the BLAS does them (that build was checked once, not in CI).

The source is compiled with the machine's own instruction set (``-march=native``) by
:func:`torch.utils.cpp_extension.load` (a C++ compiler and ``ninja``; about 30 s, once per source and
machine: the build is cached under ``TORCH_EXTENSIONS_DIR``, or ``~/.cache/torch_extensions``, in a folder
named by a hash of the source, the flags, torch's version and the CPU's instruction set, so nodes of a cluster
with different CPUs never share a build). The source is compiled from a copy in that folder, not from the
checkout: two checkouts (or many jobs) with the same source share one build without rebuilding it in turn
(torch's builder would otherwise see another source path, i.e. another command, and rebuild), and two versions
of the source build in two folders, each under its own lock. The first build says so, with its time. Where it
cannot be built, :func:`unavailable_reason` says why and the Trainer's ``engine="auto"`` keeps the torch
operators.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from core.errors import InvalidInputError, PipelineError
from core.io import write_bytes

from surrogates.activations import TABLE

SOURCE = Path(__file__).with_name("cpu_step.cpp")
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
TILE = 256  # rows a tile: measured 2026-11-28 on the 2-vCPU VM, 3x64 net, batch 1024 (64-1024: within noise, 256 best)
RESIDUAL_TILE = 128  # rows a tile of the one-call residual step (CpuResidualStep): 64 to 1,024 measured, 128 best (CHANGELOG.md)
# the activation codes of cpu_step.cpp (enum Act), from the activation table (tests/test_activations.py checks the enum)
CODES = {None: 0, "identity": 0, **{a.name: a.code for a in TABLE.values()}}

_lock = threading.Lock()
_module = None
_failure: str | None = None


class CpuStepUnavailable(PipelineError):
    """The compiled CPU steps cannot be built here (no compiler, no ninja, a failed build)."""


def _cpu_signature() -> str:
    """What the build's ``-march=native`` depends on: the CPU's flags (Linux), else the processor's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def build_name(source: bytes | None = None) -> str:
    """The extension's name, and its build folder's: a hash of everything its binary depends on (the source's
    text, by default :data:`SOURCE`'s, never its path; the flags; torch's version; the CPU's instruction set)."""
    h = hashlib.sha256()
    text = SOURCE.read_bytes() if source is None else source
    for part in (text, " ".join(FLAGS).encode(), torch.__version__.encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return f"surrogates_cpu_step_{h.hexdigest()[:16]}"


def staged_source(folder: Path, source: bytes) -> Path:
    """The source as the compiler sees it: a copy inside the build folder (written atomically, once), so that
    every checkout holding this text compiles the same path and torch's builder finds its build up to date."""
    path = Path(folder) / SOURCE.name
    try:
        same = path.read_bytes() == source
    except OSError:
        same = False
    if not same:
        write_bytes(path, source)
    return path


def _ninja_on_path() -> None:
    """torch's extension builder runs ``ninja`` from ``PATH``: where it is not there, the ``ninja`` package's
    binary (a project dependency) is put first on this process's ``PATH``."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@contextlib.contextmanager
def _builder_lock(folder: Path):
    """Hold an ``flock`` on the build folder (the kernel drops it when its holder dies) around torch's own
    build lock, a ``lock`` file that torch creates and deletes and that a process killed mid-build or
    mid-load (SIGKILL: a job's time limit, the OOM killer) leaves behind: every later load would then wait
    on it forever, without a word. Whoever holds the ``flock`` knows such a file is stale and removes it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: torch's lock alone
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "surrogates.flock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process's build or load: wait for it (it is alive)
        try:
            stale = folder / "lock"
            if stale.exists():
                print(f"removed {stale}, a build lock left by a process that was killed while holding it",
                      file=sys.stderr)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(verbose: bool = False):
    """The compiled module (built on first use, then cached); :class:`CpuStepUnavailable` with the reason
    when it cannot be built."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise CpuStepUnavailable(_failure)
        if os.environ.get("SURROGATES_CPU_STEP", "1") == "0":
            _failure = "disabled by SURROGATES_CPU_STEP=0"
            raise CpuStepUnavailable(_failure)
        from torch.utils import cpp_extension

        _ninja_on_path()
        source = SOURCE.read_bytes()
        name = build_name(source)
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
        try:
            with _builder_lock(folder):  # only loads and builds of this very source wait here
                fresh = not any(folder.glob(f"{name}*.so"))
                start = time.perf_counter()
                _module = cpp_extension.load(name=name, sources=[str(staged_source(folder, source))],
                                             extra_cflags=FLAGS, verbose=verbose)
                if fresh:
                    print(f"building the compiled CPU step (first use of this source): "
                          f"{time.perf_counter() - start:.0f} s, in {folder}", file=sys.stderr)
        except Exception as e:  # compiler, ninja or build failure: say which (the compiler's first error), once
            lines = str(e).strip().splitlines()
            first = next((ln.strip() for ln in lines if "error:" in ln), lines[-1] if lines else "")
            _failure = f"the compiled CPU step could not be built ({type(e).__name__}: {first[:300]})"
            raise CpuStepUnavailable(_failure) from e
        return _module


def unavailable_reason() -> str | None:
    """``None`` when the compiled step can be used here, else why not (building it if needed)."""
    try:
        load()
    except CpuStepUnavailable as e:
        return str(e)
    return None


class _Compiled:
    """What both compiled steps share: the checks, the engine's parameters and gradients, the module."""

    what = "the compiled CPU step"

    def __init__(self, engine):
        self.engine = engine
        dev, dtype = engine.W[0].device, engine.W[0].dtype
        if dev.type != "cpu":
            raise InvalidInputError(f"{self.what} trains CPU models; the model is on {dev}")
        if dtype not in (torch.float32, torch.float64):
            raise InvalidInputError(f"{self.what} trains float32 or float64 networks, got {dtype}")
        self.dtype = dtype
        acts = [a for a, _ in engine.model.hidden] + [engine.model.output_activation]
        unknown = [a for a in acts if a not in CODES]
        if unknown:
            raise InvalidInputError(f"{self.what} has no activation {unknown[0]!r}; valid: {sorted(k for k in CODES if k)}")
        self.acts = [CODES[a] for a in acts]
        for t in (*engine.W, *engine.b):
            if not t.is_contiguous():
                raise InvalidInputError(f"{self.what} reads contiguous parameters")
        self.W, self.b = list(engine.W), list(engine.b)
        self.gW = [lin.weight.grad for lin in engine.linears]
        self.gb = [lin.bias.grad for lin in engine.linears]
        self.module = load()

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except RuntimeError as e:  # the C++ checks (shapes, dtypes) name what was wrong
            raise InvalidInputError(str(e).splitlines()[0]) from None


class CpuDataStep(_Compiled):
    """``engine``'s data step (mean squared error) as one compiled call.

    Call it as :meth:`~training.engine.MLPEngine.data_step` (``xs``, ``ys`` scaled, in the network's precision, on the CPU;
    ``p`` must be 2). It reads the weights where the optimiser keeps them and writes (or, after another term,
    adds) the gradients into the parameters' ``.grad``. Any number of rows (``rows`` is unbounded).
    """

    rows = sys.maxsize
    what = "the compiled CPU data step"

    def __init__(self, engine, tile: int = TILE):
        super().__init__(engine)
        self.tile = int(tile)
        if self.tile < 1:
            raise InvalidInputError(f"tile must be >= 1 row, got {tile}")

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor, weight: float = 1.0, p: float = 2.0) -> torch.Tensor:
        if p != 2.0:
            raise InvalidInputError(f"the compiled CPU data step computes the mean squared error (p = 2), got p = {p}")
        eng = self.engine
        loss = self._call(self.module.data_step, xs.contiguous(), ys.contiguous(), self.W, self.b, self.gW, self.gb,
                          self.acts, float(weight), eng._written, self.tile)
        eng._written = True
        return loss


class CpuTangentStep(_Compiled):
    """``engine``'s residual step with a closed-form gradient
    (:meth:`~training.engine.MLPEngine.tangent_step_closed`) in two compiled calls: the forward pass with
    tangents, then, after ``residual_grad`` (the caller's closed form on the small output tensors), the backward pass.
    Per layer it keeps ``[a; at]`` and ``[f'(z); f''(z) zt]`` (two blocks of the call's rows) for up to
    ``rows`` rows (the engine's)."""

    what = "the compiled CPU residual step"

    def __init__(self, engine, rows: int | None = None):
        super().__init__(engine)
        self.rows = int(rows or engine.rows)
        widths = [lin.out_features for lin in engine.linears]
        self.AA = [torch.empty(2 * self.rows, w, dtype=self.dtype) for w in widths]  # [a; at]
        self.DQ = [torch.empty(2 * self.rows, w, dtype=self.dtype) for w in widths]  # [f'(z); f''(z) zt]

    def __call__(self, xs: torch.Tensor, vs: torch.Tensor, residual_grad, weight: float = 1.0) -> torch.Tensor:
        n = xs.shape[0]
        if n > self.rows or n < 1:
            raise InvalidInputError(f"{self.what} was sized for 1 to {self.rows} rows, got {n}")
        eng, m = self.engine, self.module
        xs, vs = xs.contiguous(), vs.contiguous()
        self._call(m.tangent_forward, xs, vs, self.W, self.b, self.acts, self.AA, self.DQ)
        with torch.no_grad():
            out = self.AA[-1]
            loss, gz, gzt = residual_grad(out[:n], out[n:2 * n])
            self._call(m.tangent_backward, xs, vs, gz.mul_(weight).contiguous(), gzt.mul_(weight).contiguous(),
                       self.W, self.b, self.gW, self.gb, self.acts, self.AA, self.DQ, eng._written)
        eng._written = True
        return loss


class CpuResidualStep(_Compiled):
    """A residual step whose residual is a compiled C callback (the ODE residual's ``tile`` from
    :func:`training.cpu_residual.residual_kernel`) as one compiled call: per tile of :data:`RESIDUAL_TILE`
    rows the inputs scaled as :meth:`~training.engine.MLPEngine.scale_x` does, the forward pass with tangents
    along the shared direction ``v``, the residual's loss and gradient by the callback, and the backward pass.
    A tile's arrays stay in the core's cache from the first layer to the last and back, and there is no Python,
    no torch operator and no buffer between the passes (:class:`CpuTangentStep` takes three calls and keeps
    every layer's arrays for all rows).

    Call it as ``step(x, v, weight)`` with ``x`` the points in physical units: the same loss and gradients
    (written or added into the parameters' ``.grad``) as :meth:`~training.engine.MLPEngine.tangent_step_closed`
    with the callback's closed form, to float32 rounding (tests). Any number of rows."""

    what = "the compiled CPU residual step"

    def __init__(self, engine, residual, tile: int | None = None):
        super().__init__(engine)
        m = engine.model
        outputs, inputs = engine.linears[-1].out_features, engine.linears[0].in_features
        if getattr(residual, "OUTPUTS", None) != outputs or not hasattr(residual, "tile"):
            raise InvalidInputError(f"{self.what} needs a residual kernel for {outputs} outputs (training.cpu_residual), "
                                    f"got {residual!r}")
        self.residual = residual  # keeps the callback (and its address) alive
        self.fn = int(residual.tile.address)
        self.center = m.in_center.detach().to(self.dtype).contiguous()
        self.halfwidth = m.in_halfwidth.detach().to(self.dtype).contiguous()
        self.oc = m.out_center.detach().to(torch.float64).contiguous()
        self.os = m.out_scale.detach().to(torch.float64).contiguous()
        if self.center.numel() != inputs:
            raise InvalidInputError(f"{self.what}: the network takes {inputs} inputs, its input scaling has "
                                    f"{self.center.numel()}")
        self.tile = int(RESIDUAL_TILE if tile is None else tile)
        if self.tile < 1:
            raise InvalidInputError(f"tile must be >= 1 row, got {tile}")

    def __call__(self, x: torch.Tensor, v: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        eng = self.engine
        loss = self._call(self.module.residual_step, x.to(self.dtype).contiguous(), self.center, self.halfwidth,
                          v.to(self.dtype).contiguous(), self.W, self.b, self.gW, self.gb, self.acts, self.fn,
                          self.oc, self.os, float(weight), eng._written, self.tile)
        eng._written = True
        return loss


def residual_steps(engine):
    """``problem -> CpuResidualStep`` on ``engine`` (the engine's ``residual_kernel``): ``None`` for a problem
    whose model has no compiled residual (:func:`training.cpu_residual.residual_kernel`)."""
    from .cpu_residual import residual_kernel

    made: dict = {}

    def make(problem):
        if problem.name not in made:
            kernel = residual_kernel(problem)
            made[problem.name] = None if kernel is None else CpuResidualStep(engine, kernel)
        return made[problem.name]

    return make
