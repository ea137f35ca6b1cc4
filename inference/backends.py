"""Inference backends behind one interface.

A backend ``prepare``s a trained network for a device and precision and returns a :class:`Runner` with

* ``device_input(x)``: the input placed where the backend computes (untimed set-up),
* ``run(xd)``: compute on already-placed input, returning a device-side result (timed as "kernel"),
* ``to_host(yd)``: the result as a NumPy array,

so the harness can time kernel-only (``run``) and end-to-end (``device_input`` + ``run`` + ``to_host``).
Every runner is checked against eager torch (float64 reference) within its precision's tolerance before
it is timed; a mismatch raises :class:`BackendMismatchError`. A backend whose library or hardware is
missing reports why through ``unavailable_reason`` and is skipped. A backend may also offer a fused
rollout of an iterative network (``prepare_rollout``); the others are rolled out step by step.
GPU libraries (CuPy, TensorRT, Triton) are imported only inside the backends that need them.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from core.errors import InvalidInputError, PipelineError
from core.io import write_bytes
from core.precision import precision

from .export import export_onnx, inference_copy, model_copy, torch_dtype

# Largest error against a float64 eager-torch reference, relative to each output's range. bfloat16 keeps 3
# significant bits fewer than float16: 8 times fp16's tolerance, as in the Triton kernels' tests (4e-2 was
# below what bf16 layers reach on the test network: 0.059 of the range with float32 scaling, first run on
# an H100 on 2026-11-27).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 0.16}


class BackendMismatchError(PipelineError, AssertionError):
    """A backend's outputs differ from eager torch beyond its precision's tolerance."""


class Runner:
    """A prepared network: ``device_input``, ``run`` and ``to_host`` (see the module docstring)."""

    def __init__(self, device_input, run, to_host, label=""):
        self.device_input, self.run, self.to_host, self.label = device_input, run, to_host, label

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.to_host(self.run(self.device_input(x)))


def ensemble_runner(runners: list[Runner], label: str = "") -> Runner:
    """The mean of several networks' runners on one backend and precision (a seed ensemble,
    ``surrogates.ensemble.Ensemble``): each member runs on the same device input, the outputs are summed on the
    device and divided by their number. What it costs is what it is: one network evaluation per member."""
    runners = list(runners)
    if len(runners) < 2:
        raise InvalidInputError(f"an ensemble runner needs at least 2 member runners, got {len(runners)}")
    first, m = runners[0], len(runners)

    def run(xd):
        out = first.run(xd)
        for r in runners[1:]:
            out = out + r.run(xd)
        return out / m

    return Runner(first.device_input, run, first.to_host, label)


class InferenceBackend(ABC):
    """One way of running a network. Subclasses set ``name``, ``device`` and ``precisions`` and fill in
    ``prepare``; ``warmup`` is how many untimed calls its runners need before they are steady."""

    name = ""
    device = "cpu"
    precisions: tuple[str, ...] = ("fp32",)
    warmup = 1

    def unavailable_reason(self) -> str | None:
        return None

    @abstractmethod
    def prepare(self, model, prec: str, workdir: Path) -> Runner:
        """A runner for ``model`` in ``prec``; ``workdir`` holds exported files and engine caches."""

    def prepare_rollout(self, model, n_states: int, prec: str, workdir: Path):
        """A fused rollout ``f(y0, params, n_steps, keep_every, keep_first) -> list of device arrays``, or
        ``None`` when this backend rolls out step by step through its :class:`Runner`."""
        return None


def _torch_runner(fn, device, dtype):
    def device_input(x):
        return torch.as_tensor(x, dtype=dtype).to(device)

    def to_host(y):
        return y.float().cpu().numpy()

    def run(xd):
        with torch.inference_mode():
            return fn(xd)

    return Runner(device_input, run, to_host)


TILE_ROWS = 8192  # rows per tile of the CPU torch path (4096-8192 fastest on the 2-vCPU VM, 1 and 2 threads)

_INPLACE = {  # activation -> in-place form; any other activation is applied out of place and copied back
    torch.nn.SiLU: lambda h, m: torch.nn.functional.silu(h, inplace=True),
    torch.nn.Sigmoid: lambda h, m: h.sigmoid_(),
    torch.nn.Tanh: lambda h, m: h.tanh_(),
    torch.nn.ReLU: lambda h, m: h.relu_(),
    torch.nn.LeakyReLU: lambda h, m: torch.nn.functional.leaky_relu_(h, m.negative_slope),
    torch.nn.ELU: lambda h, m: torch.nn.functional.elu_(h, m.alpha),
}


class TiledMLP:
    """The project's MLP evaluated on a CPU tile by tile: each layer one ``addmm`` into a buffer reused for
    every tile, activations in place, the input scaling folded into the first layer and the output scaling
    into the last (where no output activation follows it). The same function as ``model(x)`` up to the
    rounding of the folded products.

    Why: ``model(x)`` on a call of a million rows allocates a fresh (rows x width) tensor for every layer
    and activation and streams each through memory; on the 2-vCPU VM (float32, 4M rows of the 3x64 net) it
    ran at 0.5 M rows/s on one thread against 1.3-1.7 M rows/s this way (onnxruntime: 1.4).
    """

    def __init__(self, model, prec: str = "fp32", tile: int = TILE_ROWS):
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise InvalidInputError(f"tile must be a positive number of rows, got {tile!r}")
        dtype = torch_dtype(prec)
        if dtype not in (torch.float32, torch.float64):
            raise InvalidInputError(f"the tiled CPU path runs fp32 or fp64, not {prec!r}")
        m = model_copy(model, prec, "cpu")
        linears = m.linear_layers()
        mods = list(m.net)
        with torch.no_grad():
            w0, b0 = linears[0].weight, linears[0].bias
            w0f = w0 / m.in_halfwidth  # W (x - c) / h = (W / h) x - (W / h) c
            layers = [[w0f, b0 - w0f @ m.in_center]] + [[l.weight, l.bias] for l in linears[1:]]
            self.out_act = mods[-1] if not isinstance(mods[-1], torch.nn.Linear) else None
            self.out_center, self.out_scale = m.out_center.clone(), m.out_scale.clone()
            if self.out_act is None:  # c + s (W h + b) = (s W) h + (c + s b)
                w, b = layers[-1]
                layers[-1] = [w * self.out_scale[:, None], self.out_center + self.out_scale * b]
        self.layers = [(w.detach().t().contiguous(), b.detach().clone()) for w, b in layers]
        acts = [mods[i + 1] for i, mod in enumerate(mods[:-1]) if isinstance(mod, torch.nn.Linear)]
        self.acts = acts[:len(self.layers) - 1]
        self.dtype, self.tile = dtype, int(tile)

    def _act(self, mod, h):
        f = _INPLACE.get(type(mod))
        if f is None:
            h.copy_(mod(h))
        else:
            f(h, mod)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        rows = x.shape[0]
        out = torch.empty(rows, self.layers[-1][0].shape[1], dtype=self.dtype)
        t = min(self.tile, max(rows, 1))
        bufs = [torch.empty(t, w.shape[1], dtype=self.dtype) for w, _ in self.layers[:-1]]
        for i in range(0, rows, t):
            n = min(t, rows - i)
            h = x[i:i + n]
            for j, (w, b) in enumerate(self.layers):
                o = out[i:i + n] if j == len(self.layers) - 1 else bufs[j][:n]
                torch.addmm(b, h, w, out=o)
                if j < len(self.acts):
                    self._act(self.acts[j], o)
                h = o
        if self.out_act is not None:
            self._act(self.out_act, out)
            out.mul_(self.out_scale).add_(self.out_center)
        return out


def _is_mlp(model) -> bool:
    return all(hasattr(model, a) for a in ("linear_layers", "in_center", "in_halfwidth", "out_center", "out_scale", "net"))


def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32
    torch.backends.cudnn.allow_tf32 = False


class TorchEager(InferenceBackend):
    def __init__(self, device: str):
        self.device, self.name = device, "torch" if device == "cpu" else "torch_cuda"
        self.precisions = ("fp32",) if device == "cpu" else ("fp32", "fp16", "bf16")

    def unavailable_reason(self):
        if self.device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def prepare(self, model, prec, workdir):
        if self.device == "cuda":
            _no_tf32()
        elif _is_mlp(model):  # the CPU path: tiles through cache-sized buffers (TiledMLP)
            return _torch_runner(TiledMLP(model, prec), "cpu", torch.float32)
        return _torch_runner(inference_copy(model, prec, self.device), self.device, torch.float32)


def bucket(rows: int, smallest: int = 1024) -> int:
    """The padded size a shape-specialised backend is called with: the next power of two (>= ``smallest``)."""
    return max(smallest, 1 << max(0, int(rows - 1).bit_length()))


class TorchCompile(InferenceBackend):
    """torch.compile with CUDA graphs (mode="reduce-overhead"); GPU only.

    A compiled graph (and its CUDA graph) is specialised to one input shape, and every new shape costs a
    recompilation and a re-recording. The runner therefore pads each call to a power-of-two bucket, so a
    whole benchmark sees a handful of shapes, and needs a few untimed calls before it is steady (``warmup``).
    """

    name, device, precisions = "torch_compile", "cuda", ("fp32", "fp16", "bf16")
    warmup = 3

    def __init__(self, mode: str = "reduce-overhead"):
        self.mode = mode

    def unavailable_reason(self):
        return None if torch.cuda.is_available() else "torch.compile is benchmarked on the GPU; torch sees no CUDA device"

    def prepare(self, model, prec, workdir):
        _no_tf32()
        compiled = torch.compile(inference_copy(model, prec, "cuda"), mode=self.mode, dynamic=False)

        def fn(x):
            rows = x.shape[0]
            padded = bucket(rows)
            if padded != rows:
                x = torch.cat([x, x.new_zeros((padded - rows, x.shape[1]))])
            return compiled(x)[:rows].clone()  # the CUDA graph's output buffer is reused by the next call

        return _torch_runner(fn, "cuda", torch.float32)


class OnnxRuntime(InferenceBackend):
    def __init__(self, device: str = "cpu"):
        self.device, self.name = device, "onnxruntime" if device == "cpu" else "onnxruntime_cuda"
        self.precisions = ("fp32",) if device == "cpu" else ("fp32", "fp16")

    def unavailable_reason(self):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc})"
        if self.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a GPU machine)"
        return None

    def prepare(self, model, prec, workdir):
        import onnxruntime as ort

        path = export_onnx(model, Path(workdir) / f"model_{prec}.onnx", prec)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
        sess = ort.InferenceSession(str(path), opts, providers=[provider])
        dtype = np.float16 if prec == "fp16" else np.float32
        return Runner(lambda x: np.ascontiguousarray(x, dtype=dtype), lambda xd: sess.run(["y"], {"x": xd})[0],
                      lambda y: np.asarray(y, dtype=np.float32))


class TensorRT(InferenceBackend):
    """TensorRT engine built from the ONNX export (TensorRT 10/11 Python API, named I/O tensors).

    FP32 builds clear the TF32 flag, so FP32 means FP32. FP16: TensorRT 11 networks are strongly typed,
    so the FP16 engine is built from the FP16 ONNX graph; on TensorRT 10 the FP16 builder flag is also
    set. Engines are cached on disk, keyed by the ONNX file's hash, precision, GPU and TensorRT version.
    Written from the TensorRT documentation; it has never run (TensorRT cannot be installed on the
    machines this project was developed and measured on).
    """

    name, device, precisions = "tensorrt", "cuda", ("fp32", "fp16")
    MAX_BATCH = 1 << 24

    def unavailable_reason(self):
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:
            return f"tensorrt is not importable ({type(exc).__name__}: {exc})"
        return None if torch.cuda.is_available() else "TensorRT needs a CUDA device; torch sees none"

    def engine_path(self, onnx_path: Path, prec: str) -> Path:
        import tensorrt as trt

        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        gpu = torch.cuda.get_device_name().replace(" ", "_")
        return onnx_path.parent / f"engine_{digest}_{prec}_{gpu}_trt{trt.__version__}.plan"

    def build(self, onnx_path: Path, prec: str, max_batch: int):
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        major = int(trt.__version__.split(".")[0])
        # TensorRT 11: strongly typed (precision from the ONNX graph); 10: weakly typed plus builder flags
        strongly = major >= 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if prec == "fp16" and major < 11:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        n_in = network.get_input(0).shape[1]
        profile.set_shape("x", (1, n_in), (min(max_batch, 1 << 20), n_in), (max_batch, n_in))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
        return bytes(serialized)

    def prepare(self, model, prec, workdir):
        import tensorrt as trt

        onnx_path = export_onnx(model, Path(workdir) / f"model_{prec}.onnx", prec)
        plan = self.engine_path(onnx_path, prec)
        if not plan.exists():
            write_bytes(plan, self.build(onnx_path, prec, self.MAX_BATCH))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        context = engine.create_execution_context()
        dtype = torch_dtype(prec)
        n_out = model.n_outputs

        def run(xd):
            y = torch.empty((xd.shape[0], n_out), dtype=dtype, device="cuda")
            context.set_input_shape("x", tuple(xd.shape))
            context.set_tensor_address("x", xd.data_ptr())
            context.set_tensor_address("y", y.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return y

        r = _torch_runner(lambda x: x, "cuda", dtype)
        return Runner(lambda x: torch.as_tensor(x, dtype=dtype).cuda().contiguous(), run, r.to_host)


def _triton_reason() -> str | None:
    if not torch.cuda.is_available():
        return "the Triton kernels run on a CUDA GPU; torch sees none"
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


class FusedTriton(InferenceBackend):
    """Our whole-network Triton kernel on tensor cores (inference.kernels.triton_mlp): fp16/bf16 weights and
    activations with fp32 accumulation, or an exact fp32 path; I/O in fp32. Also a fused ITNN rollout."""

    name, device, precisions = "fused", "cuda", ("fp32", "fp16", "bf16")

    def unavailable_reason(self):
        return _triton_reason()

    def prepare(self, model, prec, workdir):
        from .kernels.triton_mlp import TritonMLP

        f = TritonMLP(model, prec, device="cuda")
        return Runner(lambda x: torch.as_tensor(x, dtype=torch.float32).cuda().contiguous(), f,
                      lambda y: y.float().cpu().numpy())

    def prepare_rollout(self, model, n_states, prec, workdir):
        from .kernels.triton_mlp import TritonRollout

        r = TritonRollout(model, n_states, prec, device="cuda")

        def rollout(y0, params, n_steps, keep_every, keep_first):
            y0 = torch.as_tensor(y0, dtype=torch.float32).cuda().contiguous()
            p = torch.as_tensor(params, dtype=torch.float32).cuda().contiguous()
            return [r(y0, p, n_steps, keep_every, keep_first)]

        return rollout


REGISTRY: dict[str, InferenceBackend] = {
    b.name: b for b in (TorchEager("cpu"), OnnxRuntime("cpu"), TorchEager("cuda"), TorchCompile(), OnnxRuntime("cuda"),
                        TensorRT(), FusedTriton())
}


def get_inference_backend(name: str) -> InferenceBackend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInputError(f"unknown inference backend {name!r}; valid: {sorted(REGISTRY)}") from None


def reference_outputs(model, x: np.ndarray) -> np.ndarray:
    """The float64 eager-torch outputs every backend is checked against."""
    ref_model = model_copy(model, "fp64", "cpu")
    with torch.no_grad():
        return ref_model(torch.as_tensor(x, dtype=torch.float64)).numpy()


def check_outputs(got: np.ndarray, ref: np.ndarray, prec: str, name: str) -> float:
    """Largest error of ``got`` against ``ref``, relative to each output's range; raises
    :class:`BackendMismatchError` past the precision's tolerance."""
    prec = precision(prec).name
    if got.shape != ref.shape:
        raise BackendMismatchError(f"backend {name} ({prec}) returned shape {got.shape}, expected {ref.shape}")
    span = np.maximum(ref.max(axis=0) - ref.min(axis=0), 1e-12)
    err = float((np.abs(got - ref) / span).max())
    if not np.isfinite(err) or err > TOLERANCE[prec]:
        raise BackendMismatchError(
            f"backend {name} ({prec}) differs from eager torch by {err:.3g} of the output range "
            f"(tolerance {TOLERANCE[prec]:g}); its timings would be meaningless")
    return err


