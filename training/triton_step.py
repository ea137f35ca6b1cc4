"""A data step of the fused engine in one Triton kernel: forward, loss and every layer's gradients per tile;
and an ODE residual step the same way (:class:`TritonResidualStep`).

On a GPU the fused engine's data step (:meth:`~training.engine.MLPEngine.data_step`) is about thirty small
kernels for the paper's 3x64 network (one product or elementwise pass each), and the whole training step,
captured in a CUDA graph, about fifty: the GPU spends its time starting kernels, not computing (a step of
the 3x64 net at batch 1024 is 52 MFLOP, about a microsecond of the chip's float32 rate). Here each program
takes ``BLOCK_M`` rows through the whole network and back in registers and writes its share of every
gradient (and of the loss), in the parameters' own layout, to its own row of a buffer of partial sums;
one sum over the rows, in a fixed order (the same bits every run: a resumed run equals an uninterrupted
one, as on the other paths), and one multi-tensor copy into the ``.grad`` tensors finish it. The kernel
reads the weights where the optimiser keeps them. With the batch selection, the data term is 8 kernels
instead of 31, and the captured data-only step 28 instead of 51 (operators counted on the CPU).

What it computes is exactly the engine's data step with the mean squared error: ``weight * mean((z(xs) -
ys)^2)`` on scaled inputs and outputs, its gradient written into (or added to) each parameter's ``.grad``
(tests: the same loss and gradients as the engine to float32 rounding, every activation, batches that are
not a multiple of ``BLOCK_M``, under ``TRITON_INTERPRET=1`` on the CPU). Products are float32 on the CPU
interpreter and ``tf32x3`` on a GPU (three TF32 tensor-core products: about float32 accuracy).

As in :mod:`inference.kernels.triton_mlp`, the network's layers are written out as straight-line Triton
source per network, loaded by :mod:`surrogates.tritonlib`; Triton is imported only when a step is built.

**Status**: tested on the CPU through Triton's interpreter and compiled for sm_90 without a GPU
(:func:`ptx_report`); on an H200 (2026-11-28) its GPU test passed (the captured Triton step against the
captured fused one) and the captured step ran 11,523 it/s on C (3x64, batch 1024), 2.6x the fused step's.
It is used only where asked for (``Trainer(engine=
"triton")``, ``training.engine: triton`` in a config, ``training_speed``/``gpu_check`` variants); the default
GPU path is the captured fused step.

**The residual step** (:class:`TritonResidualStep`, 2026-11-28): a physics-informed term's ODE residual in one
kernel too. Each program scales ``BLOCK_M`` collocation points, goes forward with tangents along the shared
direction (values and tangents through each layer's product, ``f'`` and ``f'' zt`` kept for the way back), takes
the network's outputs and their time derivatives to the residual ``dy/dt / scale - f / scale`` and its
closed-form gradient (the cell model's right-hand side and Jacobian statements, printed into the kernel as
for the CPU's compiled loop, :mod:`~training.cpu_residual`), and goes back through both. Equal to the engine's
torch operators to float32 rounding under the interpreter (tests: three networks, every activation's second
derivative, after a data term; a PINN through the Trainer step for step); compiled for sm_90 the 3x64 net
uses 253 registers without spills at ``BLOCK_M`` 16. Models whose statements call vtrap (Hodgkin-Huxley's
rates) keep the engine's torch operators. **Never run on a GPU**: what it gains there is not known.
"""
from __future__ import annotations


import torch

from core.errors import InvalidInputError

from surrogates import activations, tritonlib

MIN_WIDTH = 16   # tl.dot needs K, N >= 16
MAX_WIDTH = 128
# (BLOCK_M, num_warps) by the widest hidden layer: one tile's activations of every layer stay in registers.
# Chosen by compiling for sm_90 without a GPU (ptx_report, tf32x3): the 3x64 net at (32, 8) 234 registers
# a thread, no spills ((32, 4) spilled 192 bytes, (64, 8) 1.5 kB); the 4x128 net spills at every size tried,
# least at (16, 8) (720 bytes; (16, 16) 832, (32, 8) 1.6 kB).
LAUNCH = {64: (32, 8), 128: (16, 8)}
# the same for the residual step (values and tangents, f' and f'' zt of every layer stay live: twice the data
# step's tensors), chosen the same way (ptx_report(..., problem=C)): the 3x64 net at (16, 8) 253 registers, no
# spills ((16, 4) spilled 344 bytes, (32, 8) 224, (16, 16) 360); the 4x128 net spills at every size tried,
# least at (16, 8) (1.9 kB; (16, 16) 2.5 kB, (32, 8) 7 kB)
RESIDUAL_LAUNCH = {64: (16, 8), 128: (16, 8)}
FP32_INPUT_PRECISION = "tf32x3"

