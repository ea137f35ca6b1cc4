"""A whole small MLP in one Triton kernel on tensor cores, and the ITNN rollout fused into one kernel.

:class:`TritonMLP` evaluates ``surrogates.network.MLP`` (``y = out_center + out_scale * net((x - in_center) /
in_halfwidth)``) and :class:`TritonRollout` advances ``y <- y + net([y, p])`` for many steps, each in one
launch; :func:`ptx_report` compiles either kernel ahead of time for sm_90 without a GPU and reads the
registers, spills and shared memory off ``ptxas``.

Design
------
* **One kernel per fused operation.** Each program takes tiles of ``BLOCK_M`` rows (cells) from a persistent
  grid (tiles ``p, p + P, p + 2P, ...``; ``P`` = SMs x resident programs per SM) and keeps the
  activations of a tile in registers from the input to the output; only the inputs and outputs (the kept
  states, for the rollout) touch global memory.
* **Weights staged once per program.** Every layer's weight matrix is padded and transposed once, at
  construction, into one buffer in the precision's dtype (``(K, N)`` row-major per layer, zero padded), and
  loaded before the tile loop. Being loop invariant, they stay in shared memory, in the swizzled layout
  ``wgmma`` reads (sm_90); the activations (the A operand) stay in registers from layer to layer. Where
  the staged copy would not fit (:data:`STAGED_WEIGHTS_MAX_BYTES`: only fp32 with 128-wide layers among
  the study's networks, as tf32x3 keeps two copies) each tile reads each layer's weights from L2 just
  before its product instead. Biases and the input/output scaling live in a second, float32 buffer and
  are read where they are used (from L1): held in registers across the loop they spilled 4 x 128.
* **Widths** are padded to powers of two from 16 to 128 (the tensor-core tile is 16 deep); padded units
  have zero weights and biases and feed zero weights, and padded outputs have a zero scale, so they never
  change a result. Input padding has centre 0 and half-width 1 (no 0/0). The packed buffers hold every
  padded block whole, so their loads need no mask; every load and store of inputs, states and outputs is
  masked by row and column.
* **Precisions.** Inputs, outputs and the rollout's state are float32 everywhere (a time of 50 keeps 3
  digits in fp16). ``fp16``/``bf16``: weights and activations in half precision, float32 accumulation.
  Tanh, sigmoid (0.5 tanh(x/2) + 0.5) and SiLU (x sigmoid(x)) use the hardware tanh: ``tanh.approx.f16x2``
  in fp16 (one MUFU instruction per pair of values), ``tanh.approx.f32`` then one rounding in bf16 (which
  keeps 8 bits: three roundings in bfloat16 arithmetic would double its error). The other activations are
  computed in float32 from the accumulator and rounded. ``fp32``: weights and activations in float32,
  ``tl.dot(..., input_precision="tf32x3")`` (three TF32 tensor-core products, about float32 accuracy;
  "ieee" runs FMA loops off the tensor cores and spilled even the 3 x 64 network) and exp-based
  activations.
* **Source generation.** The layers differ in width and activation, and each layer's weights must be a
  distinct value that lives across the tile loop, so the network function ``_net`` and the weight loader
  ``_weights`` are generated as Python text per network (straight-line, one line per layer) while the
  kernels around them are written once. Triton reads a JIT function's source with ``inspect``, so the
  text is written to a file in Triton's cache folder and imported, like the Numba kernels of
  :mod:`solvers.backends.cpu`. :func:`kernel_source` returns it.
* **The interpreter.** ``@triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so the generated
  modules are imported once per mode, and the mode is fixed when a callable is built. Under the
  interpreter the same kernels run on CPU tensors through NumPy; ``INTERPRETED`` is a ``tl.constexpr``
  that turns off the inline assembly (the hardware tanh) and keeps bfloat16 values in float32, rounded to
  nearest even, because the interpreter truncates float32 -> bfloat16 and multiplies bfloat16 as raw
  16-bit integers (float32 holds every bfloat16 product exactly: the results are the same). Loop bounds
  that NumPy 2.4 refuses to convert are mended (:func:`_patch_interpreter_loop_bounds`).
* **Launch configuration.** On a GPU a small explicit search at construction compiles a few
  (``BLOCK_M``, ``num_warps``) pairs, drops those that spill (unless all do), sizes the persistent grid
  from registers and shared memory (as Triton's fused-softmax tutorial does) and keeps the fastest on a
  probe batch; ``config={"BLOCK_M": ..., "num_warps": ...}`` skips the search.

Triton is imported only when a kernel is built, so ``import inference.kernels.triton_mlp`` works without it.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import torch

from core.errors import BackendUnavailableError, InvalidInputError
from core.precision import canonical
from inference.export import torch_dtype
from surrogates import activations, tritonlib

MAX_WIDTH = 128
MIN_WIDTH = 16  # the depth of a tensor-core tile: tl.dot needs K, N >= 16
PRECISIONS = ("fp32", "fp16", "bf16")
FP32_INPUT_PRECISION = "tf32x3"
# (BLOCK_M, num_warps) pairs the search at construction tries; the first is the default elsewhere. One
# warpgroup (4 warps) per 64 rows: with (128, 4) ptxas serialised the wgmma (notes C7517/C7519), the
# 128-wide networks spilled, and 4 x 128 in fp32 took 21 s to compile here against 9 s for the others.
CANDIDATES = ((64, 4), (128, 8))
# Software pipelining of the input loads when the weights are staged; 1 when they are not (with more
# stages the pipeliner would keep several copies of every layer's weights in shared memory).
NUM_STAGES = 3
# Weights are staged in shared memory once per program when they take at most this much there (an H100
# block may have 227 KiB; the rest holds the pipelined inputs). fp32 stages two copies (tf32x3 splits each
# weight into a high and a low TF32 part): a 4 x 128 network in fp32 does not fit, and reads its weights
# layer by layer from L2 for every tile.
STAGED_WEIGHTS_MAX_BYTES = 160 * 1024
# The interpreter runs programs one after another: two programs take several tiles each, so the tests
# go through the persistent loop.
INTERPRETER_PROGRAMS = 2
TUNE_ROWS = 1 << 16                 # rows of the probe batch that times each configuration of TritonMLP
TUNE_CELLS, TUNE_STEPS = 1 << 14, 20  # cells and steps of the probe rollout of TritonRollout


# ---------------------------------------------------------------- the kernels' fixed part (Triton source)
_PRELUDE = '''
import triton
import triton.language as tl


@triton.jit
def _narrow(x, DT: tl.constexpr, INTERPRETED: tl.constexpr):
    """float32 ``x`` rounded to ``DT``, the type the next tensor-core product takes."""
    if INTERPRETED and DT == tl.bfloat16:
        # the interpreter truncates to bfloat16 and multiplies bfloat16 as integers: keep the rounded
        # value (nearest even) in float32, which holds it exactly
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(DT)


@triton.jit
def _cdiv(a, B: tl.constexpr):
    # not tl.cdiv: Triton's own @triton.jit functions are decorated when triton is imported, and the
    # interpreter cannot call them if TRITON_INTERPRET was set after that
    return (a + B - 1) // B


@triton.jit
def _load_matrix(ptr, K: tl.constexpr, N: tl.constexpr, INTERPRETED: tl.constexpr):
    """A (K, N) row-major block of the packed weights; the buffer holds it whole, so no offset is out of range."""
    w = tl.load(ptr + tl.arange(0, K)[:, None] * N + tl.arange(0, N)[None, :])
    if INTERPRETED and w.dtype == tl.bfloat16:
        w = w.to(tl.float32)  # see _narrow
    return w


@triton.jit
def _dense(h, w, b_ptr, N: tl.constexpr):
    """h @ w + b: (BLOCK_M, K) x (K, N) -> (BLOCK_M, N) float32, accumulated in float32 on the tensor cores."""
    if h.dtype == tl.float32:
        acc = tl.dot(h, w, input_precision=__FP32_INPUT_PRECISION__)
    else:
        acc = tl.dot(h, w)
    return acc + tl.load(b_ptr + tl.arange(0, N))[None, :]


@triton.jit
def _scale_inputs(x, p_ptr, K: tl.constexpr):
    """(x - centre) / half-width per column: physical units to the network's [-1, 1] box."""
    k = tl.arange(0, K)
    return (x - tl.load(p_ptr + k)[None, :]) / tl.load(p_ptr + K + k)[None, :]


