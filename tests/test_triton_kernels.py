"""The Triton tensor-core MLP and fused ITNN rollout (inference.kernels.triton_mlp).

On a CPU the kernels run through Triton's interpreter and are compiled ahead of time for sm_90 (ptxas
figures); the ``gpu`` tests run them on CUDA. References: the float64 eager-torch network, and
``surrogates.itnn.rollout``. Tolerances are fractions of each output's range over a probe batch.
"""
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton

from core.errors import InvalidInputError
from inference.kernels import triton_mlp
from inference.kernels.triton_mlp import TritonMLP, TritonRollout, kernel_source, ptx_report
from surrogates.itnn import rollout
from surrogates.network import ACTIVATIONS, MLP, activation

ROOT = Path(__file__).resolve().parents[1]
# Against float64: 1e-4 in fp32; 2e-2 in fp16 (11 significant bits in weights and activations); in bf16,
# which keeps 3 bits fewer, the same multiple of its rounding unit: 8 times that.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 0.16}
# Against that emulation of the half-precision network: rounding ties may flip a last bit here and there.
EMULATION_TOLERANCE = 1e-2

NETS = {
    "3x64": dict(n_inputs=4, n_outputs=2, hidden=[("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)]),
    "4x128": dict(n_inputs=4, n_outputs=2, hidden=[("SiLU", 128)] * 4),
    "2x64-tanh": dict(n_inputs=2, n_outputs=1, hidden=[("Tanh", 64)] * 2),
    "odd-widths": dict(n_inputs=3, n_outputs=5, hidden=[("GELU", 50), ("ELU", 20)]),
    "depth-1": dict(n_inputs=3, n_outputs=2, hidden=[("Softplus", 24)]),
    "depth-5": dict(n_inputs=5, n_outputs=3, hidden=[("ReLU", 32), ("LeakyReLU", 17), ("Tanh", 48), ("Sigmoid", 20),
                                                     ("SiLU", 40)], output_activation="Sigmoid"),
}


def make_net(n_inputs, n_outputs, hidden, output_activation=None, seed=0, gain=2.5, out_center=(-3.0, 3.0),
             out_scale=(0.5, 2.0)):
    """A network with random weights, random non-trivial input boxes and output scaling, and, like a trained
    surrogate, units and outputs that vary over the inputs without saturating.

    Weights are ``gain`` x torch's default initialisation (pre-activations of order 1 to 2: with less, stacked
    sigmoid layers barely vary and a half-precision test would measure the rounding of constants); the last
    layer is rescaled so that, over the input box, each output's pre-activation spans [-1, 1] ([-2, 2]
    before an output activation).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-5, 5, n_inputs)
    hi = lo + rng.uniform(0.1, 60, n_inputs)
    net = MLP(n_inputs, n_outputs, hidden, output_activation, input_range=(lo, hi),
              output_center=rng.uniform(*out_center, n_outputs), output_scale=rng.uniform(*out_scale, n_outputs))
    layers = net.linear_layers()
    with torch.no_grad():
        for lin in layers:
            lin.weight.mul_(gain)
            lin.bias.mul_(gain)
        u = 2 * torch.rand(4096, n_inputs, generator=torch.Generator().manual_seed(seed)) - 1
        z = net.net[:-1](u) if output_activation else net.net(u)
        lo_z, hi_z = z.min(0).values, z.max(0).values
        s = (4.0 if output_activation else 2.0) / (hi_z - lo_z)
        layers[-1].weight.mul_(s[:, None])
        layers[-1].bias.sub_((lo_z + hi_z) / 2).mul_(s)
    return net.eval()


def inputs(net, rows, seed=1):
    """``rows`` float32 rows inside the network's input box."""
    g = torch.Generator().manual_seed(seed)
    return net.in_center + net.in_halfwidth * (2 * torch.rand(rows, net.n_inputs, generator=g) - 1)


def reference(net, x):
    """The float64 eager-torch outputs."""
    with torch.no_grad():
        return copy.deepcopy(net).double()(x.double())


def rounded_like_the_kernel(net, x, prec):
    """The network with weights and hidden activations rounded to ``prec`` and float32 products and sums,
    as the interpreted kernel computes it (torch's activations, in float32)."""
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[prec]
    with torch.no_grad():
        h = ((x - net.in_center) / net.in_halfwidth).to(dt).float()
        layers, acts = net.linear_layers(), [a for a, _ in net.hidden]
        for i, lin in enumerate(layers):
            z = h @ lin.weight.to(dt).float().T + lin.bias
            if i < len(acts):
                h = activation(acts[i])(z).to(dt).float()
        if net.output_activation:
            z = activation(net.output_activation)(z)
        return net.out_center + net.out_scale * z


def output_range(net):
    """Each output's range (max - min) over a probe batch: the scale of the tolerances."""
    y = reference(net, inputs(net, 4096, seed=2))
    return (y.max(0).values - y.min(0).values).clamp_min(1e-12)


def rollout_tolerance(prec, n_steps, increment_range, ref):
    """(scale, fraction) per state for a rollout of ``n_steps``: fp32 within 1e-5 of the state's largest
    magnitude; fp16/bf16 within n_steps x the MLP's tolerance of the increment's range (each step's
    increment is within the MLP tolerance, and at worst the errors of the steps add up)."""
    if prec == "fp32":
        return ref.abs().amax((0, 1)), 1e-5
    return increment_range, n_steps * TOLERANCE[prec]


def assert_close(y, ref, scale, tol, what):
    err = ((y.double().cpu() - ref.double().cpu()).abs() / scale.cpu()).max().item()
    assert err <= tol, f"{what}: max error {err:.3g} of the scale (tolerance {tol:g})"


@pytest.fixture
def interpreter():
    """Triton's CPU interpreter, on for the test only.

    Triton 3.6 reads TRITON_INTERPRET through ``triton.knobs.runtime.interpret`` when ``@triton.jit``
    decorates a function; the kernels module decorates its generated kernels when first built, per mode.
    Setting the knob (which also sets the variable) inside ``knobs.runtime.scope()`` restores both after.
    """
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        assert triton_mlp.interpreting()
        yield


# ---------------------------------------------------------------- the MLP kernel, interpreted
@pytest.mark.parametrize("rows", [1, 37, 300])
@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", list(NETS))
def test_mlp_matches_float64_torch(interpreter, name, prec, rows):
    net = make_net(**NETS[name])
    x = inputs(net, rows)
    y = TritonMLP(net, prec, device="cpu")(x)
    assert y.shape == (rows, net.n_outputs) and y.dtype == torch.float32
    scale = output_range(net)
    assert_close(y, reference(net, x), scale, TOLERANCE[prec], f"{name} {prec} {rows} rows")
    if prec != "fp32":
        assert_close(y, rounded_like_the_kernel(net, x, prec), scale, EMULATION_TOLERANCE, f"{name} {prec} emulated")


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation(interpreter, act, prec):
    net = make_net(3, 2, [(act, 32), (act, 24)], output_activation=act, gain=3.0)
    x = inputs(net, 45)
    y, scale = TritonMLP(net, prec, device="cpu")(x), output_range(net)
    assert_close(y, reference(net, x), scale, TOLERANCE[prec], f"{act} {prec}")
    if prec != "fp32":
        assert_close(y, rounded_like_the_kernel(net, x, prec), scale, EMULATION_TOLERANCE, f"{act} {prec} emulated")


def test_mlp_edge_cases(interpreter):
    net = make_net(**NETS["3x64"])
    f = TritonMLP(net, "fp32", device="cpu")
    assert f(torch.empty(0, 4)).shape == (0, 2)
    x = inputs(net, 40)
    assert torch.equal(f(x[::2]), f(x[::2].contiguous()))  # strided input is made contiguous
    with pytest.raises(InvalidInputError, match="float32"):
        f(x.double())
    with pytest.raises(InvalidInputError, match=r"\(rows, 4\)"):
        f(x[:, :3])


# ---------------------------------------------------------------- the rollout kernel, interpreted
def itnn_net(seed=0):
    """An ITNN: [2 states, 2 params] -> the states' increments, small against the states and centred on 0."""
    return make_net(4, 2, [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], seed=seed, out_center=(-0.01, 0.01),
                    out_scale=(0.02, 0.05))


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n_steps,keep_every,keep_first", [(6, 1, True), (7, 3, False), (9, 4, True)])
def test_rollout_matches_surrogates_rollout(interpreter, prec, n_steps, keep_every, keep_first):
    net = itnn_net()
    xs = inputs(net, 37)  # an odd number of cells, not a multiple of the block
    y0, params = xs[:, :2].contiguous(), xs[:, 2:].contiguous()
    ref = torch.as_tensor(rollout(net, y0.numpy(), params.numpy(), n_steps, keep_every), dtype=torch.float64)
    if not keep_first:
        ref = ref[1:]
    out = TritonRollout(net, 2, prec, device="cpu")(y0, params, n_steps, keep_every, keep_first)
    assert out.shape == ref.shape and out.dtype == torch.float32
    scale, tol = rollout_tolerance(prec, n_steps, output_range(net), ref)
    assert_close(out, ref, scale, tol, f"rollout {prec} {n_steps}/{keep_every}")


def test_rollout_edge_cases(interpreter):
    net = itnn_net()
    r = TritonRollout(net, 2, "fp32", device="cpu")
    y0, params = inputs(net, 5)[:, :2].contiguous(), inputs(net, 5)[:, 2:].contiguous()
    assert torch.equal(r(y0, params, 0, 1)[0], y0)
    assert r(y0, params, 2, 5, keep_first=False).shape == (0, 5, 2)
    with pytest.raises(InvalidInputError, match="keep_every"):
        r(y0, params, 4, 0)
    with pytest.raises(InvalidInputError, match="n_outputs"):
        TritonRollout(net, 3, "fp32", device="cpu")
    with pytest.raises(InvalidInputError, match="rows"):
        r(y0, params[:4], 2)


def test_the_compile_probe_binds_every_kernel_argument(interpreter):
    """On a GPU each launch configuration is compiled by ``kernel.warmup`` from the probe's arguments before
    any launch; the interpreter never compiles, so the binding is checked here against the kernel's
    signature (a probe that passed only the launch arguments failed every GPU construction once)."""
    import inspect

    net = itnn_net()
    for f in (TritonMLP(net, "fp16", device="cpu"), TritonRollout(net, 2, "fp16", device="cpu")):
        rows, args, constexprs = f._bind(64, *f._probe_args(3))
        fn = getattr(f._kernel, "fn", f._kernel)
        bound = inspect.signature(fn).bind(*args, **constexprs)  # TypeError names what is missing
        assert rows == 3 and set(bound.arguments) == set(inspect.signature(fn).parameters)


# ---------------------------------------------------------------- checks that need no kernel run
def test_clear_errors_for_what_the_kernels_cannot_do():
    cfg = make_net(**NETS["3x64"]).config()
    with pytest.raises(InvalidInputError, match=r"no activation 'Mish'; valid: \['ELU', 'GELU'"):
        kernel_source({**cfg, "hidden": [["Mish", 32]]})
    with pytest.raises(InvalidInputError, match="widths 1 to 128; hidden layer 0 has 256"):
        TritonMLP(make_net(4, 2, [("ReLU", 256)]), "fp16", device="cpu")
    with pytest.raises(InvalidInputError, match=r"no precision 'fp64'; valid: \['fp32', 'fp16', 'bf16'\]"):
        TritonMLP(make_net(**NETS["3x64"]), "fp64")


def test_generated_source_has_one_line_per_layer():
    src = kernel_source(make_net(**NETS["depth-5"]).config(), "fp16")
    assert src.count("_dense(h, ws[") == 6
    assert "_leaky_relu(_dense(h, ws[1], " in src and "z = _sigmoid(_dense(h, ws[5]" in src  # output activation
    compile(src, "<generated>", "exec")


def test_import_and_clear_error_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import inference.kernels.triton_mlp as t\n"
            "from surrogates.network import MLP\n"
            "try:\n"
            "    t.TritonMLP(MLP(2, 1, [('Tanh', 16)]), 'fp16')\n"
            "except t.BackendUnavailableError as e:\n"
            "    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "triton" in res.stdout and "pip install" in res.stdout


# ---------------------------------------------------------------- ahead-of-time compilation for sm_90
@pytest.fixture(scope="module")
def ptxas():
    reason = triton_mlp.ptxas_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("name,prec,kind", [(n, p, "mlp") for n in ("3x64", "4x128") for p in ("fp16", "fp32")]
                         + [(n, "fp16", "rollout") for n in ("3x64", "4x128")])
def test_ptx_report_sm90(ptxas, name, prec, kind):
    r = ptx_report(make_net(**NETS[name]).config(), prec, arch=90, kind=kind)
    print(f"\n{kind} {name} {prec} {r['arch']} BLOCK_M={r['BLOCK_M']} num_warps={r['num_warps']} "
          f"stages={r['num_stages']} staged={r['staged_weights']}: {r['registers']} registers, spills "
          f"{r['spill_stores']}/{r['spill_loads']} B, stack {r['stack_frame']} B, shared {r['shared_bytes']} B, "
          f"wgmma {r['wgmma']}, mma.sync {r['mma_sync']}, ptxas notes {r['ptxas_notes']}")
    assert r["arch"].startswith("sm_90") and 0 < r["registers"] <= 255
    assert r["shared_bytes"] <= 227 * 1024  # what an H100 block may have
    assert r["tensor_cores"]
    if prec == "fp16":
        assert r["spill_stores"] == r["spill_loads"] == 0
        assert r["wgmma"] > 0


# ---------------------------------------------------------------- on a GPU
@pytest.mark.gpu
def test_gpu_kernels_match_torch():
    """Both kernels on CUDA tensors, configured by the search at construction, against torch: the float64
    network on the CPU, and surrogates.itnn.rollout with the float32 network on the GPU."""
    gpu = torch.cuda.get_device_name()
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        for name in ("3x64", "4x128", "depth-5"):
            net = make_net(**NETS[name])
            x = inputs(net, 100_003)  # many tiles per program of the persistent grid, and a partial tile
            ref, scale = reference(net, x), output_range(net)
            net.cuda()
            for prec in ("fp32", "fp16", "bf16"):
                f = TritonMLP(net, prec, device="cuda")
                assert_close(f(x.cuda()), ref, scale, TOLERANCE[prec], f"{name} {prec} {f.config} on {gpu}")
        net = itnn_net()
        xs, increment_range = inputs(net, 20_001), output_range(net)
        y0, params = xs[:, :2].contiguous(), xs[:, 2:].contiguous()
        net.cuda()
        ref = torch.as_tensor(rollout(net, y0.numpy(), params.numpy(), 100, 10), dtype=torch.float64)
        for prec in ("fp32", "fp16", "bf16"):
            r = TritonRollout(net, 2, prec, device="cuda")
            out = r(y0.cuda(), params.cuda(), 100, 10)
            assert out.shape == ref.shape
            scale, tol = rollout_tolerance(prec, 100, increment_range, ref)
            assert_close(out, ref, scale, tol, f"rollout {prec} {r.config} on {gpu}")