_PRELUDE = '''
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=__FP32_INPUT_PRECISION__)


@triton.jit
def _load_wt(ptr, K_REAL: tl.constexpr, N_REAL: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    """W^T as a (K, N) block, zero padded, from a torch Linear weight W (N_REAL, K_REAL), row-major."""
    k = tl.arange(0, K)[:, None]
    n = tl.arange(0, N)[None, :]
    return tl.load(ptr + n * K_REAL + k, mask=(k < K_REAL) & (n < N_REAL), other=0.0)


@triton.jit
def _store_wt(ptr, wt, K_REAL: tl.constexpr, N_REAL: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    """The (K, N) block wt = dW^T stored as dW (N_REAL, K_REAL), row-major, without the padding."""
    k = tl.arange(0, K)[:, None]
    n = tl.arange(0, N)[None, :]
    tl.store(ptr + n * K_REAL + k, wt, mask=(k < K_REAL) & (n < N_REAL))


@triton.jit
def _load_b(ptr, N_REAL: tl.constexpr, N: tl.constexpr):
    n = tl.arange(0, N)
    return tl.load(ptr + n, mask=n < N_REAL, other=0.0)


@triton.jit
def _store_b(ptr, b, N_REAL: tl.constexpr, N: tl.constexpr):
    n = tl.arange(0, N)
    tl.store(ptr + n, b, mask=n < N_REAL)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    # not tl.sum: Triton's own @triton.jit functions are decorated when triton is imported, and the
    # interpreter cannot call them when TRITON_INTERPRET was set after that (as the tests do)
    return tl.reduce(x, axis, _add)


__EXACT_ACTIVATIONS__

# ---- activations (surrogates.activations): f(z) _f_NAME, f'(z) _d_NAME given a = f(z), and f''(z) _dd_NAME
# given d = f'(z) too (the residual step's backward pass), as the fused engine's (ReLU's kinks 0, Softplus 0
# above its threshold, ELU 0 above 0)
__ACTIVATIONS__


@triton.jit
def _col(t, cols, j: tl.constexpr):
    """Column j of a (rows, N) block as a vector of rows."""
    return _sum(tl.where(cols[None, :] == j, t, 0.0), 1)
'''

ACTIVATIONS = activations.NAMES


def _padded(width: int) -> int:
    return max(MIN_WIDTH, 1 << (int(width) - 1).bit_length())


class _Layout:
    """The network's widths, padded widths, and where each gradient lies in a program's row of partial sums."""

    def __init__(self, model):
        cfg = model.config()
        hidden = [(a, int(w)) for a, w in cfg["hidden"]]
        if cfg.get("output_activation") is not None:
            raise InvalidInputError("the Triton data step trains networks without an output activation, got "
                                    f"{cfg['output_activation']!r}; use the fused engine")
        if not hidden:
            raise InvalidInputError("the Triton data step needs at least one hidden layer")
        for a, _ in hidden:
            if a not in ACTIVATIONS:
                raise InvalidInputError(f"the Triton data step has no activation {a!r}; valid: {list(ACTIVATIONS)}")
        self.widths = (int(cfg["n_inputs"]), *[w for _, w in hidden], int(cfg["n_outputs"]))
        if max(self.widths) > MAX_WIDTH:
            raise InvalidInputError(f"the Triton data step supports widths up to {MAX_WIDTH}, got {self.widths}")
        self.acts = tuple(a for a, _ in hidden)
        self.padded = tuple(_padded(w) for w in self.widths)
        # a partial row: every gradient in the parameters' order and layout (weight (out, in), then bias, per
        # layer), then the sum of squared errors
        self.w_off, self.b_off = [], []
        at = 0
        for i in range(len(self.widths) - 1):
            self.w_off.append(at)
            at += self.widths[i] * self.widths[i + 1]
            self.b_off.append(at)
            at += self.widths[i + 1]
        self.loss_off = at
        self.partial_size = at + 1

    @property
    def launch(self) -> tuple[int, int]:
        """(BLOCK_M, num_warps) for this network (see LAUNCH)."""
        return LAUNCH[64 if max(self.padded[1:-1]) <= 64 else 128]

    def describe(self) -> str:
        return " -> ".join([str(self.widths[0])] + [f"{w} {a}" for w, a in zip(self.widths[1:-1], self.acts)]
                           + [f"{self.widths[-1]} linear"])