@triton.jit
def _scale_outputs(z, p_ptr, N: tl.constexpr):
    """centre + scale * z per column: the network's outputs to physical units."""
    n = tl.arange(0, N)
    return tl.load(p_ptr + n)[None, :] + tl.load(p_ptr + N + n)[None, :] * z


# ---- activations: z is the float32 pre-activation; the result has type DT (see _narrow)
@triton.jit
def _tanh_approx(x):
    """The hardware tanh (MUFU.TANH, relative error about 2^-11); float16 in pairs, one instruction per pair."""
    if x.dtype == tl.float16:
        return tl.inline_asm_elementwise("tanh.approx.f16x2 $0, $1;", "=r,r", [x], dtype=tl.float16,
                                         is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)


@triton.jit
def _fast_type(z, DT: tl.constexpr):
    """z in the type the hardware-tanh activations compute in: float16 for float16 (two values per
    instruction); float32 for bfloat16, rounded once at the end (bfloat16 keeps 8 bits: computing in it
    would round three times where the network rounds once)."""
    if DT == tl.float16:
        return z.to(tl.float16)
    else:
        return z


__EXACT_ACTIVATIONS__

__ACTIVATIONS__
'''

_KERNELS = '''

@triton.jit(do_not_specialize=["n_rows"])
def mlp_kernel(x_ptr, y_ptr, w_ptr, p_ptr, n_rows,
               N_IN: tl.constexpr, N_OUT: tl.constexpr, K_IN: tl.constexpr, K_OUT: tl.constexpr,
               STAGE_WEIGHTS: tl.constexpr, BLOCK_M: tl.constexpr, INTERPRETED: tl.constexpr):
    """y[r] = net(x[r]) for r < n_rows; x (n_rows, N_IN) and y (n_rows, N_OUT) float32, row-major."""
    if STAGE_WEIGHTS:  # loop invariant: the compiler keeps them in shared memory
        ws = _weights(w_ptr, INTERPRETED)
    cin = tl.arange(0, K_IN)
    cout = tl.arange(0, K_OUT)
    for tile in range(tl.program_id(0), _cdiv(n_rows, BLOCK_M), tl.num_programs(0)):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        live = (rows < n_rows)[:, None]
        r = rows.to(tl.int64)[:, None]
        x = tl.load(x_ptr + r * N_IN + cin[None, :], mask=live & (cin < N_IN)[None, :], other=0.0)
        if not STAGE_WEIGHTS:  # from L2, each layer's just before its product
            ws = _weights(w_ptr, INTERPRETED)
        y = _net(x, ws, p_ptr, INTERPRETED)
        tl.store(y_ptr + r * N_OUT + cout[None, :], y, mask=live & (cout < N_OUT)[None, :])