def check_against_torch(model, runner: Runner, x: np.ndarray, prec: str, name: str) -> float:
    """Largest error of ``runner`` against a float64 eager-torch reference, relative to the output range;
    raises :class:`BackendMismatchError` past the precision's tolerance."""
    return check_outputs(runner(x), reference_outputs(model, x), prec, name)


def fastest_cpu_backend(model, rows: int = 65536, repeats: int = 5, workdir=None) -> tuple[str, dict]:
    """Time the CPU backends on ``rows`` random in-range rows of this network and return the faster name
    with each backend's rows/s. Each is checked against torch first."""
    import tempfile

    from .timing import time_cpu

    workdir = Path(workdir or tempfile.mkdtemp(prefix="cpu_backend_"))
    lo = (model.in_center - model.in_halfwidth).numpy()
    hi = (model.in_center + model.in_halfwidth).numpy()
    x = np.random.default_rng(0).uniform(lo, hi, size=(rows, len(lo))).astype(np.float32)
    rates = {}
    for name in ("torch", "onnxruntime"):
        b = REGISTRY[name]
        if b.unavailable_reason() is not None:
            continue
        r = b.prepare(model, "fp32", workdir / name)
        check_against_torch(model, r, x[:4096], "fp32", name)
        xd = r.device_input(x)
        rates[name] = rows / time_cpu(lambda: r.run(xd), repeats=repeats, warmup=1).median
    if not rates:
        raise PipelineError("no CPU inference backend can run here")
    return max(rates, key=rates.get), rates