def _source(lay: _Layout) -> str:
    p, w, L = lay.padded, lay.widths, len(lay.padded) - 1
    params = ", ".join(f"w{i}_ptr, b{i}_ptr" for i in range(L))
    lines = [
        "", "",
        "@triton.jit",
        f"def data_step_kernel(x_ptr, y_ptr, part_ptr, n_rows, scale, {params},",
        "                     BLOCK_M: tl.constexpr, INTERPRETED: tl.constexpr):",
        f'    """{lay.describe()} (padded {" -> ".join(map(str, p))}): rows [pid * BLOCK_M, +BLOCK_M) forward and back;',
        "    the weights and biases read from the parameters themselves (torch's layout); writes this program's",
        "    partial sums of every gradient (times ``scale``), in the parameters' order and layout, and of the",
        '    squared errors to row pid of part."""',
        "    pid = tl.program_id(0)",
        "    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    live = (rows < n_rows)[:, None]",
        "    r = rows.to(tl.int64)[:, None]",
        f"    cin = tl.arange(0, {p[0]})",
        f"    cout = tl.arange(0, {p[-1]})",
        f"    h0 = tl.load(x_ptr + r * {w[0]} + cin[None, :], mask=live & (cin < {w[0]})[None, :], other=0.0)",
        f"    part = part_ptr + pid.to(tl.int64) * {lay.partial_size}",
    ]
    for i in range(L):
        lines.append(f"    w{i} = _load_wt(w{i}_ptr, {w[i]}, {w[i + 1]}, {p[i]}, {p[i + 1]})")
        lines.append(f"    z{i} = _dot(h{i}, w{i}, INTERPRETED) + _load_b(b{i}_ptr, {w[i + 1]}, {p[i + 1]})[None, :]")
        if i < L - 1:
            lines.append(f"    h{i + 1} = _f_{lay.acts[i]}(z{i})")
    lines += [
        f"    y = tl.load(y_ptr + r * {w[-1]} + cout[None, :], mask=live & (cout < {w[-1]})[None, :], other=0.0)",
        f"    d = tl.where(live & (cout < {w[-1]})[None, :], z{L - 1} - y, 0.0)",
        f"    tl.store(part + {lay.loss_off}, _sum(_sum(d * d, 1), 0))",
        "    g = d * scale",
    ]
    for i in range(L - 1, -1, -1):
        lines.append(f"    _store_wt(part + {lay.w_off[i]}, _dot(tl.trans(h{i}), g, INTERPRETED), {w[i]}, {w[i + 1]}, "
                     f"{p[i]}, {p[i + 1]})")
        lines.append(f"    _store_b(part + {lay.b_off[i]}, _sum(g, 0), {w[i + 1]}, {p[i + 1]})")
        if i > 0:
            lines.append(f"    g = _dot(g, tl.trans(w{i}), INTERPRETED) * _d_{lay.acts[i - 1]}(z{i - 1}, h{i})")
    header = f"# generated by training.triton_step for {lay.describe()} -- do not edit"
    return header + "\n" + _prelude() + "\n".join(lines) + "\n"


def _prelude() -> str:
    return _PRELUDE.replace("__FP32_INPUT_PRECISION__", repr(FP32_INPUT_PRECISION)).replace(
        "__EXACT_ACTIVATIONS__", tritonlib.EXACT_ACTIVATIONS.strip("\n") + "\n").replace(
        "__ACTIVATIONS__", activations.triton_source())


_TRITON_FUNCTIONS = ("exp", "log", "sqrt", "abs")  # what the model printer's xp.<name> may call here