@triton.jit(do_not_specialize=["n_cells", "n_keep", "keep_every"])
def rollout_kernel(y0_ptr, q_ptr, out_ptr, w_ptr, p_ptr, n_cells, n_keep, keep_every,
                   N_STATES: tl.constexpr, N_PARAMS: tl.constexpr, K_IN: tl.constexpr, KEEP_FIRST: tl.constexpr,
                   STAGE_WEIGHTS: tl.constexpr, BLOCK_M: tl.constexpr, INTERPRETED: tl.constexpr):
    """n_keep * keep_every steps of y <- y + net([y, q]) per cell, the state in float32 registers.

    y0 (n_cells, N_STATES) and q (n_cells, N_PARAMS) float32; out (KEEP_FIRST + n_keep, n_cells, N_STATES)
    receives y0 (if KEEP_FIRST) and the state after every keep_every steps.
    """
    if STAGE_WEIGHTS:
        ws = _weights(w_ptr, INTERPRETED)
    cols = tl.arange(0, K_IN)
    is_state = (cols < N_STATES)[None, :]
    is_param = ((cols >= N_STATES) & (cols < N_STATES + N_PARAMS))[None, :]
    q_cols = tl.where(is_param, cols[None, :] - N_STATES, 0)
    one_save = n_cells.to(tl.int64) * N_STATES  # elements of out per kept time
    for tile in range(tl.program_id(0), _cdiv(n_cells, BLOCK_M), tl.num_programs(0)):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        live = (rows < n_cells)[:, None]
        r = rows.to(tl.int64)[:, None]
        # the network's input row [state, params]: the state is updated in place, the params stay
        y = tl.load(y0_ptr + r * N_STATES + cols[None, :], mask=live & is_state, other=0.0)
        y += tl.load(q_ptr + r * N_PARAMS + q_cols, mask=live & is_param, other=0.0)
        dst = out_ptr + r * N_STATES + cols[None, :]
        if KEEP_FIRST:
            tl.store(dst, y, mask=live & is_state)
            dst += one_save
        # one loop with the store inside: in a loop without stores Triton hoists the loads of biases and
        # scaling, and holding them in registers for the whole loop spills the 128-wide networks
        for step in range(1, n_keep * keep_every + 1):
            if not STAGE_WEIGHTS:
                ws = _weights(w_ptr, INTERPRETED)
            y += _net(y, ws, p_ptr, INTERPRETED)  # the increment is zero outside the state columns
            if step % keep_every == 0:
                tl.store(dst + (step // keep_every - 1) * one_save, y, mask=live & is_state)
'''

_ACTIVATION_FN = {"ReLU": "_relu", "LeakyReLU": "_leaky_relu", "ELU": "_elu", "SiLU": "_silu", "GELU": "_gelu",
                  "Tanh": "_tanh", "Sigmoid": "_sigmoid", "Softplus": "_softplus"}


def activation_source() -> str:
    """The kernels' activation functions ``_ACTIVATION_FN[name](z, DT, INTERPRETED)`` from the table
    (surrogates.activations): the float32 form rounded to ``DT``; in half precision on a GPU, the hardware-tanh
    form where the table has one."""
    out = []
    for name, fn in _ACTIVATION_FN.items():
        a = activations.TABLE[name]
        exact = f"_narrow({a.triton_f}, DT, INTERPRETED)"
        head = f"@triton.jit\ndef {fn}(z, DT: tl.constexpr, INTERPRETED: tl.constexpr):\n"
        if a.triton_half is None:
            out.append(f"{head}    return {exact}\n")
        else:
            half = "\n".join("        " + line for line in a.triton_half.splitlines())
            out.append(f"{head}    if not INTERPRETED and DT != tl.float32:\n{half}\n    else:\n        return {exact}\n")
    return "\n\n".join(out)


_TL_DTYPE = {"fp32": "tl.float32", "fp16": "tl.float16", "bf16": "tl.bfloat16"}
_PTR_TYPE = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


# ---------------------------------------------------------------- the network, as the kernels see it
def _padded(width: int) -> int:
    return max(MIN_WIDTH, 1 << (int(width) - 1).bit_length())


@dataclass(frozen=True)
class _Net:
    """A network's shape as the kernels see it: real and padded widths, activations and buffer offsets.

    ``widths`` = (n_inputs, hidden..., n_outputs); ``activations[l]`` follows linear layer ``l`` (the last
    one is the output activation or None). With ``rollout`` the output is padded to the input's width, so
    the increment adds onto the [state, params] row.
    """

    widths: tuple[int, ...]
    activations: tuple[str | None, ...]
    precision: str
    rollout: bool = False

    @classmethod
    def from_config(cls, config: dict, precision: str, rollout: bool = False) -> "_Net":
        prec = _check_precision(precision)
        try:
            n_in, n_out = int(config["n_inputs"]), int(config["n_outputs"])
            hidden = [(a, int(w)) for a, w in config["hidden"]]
            out_act = config.get("output_activation")
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"not a network config (MLP.config()): {config!r} ({exc})") from None
        if not hidden:
            raise InvalidInputError("the fused kernels need at least one hidden layer")
        for act in [a for a, _ in hidden] + ([out_act] if out_act is not None else []):
            if act not in _ACTIVATION_FN:
                raise InvalidInputError(f"the Triton kernels have no activation {act!r}; "
                                        f"valid: {sorted(_ACTIVATION_FN)}")
        widths = (n_in, *[w for _, w in hidden], n_out)
        for name, w in zip(["inputs"] + [f"hidden layer {i}" for i in range(len(hidden))] + ["outputs"], widths):
            if not 1 <= w <= MAX_WIDTH:
                raise InvalidInputError(f"the Triton kernels support widths 1 to {MAX_WIDTH}; {name} has {w} "
                                        f"(a {MAX_WIDTH}-wide tile is what fits the registers and shared memory)")
        return cls(widths, tuple(a for a, _ in hidden) + (out_act,), prec, rollout)

    @property
    def padded(self) -> tuple[int, ...]:
        p = [_padded(w) for w in self.widths]
        if self.rollout:
            p[-1] = p[0]
        return tuple(p)

    @property
    def k_in(self) -> int:
        return self.padded[0]

    @property
    def k_out(self) -> int:
        return self.padded[-1]

    def weight_offsets(self) -> list[int]:
        """Start of each layer's (K, N) block in the weight buffer, then its total length (elements)."""
        p, offs = self.padded, [0]
        for k, n in zip(p[:-1], p[1:]):
            offs.append(offs[-1] + k * n)
        return offs

    @property
    def stage_weights(self) -> bool:
        """Whether the kernels keep every weight in shared memory (see STAGED_WEIGHTS_MAX_BYTES)."""
        copies = 2 if self.precision == "fp32" else 1
        return self.weight_offsets()[-1] * torch_dtype(self.precision).itemsize * copies <= STAGED_WEIGHTS_MAX_BYTES

    def param_offsets(self) -> dict:
        """float32 buffer: in_center, in_halfwidth (k_in each), one bias per layer, out_center, out_scale."""
        p = self.padded
        at = 2 * p[0]
        biases = []
        for n in p[1:]:
            biases.append(at)
            at += n
        return {"inputs": 0, "biases": biases, "outputs": at, "size": at + 2 * p[-1]}

    def describe(self) -> str:
        acts = [a or "linear" for a in self.activations]
        layers = " -> ".join([str(self.widths[0])] + [f"{w} {a}" for w, a in zip(self.widths[1:], acts)])
        return f"{layers}; padded {' -> '.join(map(str, self.padded))}; {self.precision}"


def _check_precision(prec) -> str:
    try:
        name = canonical(prec)
    except InvalidInputError:
        name = None
    if name not in PRECISIONS:
        raise InvalidInputError(f"the Triton kernels have no precision {prec!r}; valid: {list(PRECISIONS)}")
    return name


def kernel_source(config: dict, precision: str = "fp16", rollout: bool = False) -> str:
    """The Triton source (a Python module) of both kernels for the network ``config`` (``MLP.config()``).

    ``rollout`` pads the output to the input's width, as :class:`TritonRollout` needs.
    """
    net = _Net.from_config(config, precision, rollout)
    return _source(net)


def _source(net: _Net) -> str:
    p, w_off, p_off = net.padded, net.weight_offsets(), net.param_offsets()
    dt = _TL_DTYPE[net.precision]
    n_layers = len(p) - 1
    weights = [
        "",
        "",
        "@triton.jit",
        "def _weights(w_ptr, INTERPRETED: tl.constexpr):",
        f'    """Every layer\'s padded, transposed weights: {[(k, n) for k, n in zip(p[:-1], p[1:])]}."""',
        "    return (",
        *[f"        _load_matrix(w_ptr + {w_off[i]}, {p[i]}, {p[i + 1]}, INTERPRETED)," for i in range(n_layers)],
        "    )",
    ]
    body = [
        "",
        "",
        "@triton.jit",
        "def _net(x, ws, p_ptr, INTERPRETED: tl.constexpr):",
        f'    """{net.describe()}.',
        "",
        f"    x: (BLOCK_M, {p[0]}) float32 inputs in physical units (padding columns zero); returns the",
        f"    (BLOCK_M, {p[-1]}) float32 outputs in physical units (padding columns zero).",
        '    """',
        f"    h = _narrow(_scale_inputs(x, p_ptr + {p_off['inputs']}, {p[0]}), {dt}, INTERPRETED)",
    ]
    for i in range(n_layers - 1):
        fn = _ACTIVATION_FN[net.activations[i]]
        body.append(f"    h = {fn}(_dense(h, ws[{i}], p_ptr + {p_off['biases'][i]}, {p[i + 1]}), {dt}, INTERPRETED)")
    last = f"_dense(h, ws[{n_layers - 1}], p_ptr + {p_off['biases'][-1]}, {p[-1]})"
    if net.activations[-1] is not None:  # on the float32 outputs: the accurate function
        last = f"{_ACTIVATION_FN[net.activations[-1]]}({last}, tl.float32, INTERPRETED)"
    body += [f"    z = {last}", f"    return _scale_outputs(z, p_ptr + {p_off['outputs']}, {p[-1]})"]
    header = f"# generated by inference.kernels.triton_mlp for {net.describe()} -- do not edit"
    prelude = _PRELUDE.replace("__FP32_INPUT_PRECISION__", repr(FP32_INPUT_PRECISION)).replace(
        "__EXACT_ACTIVATIONS__", tritonlib.EXACT_ACTIVATIONS.strip("\n") + "\n").replace(
        "__ACTIVATIONS__", activation_source())
    return header + "\n" + prelude + "\n".join(weights + body) + "\n" + _KERNELS


# ---------------------------------------------------------------- loading Triton and the generated module
def _triton():
    return tritonlib.triton()


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``) right now."""
    return tritonlib.interpreting()


def _module(net: _Net, interpreted: bool):
    """The generated module of ``net``, with its kernels decorated for the interpreter or for the GPU."""
    return tritonlib.load_module(_source(net), "mlp", interpreted,
                                 _patch_interpreter_loop_bounds if interpreted else None)


def _patch_interpreter_loop_bounds() -> None:
    """Let Triton 3.6's interpreter run ``range`` loops with run-time bounds under NumPy >= 2.4.

    The interpreter holds scalars as one-element arrays and turns a loop bound into an int with
    ``int(array)``, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"; upstream
    triton-lang/triton#9171, fixed there by squeezing). The fix is re-applied on top of the interpreter's
    own per-launch patching, and restored with it.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "squeezes_loop_bounds", False):  # a later Triton, or done
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.squeezes_loop_bounds = True
    interpreter._patch_lang_tensor = patch_lang_tensor


# ---------------------------------------------------------------- the shared part of both callables
def _check_model(model, net: _Net) -> list:
    layers = model.linear_layers()
    if len(layers) != len(net.widths) - 1:
        raise InvalidInputError(f"the model has {len(layers)} linear layers but its config describes "
                                f"{len(net.widths) - 1}")
    for i, lin in enumerate(layers):
        if tuple(lin.weight.shape) != (net.widths[i + 1], net.widths[i]) or lin.bias is None:
            raise InvalidInputError(f"linear layer {i} has weight {tuple(lin.weight.shape)} (bias: "
                                    f"{lin.bias is not None}); the config needs ({net.widths[i + 1]}, "
                                    f"{net.widths[i]}) with a bias")
    return layers


def _pack(model, net: _Net, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight buffer (precision's dtype) and the float32 buffer of biases and scaling, on ``device``."""
    layers = _check_model(model, net)
    p, w_off, p_off = net.padded, net.weight_offsets(), net.param_offsets()
    with torch.no_grad():
        w = torch.zeros(w_off[-1], dtype=torch.float64)
        prm = torch.zeros(p_off["size"], dtype=torch.float64)
        for i, lin in enumerate(layers):
            block = torch.zeros(p[i], p[i + 1], dtype=torch.float64)
            block[:net.widths[i], :net.widths[i + 1]] = lin.weight.detach().double().cpu().T
            w[w_off[i]:w_off[i + 1]] = block.reshape(-1)
            b = p_off["biases"][i]
            prm[b:b + net.widths[i + 1]] = lin.bias.detach().double().cpu()
        k, n = p[0], p[-1]
        prm[k:2 * k] = 1.0  # half-width of the padding inputs: 0 / 1, never 0 / 0
        for at, buf in ((0, model.in_center), (k, model.in_halfwidth)):
            prm[at:at + net.widths[0]] = buf.detach().double().cpu()
        o = p_off["outputs"]
        for at, buf in ((o, model.out_center), (o + n, model.out_scale)):  # padding outputs: centre 0, scale 0
            prm[at:at + net.widths[-1]] = buf.detach().double().cpu()
    return (w.to(device=device, dtype=torch_dtype(net.precision)).contiguous(),
            prm.to(device=device, dtype=torch.float32).contiguous())


class _FusedKernel:
    """What both callables share: the checked network, its packed buffers, its kernel and launch configuration."""

    _kernel_name: str  # in the generated module
    _rollout: bool     # pad the output to the input's width (the increment adds onto [state, params])
    _tune_rows: int    # rows (cells) of the probe that times each configuration

    def __init__(self, model, precision: str = "fp16", device="cuda", config: dict | None = None):
        try:
            model_config = model.config()
        except AttributeError:
            raise InvalidInputError(f"expected a surrogates.network.MLP, got {type(model).__name__}") from None
        self.net = _Net.from_config(model_config, precision, self._rollout)
        self.precision = self.net.precision
        self.device = torch.device(device)
        self.interpreted = interpreting()
        if self.interpreted and self.device.type != "cpu":
            raise InvalidInputError(f"under TRITON_INTERPRET=1 the kernels run on CPU tensors; "
                                    f"got device {self.device}")
        if not self.interpreted:
            if self.device.type != "cuda":
                raise InvalidInputError(f"the Triton kernels run on a CUDA device (or on the CPU under "
                                        f"TRITON_INTERPRET=1); got device {self.device}")
            if not torch.cuda.is_available():
                raise BackendUnavailableError("the Triton kernels need a CUDA GPU and torch sees none "
                                              "(set TRITON_INTERPRET=1 to run them on the CPU, slowly)")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        self._w, self._p = _pack(model, self.net, self.device)
        self._kernel = getattr(_module(self.net, self.interpreted), self._kernel_name)
        self.tuning: list[dict] = []
        if config is not None:
            try:
                block_m, num_warps = int(config["BLOCK_M"]), int(config["num_warps"])
            except (KeyError, TypeError, ValueError):
                raise InvalidInputError(f"config must be {{'BLOCK_M': int, 'num_warps': int}}, "
                                        f"got {config!r}") from None
            self.config = self._launch_config(block_m, num_warps)
        elif self.interpreted:
            self.config = self._launch_config(*CANDIDATES[0])
        else:
            self.config = self._search()

    # -- launch configuration
    def _launch_config(self, block_m: int, num_warps: int) -> dict:
        """``BLOCK_M``, ``num_warps`` and how many programs the persistent grid may hold."""
        if block_m < MIN_WIDTH or block_m & (block_m - 1):
            raise InvalidInputError(f"BLOCK_M must be a power of two >= {MIN_WIDTH}, got {block_m}")
        cfg = {"BLOCK_M": block_m, "num_warps": num_warps}
        if self.interpreted:
            return {**cfg, "max_programs": INTERPRETER_PROGRAMS}
        _triton()
        from triton.runtime import driver

        with torch.cuda.device(self.device):
            _, args, constexprs = self._bind(block_m, *self._probe_args(1))
            compiled = self._kernel.warmup(*args, grid=(1,), **constexprs, **self._options(cfg))
            compiled._init_handles()
            props = driver.active.utils.get_device_properties(self.device.index)
        threads = num_warps * props["warpSize"]
        per_sm = min(props["max_num_regs"] // max(1, compiled.n_regs * threads),
                     props["max_shared_mem"] // max(1, compiled.metadata.shared), 2048 // threads)
        return {**cfg, "max_programs": props["multiprocessor_count"] * max(1, per_sm), "programs_per_sm": per_sm,
                "registers": compiled.n_regs, "spills": compiled.n_spills, "shared_bytes": compiled.metadata.shared}

    def _search(self) -> dict:
        """Compile each candidate, drop those that do not fit or that spill (unless all do), keep the fastest
        on a probe."""
        _triton()
        from triton.runtime.errors import OutOfResources
        from triton.testing import do_bench

        configs, refused = [], []
        for block_m, num_warps in CANDIDATES:
            try:
                configs.append(self._launch_config(block_m, num_warps))
            except OutOfResources as exc:
                refused.append(f"BLOCK_M={block_m}, num_warps={num_warps}: {exc}")
        if not configs:
            raise BackendUnavailableError(f"no launch configuration of {self.net.describe()} fits "
                                          f"{torch.cuda.get_device_name(self.device)}: {'; '.join(refused)}")
        configs = [c for c in configs if not c["spills"]] or configs
        args = self._probe_args(self._tune_rows)
        for cfg in configs:
            with torch.cuda.device(self.device):
                ms = do_bench(lambda: self._launch(cfg, *args), warmup=5, rep=20, return_mode="median")
            self.tuning.append({**cfg, "ms": ms})
        best = min(self.tuning, key=lambda c: c["ms"])
        return {k: v for k, v in best.items() if k != "ms"}

    def _launch(self, cfg: dict, *launch):
        rows, args, constexprs = self._bind(cfg["BLOCK_M"], *launch)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self._kernel[(self._programs(rows, cfg),)](*args, **constexprs, **self._options(cfg))

    def _options(self, cfg: dict) -> dict:
        return {"num_warps": cfg["num_warps"], "num_stages": NUM_STAGES if self.net.stage_weights else 1}

    def _programs(self, n_rows: int, cfg: dict) -> int:
        return max(1, min(-(-n_rows // cfg["BLOCK_M"]), cfg["max_programs"]))

    def _probe_rows(self, n: int) -> torch.Tensor:
        """``n`` random (seeded) float32 rows inside the network's input box, for timing and compiling."""
        n_in, k = self.net.widths[0], self.net.k_in
        u = torch.rand(n, n_in, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return (self._p[:n_in].cpu() + self._p[k:k + n_in].cpu() * u).to(self.device)

    def _check_tensor(self, t: torch.Tensor, name: str, cols: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise InvalidInputError(f"{name} must be float32 (inputs and outputs stay float32 in every "
                                    f"precision), got {t.dtype}")
        if t.device != self.device:
            raise InvalidInputError(f"{name} is on {t.device} but the kernel's weights are on {self.device}; "
                                    "move it there")
        if t.ndim != 2 or t.shape[1] != cols:
            raise InvalidInputError(f"{name} must have shape (rows, {cols}), got {tuple(t.shape)}")
        return t.contiguous()


# ---------------------------------------------------------------- the public callables
class TritonMLP(_FusedKernel):
    """``model`` (a ``surrogates.network.MLP``) evaluated by one Triton kernel on tensor cores.

    ``precision``: ``fp32`` (tf32x3 products, exp-based activations; float32 accuracy), ``fp16`` or ``bf16``
    (weights and activations in half precision, float32 accumulation, hardware tanh). ``device``: a CUDA
    device, or ``cpu`` under ``TRITON_INTERPRET=1``. ``config``: ``{"BLOCK_M", "num_warps"}`` to skip the
    search at construction. ``__call__(x)``: x (rows, n_inputs) float32 in physical units on ``device`` ->
    (rows, n_outputs) float32.
    """

    _kernel_name, _rollout, _tune_rows = "mlp_kernel", False, TUNE_ROWS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_tensor(x, "x", self.net.widths[0])
        y = torch.empty((x.shape[0], self.net.widths[-1]), dtype=torch.float32, device=self.device)
        if x.shape[0]:
            self._launch(self.config, x, y)
        return y

    def _bind(self, block_m: int, x, y):
        """The kernel's arguments for the launch arguments ``(x, y)``: ``(rows, positional, constexprs)``."""
        return x.shape[0], (x, y, self._w, self._p, x.shape[0]), self._constexprs(block_m)

    def _constexprs(self, block_m: int) -> dict:
        n = self.net
        return {"N_IN": n.widths[0], "N_OUT": n.widths[-1], "K_IN": n.k_in, "K_OUT": n.k_out,
                "STAGE_WEIGHTS": n.stage_weights, "BLOCK_M": block_m, "INTERPRETED": self.interpreted}

    def _probe_args(self, rows: int):
        x = self._probe_rows(rows)
        return x, torch.empty((rows, self.net.widths[-1]), dtype=torch.float32, device=self.device)


class TritonRollout(_FusedKernel):
    """The ITNN rollout ``y <- y + model([y, params])`` for many steps in one Triton kernel.

    ``model`` maps ``n_states + n_params`` inputs to the increment of the ``n_states`` states (so
    ``n_outputs == n_states``). The state stays in float32 registers for every step; only the kept states
    are written. ``precision`` and ``config`` as for :class:`TritonMLP`.
    """

    _kernel_name, _rollout, _tune_rows = "rollout_kernel", True, TUNE_CELLS

    def __init__(self, model, n_states: int, precision: str = "fp32", device="cuda", config: dict | None = None):
        n_out, n_in = getattr(model, "n_outputs", None), getattr(model, "n_inputs", None)
        if n_out is None or n_in is None:
            raise InvalidInputError(f"expected a surrogates.network.MLP, got {type(model).__name__}")
        if isinstance(n_states, bool) or not isinstance(n_states, int) or n_states != n_out or n_in < n_out:
            raise InvalidInputError(f"n_states must equal the model's n_outputs ({n_out}: an ITNN returns the state's "
                                    f"increment) and be at most its n_inputs ({n_in}); got {n_states!r}")
        self.n_states, self.n_params = n_states, n_in - n_states
        super().__init__(model, precision, device, config)

    def __call__(self, y0: torch.Tensor, params: torch.Tensor, n_steps: int, keep_every: int = 1,
                 keep_first: bool = True) -> torch.Tensor:
        """Advance every cell ``n_steps`` steps; returns (K, N, n_states) float32 on the device.

        ``y0``: (N, n_states) initial states; ``params``: (N, n_params) per-cell parameters (float32, on the
        device). K = n_steps // keep_every (+ 1 with ``keep_first``, which keeps y0 first): the states after
        keep_every, 2 keep_every, ... steps, as ``surrogates.itnn.rollout`` returns them. Steps after the
        last kept one change nothing that is returned and are not taken.
        """
        for name, v, lo in (("n_steps", n_steps, 0), ("keep_every", keep_every, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2 ** 31:
                raise InvalidInputError(f"{name} must be an integer in [{lo}, 2**31), got {v!r}")
        y0 = self._check_tensor(y0, "y0", self.n_states)
        if isinstance(params, torch.Tensor) and params.ndim == 1 and params.shape[0] == y0.shape[0]:
            params = params.reshape(-1, 1)
        params = self._check_tensor(params, "params", self.n_params)
        if params.shape[0] != y0.shape[0]:
            raise InvalidInputError(f"params has {params.shape[0]} rows but y0 has {y0.shape[0]}")
        n_keep = n_steps // keep_every
        out = torch.empty((n_keep + bool(keep_first), y0.shape[0], self.n_states), dtype=torch.float32,
                          device=self.device)
        if out.numel():
            self._launch(self.config, y0, params, out, n_keep, keep_every, bool(keep_first))
        return out

    def _bind(self, block_m: int, y0, params, out, n_keep, keep_every, keep_first):
        """The kernel's arguments for the launch arguments: ``(rows, positional, constexprs)``."""
        q = params if self.n_params else y0  # no parameter is ever read; any valid pointer does
        return (y0.shape[0], (y0, q, out, self._w, self._p, y0.shape[0], n_keep, keep_every),
                self._constexprs(block_m, keep_first))

    def _constexprs(self, block_m: int, keep_first: bool = True) -> dict:
        return {"N_STATES": self.n_states, "N_PARAMS": self.n_params, "K_IN": self.net.k_in, "KEEP_FIRST": keep_first,
                "STAGE_WEIGHTS": self.net.stage_weights, "BLOCK_M": block_m, "INTERPRETED": self.interpreted}

    def _probe_args(self, cells: int):
        xs = self._probe_rows(cells)
        y0, q = xs[:, :self.n_states].contiguous(), xs[:, self.n_states:].contiguous()
        out = torch.empty((TUNE_STEPS + 1, cells, self.n_states), dtype=torch.float32, device=self.device)
        return y0, q if self.n_params else y0, out, TUNE_STEPS, 1, True


# ---------------------------------------------------------------- ahead-of-time compilation and ptxas figures
def ptx_report(config: dict, precision: str, arch: int = 90, kind: str = "mlp", block_m: int | None = None,
               num_warps: int | None = None) -> dict:
    """Compile a kernel for ``sm_<arch>`` without a GPU and read its resources off ``ptxas -v``.

    ``config``: a network config (``MLP.config()``); ``kind``: ``mlp`` or ``rollout`` (states = outputs);
    ``block_m``/``num_warps`` default to the first of :data:`CANDIDATES`. Returns the configuration, the
    registers per thread, spill stores/loads and stack frame (bytes), the shared memory the launch asks for
    (bytes, Triton's dynamic allocation; ``static_shared_bytes`` is what ptxas counts), and the tensor-core
    instructions in the PTX (``wgmma`` and ``mma.sync`` counts).
    """
    if kind not in ("mlp", "rollout"):
        raise InvalidInputError(f"unknown kernel kind {kind!r}; valid: ['mlp', 'rollout']")
    triton = _triton()
    from triton.backends.compiler import GPUTarget

    net = _Net.from_config(config, precision, rollout=kind == "rollout")
    block_m = block_m or CANDIDATES[0][0]
    num_warps = num_warps or CANDIDATES[0][1]
    fn = getattr(_module(net, interpreted=False), f"{kind}_kernel")
    ptr, w_ptr = "*fp32", _PTR_TYPE[net.precision]
    if kind == "mlp":
        names = ["x_ptr", "y_ptr", "w_ptr", "p_ptr", "n_rows"]
        types = [ptr, ptr, w_ptr, ptr, "i32"]
        constexprs = {"N_IN": net.widths[0], "N_OUT": net.widths[-1], "K_IN": net.k_in, "K_OUT": net.k_out}
    else:
        names = ["y0_ptr", "q_ptr", "out_ptr", "w_ptr", "p_ptr", "n_cells", "n_keep", "keep_every"]
        types = [ptr, ptr, ptr, w_ptr, ptr, "i32", "i32", "i32"]
        n_states = net.widths[-1]
        constexprs = {"N_STATES": n_states, "N_PARAMS": net.widths[0] - n_states, "K_IN": net.k_in, "KEEP_FIRST": True}
    constexprs.update(STAGE_WEIGHTS=net.stage_weights, BLOCK_M=block_m, INTERPRETED=False)
    num_stages = NUM_STAGES if net.stage_weights else 1
    signature = {**dict(zip(names, types)), **{k: "constexpr" for k in constexprs}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types) if t.startswith("*")}  # as torch allocates
    t0 = time.perf_counter()
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    compile_s = time.perf_counter() - t0
    ptx = compiled.asm["ptx"]
    figures = tritonlib.ptxas_figures(ptx)
    return {
        "kind": kind, "precision": net.precision, "network": net.describe(), "arch": figures.pop("target"),
        "BLOCK_M": block_m, "num_warps": num_warps, "num_stages": num_stages, "staged_weights": net.stage_weights,
        **figures, "shared_bytes": compiled.metadata.shared,
        "wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)), "mma_sync": len(re.findall(r"\bmma\.sync", ptx)),
        "tensor_cores": bool(re.search(r"\b(wgmma\.mma_async|mma\.sync)", ptx)), "compile_s": round(compile_s, 2),
    }


def ptxas_unavailable_reason() -> str | None:
    """Why :func:`ptx_report` cannot run here (no triton, or its ptxas does not start), or None."""
    return tritonlib.ptxas_unavailable_reason()