def _residual_statements(problem):
    """The cell model's right-hand side and Jacobian statements (:meth:`~solvers.model.CellModel.
    jacobian_statements`) as Triton source, and ``J``; ``None`` where they call what this kernel does not
    write (vtrap, a power with a non-integer exponent, a function beyond exp, log, sqrt and abs)."""
    import re

    made = problem.model.jacobian_statements()
    if made is None or problem.model.time_ident is not None:
        return None
    statements, J = made
    text = "\n".join(statements)
    if "_vtrap" in text or "_where" in text or "**" in text or re.search(r"(?<![\w.])abs\(", text) or set(re.findall(r"xp\.(\w+)", text)) - set(_TRITON_FUNCTIONS):
        return None
    return [re.sub(r"\bF\(", "(", st).replace("xp.", "tl.") for st in statements], J


def _residual_source(lay: _Layout, problem) -> str | None:
    """The residual step's kernel for ``problem``'s ODE residual on the network of ``lay``, or ``None``
    (see :func:`_residual_statements`)."""
    from .cpu_residual import parameter_sources

    made = _residual_statements(problem)
    if made is None:
        return None
    statements, J = made
    model = problem.model
    states = [model.ident(s) for s in model.state_names]
    col = [problem.outputs.index(s) for s in model.state_names]  # network output column of each model state
    p, w, L = lay.padded, lay.widths, len(lay.padded) - 1
    params = ", ".join(f"w{i}_ptr, b{i}_ptr" for i in range(L))
    lines = [
        "", "",
        "@triton.jit",
        f"def residual_step_kernel(x_ptr, inc_ptr, inhw_ptr, v_ptr, oc_ptr, os_ptr, part_ptr, n_rows, _c, _wt, {params},",
        "                         BLOCK_M: tl.constexpr, INTERPRETED: tl.constexpr):",
        f'    """{lay.describe()} (padded {" -> ".join(map(str, p))}), the ODE residual of model {model.name!r} on',
        f"    problem {problem.name!r}: points x (physical units) [pid * BLOCK_M, +BLOCK_M) scaled, forward with",
        "    tangents along v (the scaled inputs' derivative along t), the residual's loss and gradient (_c = 2 / N),",
        "    backward; writes this program's partial sums of every gradient (times _wt), in the parameters'",
        '    order and layout, and of the squared residuals to row pid of part."""',
        "    _pid = tl.program_id(0)",
        "    _rows = _pid * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    _live = _rows < n_rows",
        "    _r = _rows.to(tl.int64)[:, None]",
        f"    _cin = tl.arange(0, {p[0]})",
        f"    _cout = tl.arange(0, {p[-1]})",
        f"    _inm = _cin < {w[0]}",
        "    _in = _live[:, None] & _inm[None, :]",
        f"    _x = tl.load(x_ptr + _r * {w[0]} + _cin[None, :], mask=_in, other=0.0)",
        "    _xc = tl.load(inc_ptr + _cin, mask=_inm, other=0.0)",
        "    _xh = tl.load(inhw_ptr + _cin, mask=_inm, other=1.0)",
        "    _h0 = tl.where(_in, (_x - _xc[None, :]) / _xh[None, :], 0.0)",
        "    _v = tl.load(v_ptr + _cin, mask=_inm, other=0.0)",
        f"    _part = part_ptr + _pid.to(tl.int64) * {lay.partial_size}",
    ]
    for i in range(L):  # forward: values, tangents, and per hidden layer f', f'' zt for the way back
        lines.append(f"    _w{i} = _load_wt(w{i}_ptr, {w[i]}, {w[i + 1]}, {p[i]}, {p[i + 1]})")
        lines.append(f"    _z{i} = _dot(_h{i}, _w{i}, INTERPRETED) + _load_b(b{i}_ptr, {w[i + 1]}, {p[i + 1]})[None, :]")
        if i == 0:  # the inputs' tangent is v on every row
            lines.append("    _zt0 = _sum(_v[:, None] * _w0, 0)[None, :]")
        else:
            lines.append(f"    _zt{i} = _dot(_ht{i}, _w{i}, INTERPRETED)")
        if i < L - 1:
            act = lay.acts[i]
            lines += [f"    _h{i + 1} = _f_{act}(_z{i})",
                      f"    _d{i + 1} = _d_{act}(_z{i}, _h{i + 1})",
                      f"    _ht{i + 1} = _d{i + 1} * _zt{i}",
                      f"    _q{i + 1} = _dd_{act}(_z{i}, _h{i + 1}, _d{i + 1}) * _zt{i}"]
    o = L - 1
    lines.append("    # the residual, row by row (states from the scaled outputs, parameters from the points' columns)")
    for j, (st, c) in enumerate(zip(states, col)):
        lines.append(f"    _os{j} = tl.load(os_ptr + {c})")
        lines.append(f"    {st} = tl.load(oc_ptr + {c}) + _os{j} * _col(_z{o}, _cout, {c})")
    for name, (kind, v) in zip(model.param_names, parameter_sources(problem)):
        name = model.ident(name)
        lines.append(f"    {name} = _col(_x, _cin, {v})" if kind == "column" else f"    {name} = {v!r}")
    lines += [f"    {st}" for st in statements]
    for j, (st, c) in enumerate(zip(states, col)):
        lines.append(f"    _r{j} = tl.where(_live, _col(_zt{o}, _cout, {c}) - d_{st} / _os{j}, 0.0)")
        lines.append(f"    _g{j} = _c * _r{j} / _os{j}")  # the cotangent of f_j
    lines.append(f"    tl.store(_part + {lay.loss_off}, _sum(" + " + ".join(f"_r{j} * _r{j}" for j in range(len(states))) + ", 0))")
    gt = " + ".join(f"tl.where(_cout[None, :] == {c}, (_c * _wt * _r{j})[:, None], 0.0)" for j, c in enumerate(col))
    lines.append(f"    gt = {gt}")
    gz = " + ".join(
        f"tl.where(_cout[None, :] == {c}, (-_wt * _os{k} * (" + " + ".join(f"_g{j} * {J[j][k]}" for j in range(len(states)))
        + "))[:, None], 0.0)" for k, c in enumerate(col))
    lines.append(f"    g = {gz}")
    for i in range(L - 1, -1, -1):  # backward: [g; gt] through each layer
        if i == 0:
            dw = "_dot(tl.trans(_h0), g, INTERPRETED) + _v[:, None] * _sum(gt, 0)[None, :]"
        else:
            dw = f"_dot(tl.trans(_h{i}), g, INTERPRETED) + _dot(tl.trans(_ht{i}), gt, INTERPRETED)"
        lines.append(f"    _store_wt(_part + {lay.w_off[i]}, {dw}, {w[i]}, {w[i + 1]}, {p[i]}, {p[i + 1]})")
        lines.append(f"    _store_b(_part + {lay.b_off[i]}, _sum(g, 0), {w[i + 1]}, {p[i + 1]})")
        if i > 0:
            lines += [f"    _gh = _dot(g, tl.trans(_w{i}), INTERPRETED)",
                      f"    _ght = _dot(gt, tl.trans(_w{i}), INTERPRETED)",
                      f"    g = _gh * _d{i} + _ght * _q{i}",
                      f"    gt = _ght * _d{i}"]
    header = f"# generated by training.triton_step for {lay.describe()}, problem {problem.name!r} -- do not edit"
    return header + "\n" + _prelude() + "\n".join(lines) + "\n"


def _triton():
    return tritonlib.triton("the Triton data step")


def interpreting() -> bool:
    return tritonlib.interpreting()


def _module(lay: _Layout, interpreted: bool):
    return tritonlib.load_module(_source(lay), "data_step", interpreted)


def kernel_source(model) -> str:
    """The generated Triton module of ``model``'s data step (for reading and for :func:`ptx_report`)."""
    return _source(_Layout(model))


class _TritonStep:
    """What the data and residual steps share: the checks, the parameters read where the optimiser keeps them
    (updated in place, so a CUDA graph of the step stays valid), one row of partial sums per program, and the
    finish: one sum over the rows in a fixed order (the same bits every run) and one copy, or add, into the
    parameters' ``.grad``."""

    what = "the Triton step"

    def __init__(self, engine, rows: int | None, launch: dict | None = None):
        self.engine = engine
        self.lay = _Layout(engine.model)
        dev = engine.W[0].device
        self.interpreted = interpreting()
        if self.interpreted and dev.type != "cpu":
            raise InvalidInputError(f"under TRITON_INTERPRET=1 {self.what} runs on CPU tensors, got {dev}")
        if not self.interpreted and dev.type != "cuda":
            raise InvalidInputError(f"{self.what} runs on a CUDA device (or on the CPU under "
                                    f"TRITON_INTERPRET=1); the model is on {dev}")
        if engine.W[0].dtype != torch.float32:
            raise InvalidInputError(f"{self.what} trains float32 networks, got {engine.W[0].dtype}")
        self.rows = int(rows or engine.rows)
        self.block_m, self.num_warps = (self.lay.launch if launch is None else
                                        launch[64 if max(self.lay.padded[1:-1]) <= 64 else 128])
        self.part = torch.zeros(-(-self.rows // self.block_m), self.lay.partial_size, device=dev)
        self.flat = torch.zeros(self.lay.partial_size, device=dev)
        self._params = [t for W, b in zip(engine.W, engine.b) for t in (W, b)]
        for t in self._params:
            if not t.is_contiguous():
                raise InvalidInputError(f"{self.what} reads contiguous parameters")
        self._grads = [t for lin in engine.linears for t in (lin.weight.grad, lin.bias.grad)]
        sizes = [g.numel() for g in self._grads]
        self._flat_views = [v.view_as(g) for v, g in zip(torch.split(self.flat[:-1], sizes), self._grads)]

    def _check_rows(self, n: int) -> int:
        """The number of programs for ``n`` rows (refused by name beyond the rows the step was sized for)."""
        if n > self.rows or n < 1:
            raise InvalidInputError(f"{self.what} was sized for 1 to {self.rows} rows, got {n}")
        return -(-n // self.block_m)

    def _finish(self, programs: int, count: int) -> torch.Tensor:
        torch.sum(self.part[:programs], 0, out=self.flat)  # a fixed order: the same bits every run
        eng = self.engine
        with torch.no_grad():
            if eng._written:
                torch._foreach_add_(self._grads, self._flat_views)
            else:
                torch._foreach_copy_(self._grads, self._flat_views)
        eng._written = True
        return self.flat[-1] / count


class TritonDataStep(_TritonStep):
    """``engine``'s data step (mean squared error) as one kernel per batch, one sum and one copy into ``.grad``.

    Call it as :meth:`~training.engine.MLPEngine.data_step` (``xs``, ``ys`` scaled, float32, on the engine's
    device; ``p`` must be 2). The kernel reads the weights and biases from the parameters' own storage,
    which the optimiser updates in place, so a CUDA graph of the step stays valid.
    """

    what = "the Triton data step"

    def __init__(self, engine, rows: int | None = None):
        super().__init__(engine, rows)
        self.kernel = _module(self.lay, self.interpreted).data_step_kernel

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor, weight: float = 1.0, p: float = 2.0) -> torch.Tensor:
        if p != 2.0:
            raise InvalidInputError(f"the Triton data step computes the mean squared error (p = 2), got p = {p}")
        n = xs.shape[0]
        programs = self._check_rows(n)
        lay = self.lay
        if xs.shape[1] != lay.widths[0] or ys.shape[1] != lay.widths[-1]:
            raise InvalidInputError(f"xs must be (rows, {lay.widths[0]}) and ys (rows, {lay.widths[-1]}), got "
                                    f"{tuple(xs.shape)} and {tuple(ys.shape)}")
        xs, ys = xs.contiguous(), ys.contiguous()
        count = n * lay.widths[-1]
        self.kernel[(programs,)](xs, ys, self.part[:programs], n, 2.0 * weight / count, *self._params,
                                 BLOCK_M=self.block_m, INTERPRETED=self.interpreted, num_warps=self.num_warps)
        return self._finish(programs, count)


class TritonResidualStep(_TritonStep):
    """``problem``'s ODE residual step on ``engine`` in one Triton kernel per call, one sum and one copy into
    ``.grad``: each program takes ``BLOCK_M`` collocation points, scales them, goes forward with tangents along
    the shared direction ``v``, computes the residual's loss and closed-form gradient from the cell model's
    generated Jacobian statements, and goes back, writing its share of every gradient to its own row of
    partial sums (summed in a fixed order, as :class:`TritonDataStep`).

    Call it as ``step(x, v, weight)`` with ``x`` the points in physical units (float32, on the engine's
    device): the same loss and gradients as the engine's torch operators with the residual's closed form
    (:meth:`~training.engine.MLPEngine.tangent_step_closed`), to float32 rounding on the interpreter
    (tests). Construct it through :func:`residual_steps`, which returns ``None`` where the model's statements
    call what the kernel does not write (vtrap)."""

    what = "the Triton residual step"

    def __init__(self, engine, problem, source: str, rows: int | None = None):
        super().__init__(engine, rows, RESIDUAL_LAUNCH)
        if len(problem.inputs) != self.lay.widths[0] or len(problem.outputs) != self.lay.widths[-1]:
            raise InvalidInputError(f"problem {problem.name!r} has {len(problem.inputs)} inputs and "
                                    f"{len(problem.outputs)} outputs, the network {self.lay.widths[0]} and "
                                    f"{self.lay.widths[-1]}")
        self.kernel = tritonlib.load_module(source, "residual_step", self.interpreted).residual_step_kernel
        m, dev = engine.model, engine.W[0].device
        self._scaling = [t.detach().to(device=dev, dtype=torch.float32).contiguous()
                         for t in (m.in_center, m.in_halfwidth)]
        self._out = [t.detach().to(device=dev, dtype=torch.float32).contiguous() for t in (m.out_center, m.out_scale)]

    def __call__(self, x: torch.Tensor, v: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        n = x.shape[0]
        programs = self._check_rows(n)
        lay = self.lay
        if x.shape[1] != lay.widths[0] or v.numel() != lay.widths[0]:
            raise InvalidInputError(f"x must be (rows, {lay.widths[0]}) and v of {lay.widths[0]}, got "
                                    f"{tuple(x.shape)} and {tuple(v.shape)}")
        x, v = x.to(torch.float32).contiguous(), v.to(torch.float32).contiguous()
        count = n * lay.widths[-1]
        self.kernel[(programs,)](x, *self._scaling, v, *self._out, self.part[:programs], n, 2.0 / count, float(weight),
                                 *self._params, BLOCK_M=self.block_m, INTERPRETED=self.interpreted,
                                 num_warps=self.num_warps)
        return self._finish(programs, count)


def residual_steps(engine):
    """``problem -> TritonResidualStep`` on ``engine`` (the engine's ``residual_kernel``): ``None`` for a
    problem whose model's residual the kernel does not write (then the engine's torch operators do it)."""
    made: dict = {}

    def make(problem):
        if problem.name not in made:
            src = _residual_source(_Layout(engine.model), problem)
            made[problem.name] = None if src is None else TritonResidualStep(engine, problem, src)
        return made[problem.name]

    return make


def residual_kernel_source(model, problem) -> str | None:
    """The generated Triton module of ``model``'s residual step for ``problem`` (for reading and
    :func:`ptx_report`), or ``None`` where the kernel does not write its model's residual."""
    return _residual_source(_Layout(model), problem)


def ptx_report(model, arch: int = 90, block_m: int | None = None, num_warps: int | None = None,
               problem=None) -> dict:
    """Compile the data step of ``model`` (or, given a trajectory ``problem``, its residual step) for
    ``sm_<arch>`` without a GPU; registers and spills from ptxas."""
    import re

    triton = _triton()
    from triton.backends.compiler import GPUTarget

    lay = _Layout(model)
    layers = len(lay.widths) - 1
    wb = [f"{k}{i}_ptr" for i in range(layers) for k in "wb"]
    if problem is None:
        fn = _module(lay, interpreted=False).data_step_kernel
        names = ["x_ptr", "y_ptr", "part_ptr", "n_rows", "scale"] + wb
        types = ["*fp32"] * 3 + ["i32", "fp32"] + ["*fp32"] * (2 * layers)
        launch = lay.launch
    else:
        src = _residual_source(lay, problem)
        if src is None:
            raise InvalidInputError(f"the Triton residual step does not write problem {problem.name!r}'s residual")
        fn = tritonlib.load_module(src, "residual_step", False).residual_step_kernel
        names = ["x_ptr", "inc_ptr", "inhw_ptr", "v_ptr", "oc_ptr", "os_ptr", "part_ptr", "n_rows", "_c", "_wt"] + wb
        types = ["*fp32"] * 7 + ["i32", "fp32", "fp32"] + ["*fp32"] * (2 * layers)
        launch = RESIDUAL_LAUNCH[64 if max(lay.padded[1:-1]) <= 64 else 128]
    block_m, num_warps = block_m or launch[0], num_warps or launch[1]
    constexprs = {"BLOCK_M": block_m, "INTERPRETED": False}
    signature = {**dict(zip(names, types)), **{k: "constexpr" for k in constexprs}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types) if t.startswith("*")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    return {"network": lay.describe(), "BLOCK_M": block_m, "num_warps": num_warps,
            **tritonlib.ptxas_figures(ptx), "shared_bytes": compiled.metadata.shared,
            "tensor_cores": bool(re.search(r"\b(wgmma\.mma_async|mma\.sync)", ptx))}
