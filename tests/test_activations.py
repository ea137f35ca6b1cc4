"""The activation table (surrogates.activations) and every implementation checked against it: the torch modules
of the network, the training engine's hand-written forms, the compiled CPU steps (cpu_step.cpp), the Triton
training steps and the Triton inference kernels (through Triton's interpreter)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import triton

from core.errors import InvalidInputError
from inference.kernels import triton_mlp
from surrogates import activations, network, tritonlib
from training import engine, triton_step
from surrogates.activations import TABLE
from training.cpu_step import CODES
from training.engine import MLPEngine
from surrogates.network import MLP
from test_cpu_step import cpu_step  # noqa: F401  (the fixture: the built extension; skips without a C++ compiler)

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(TABLE)
# both sides of 0 (the kinks) and of Softplus' threshold 20, large magnitudes (no overflow), and 0 itself
F64 = {"rtol": 1e-9, "atol": 1e-12}  # float64 implementations: their rounding only
Z = np.concatenate([np.linspace(-8.0, 8.0, 161), [-60.0, -30.0, -19.5, 0.0, 19.5, 20.5, 30.0, 60.0]])


def test_every_implementation_offers_exactly_the_table_s_activations():
    enums = re.findall(r"prefixItems: \[\{enum: \[([^\]]*)\]", (ROOT / "core" / "config.schema.yaml").read_text())
    assert len(enums) == 1 and sorted(n.strip() for n in enums[0].split(",")) == NAMES
    assert sorted(network.ACTIVATIONS) == NAMES
    assert sorted(engine.ACTIVATIONS) == NAMES
    assert sorted(k for k in CODES if k not in (None, "identity")) == NAMES
    assert sorted(triton_step.ACTIVATIONS) == NAMES
    assert sorted(triton_mlp._ACTIVATION_FN) == NAMES
    with pytest.raises(InvalidInputError, match=r"unknown activation 'Swish'; valid: \['ELU', 'GELU'"):
        activations.get("Swish")


def test_the_cpp_enum_is_the_table_s_codes():
    """cpu_step.cpp is written by hand: its ``enum Act`` must number the activations as the table does."""
    src = (ROOT / "training" / "cpu_step.cpp").read_text()
    enum = re.search(r"enum Act : int64_t \{([^}]*)\}", src).group(1)
    members = [m.split("=")[0].strip() for m in enum.split(",")]
    assert members[0] == "IDENTITY" and "IDENTITY = 0" in enum
    assert {m: i for i, m in enumerate(members) if i} == {a.cpp: a.code for a in TABLE.values()}
    for a in TABLE.values():  # each one has its case in both of the layer's loops
        assert src.count(f"case {a.cpp}:") == 2, a.cpp


@pytest.mark.parametrize("name", NAMES)
def test_the_table_s_derivatives_are_those_of_its_function(name):
    a, h = TABLE[name], 1e-6
    z = Z[np.abs(Z) > 1e-3]  # away from the kinks at 0
    z = z[np.abs(z - 20.0) > 1e-3]
    np.testing.assert_allclose(a.df(z), (a.f(z + h) - a.f(z - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.d2f(z), (a.df(z + h) - a.df(z - h)) / (2 * h), rtol=1e-5, atol=1e-7)
    assert np.isfinite(a.f(Z)).all() and np.isfinite(a.df(Z)).all() and np.isfinite(a.d2f(Z)).all()


@pytest.mark.parametrize("name", NAMES)
def test_the_network_s_torch_module_and_its_autograd_derivatives_are_the_table_s(name):
    a = TABLE[name]
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    y = network.activation(name)(z)
    (d,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    (dd,) = torch.autograd.grad(d.sum(), z)
    np.testing.assert_allclose(y.detach().numpy(), a.f(Z), **F64)
    np.testing.assert_allclose(d.detach().numpy(), a.df(Z), **F64)
    smooth = (Z != 0.0) if name in ("ReLU", "LeakyReLU", "ELU") else np.ones_like(Z, bool)
    np.testing.assert_allclose(dd.numpy()[smooth], a.d2f(Z)[smooth], **F64)


@pytest.mark.parametrize("name", NAMES)
def test_the_engine_s_forms_are_the_table_s(name):
    a, act = TABLE[name], engine.ACTIVATIONS[name]
    z = torch.tensor(Z, dtype=torch.float64)
    buf = [torch.empty_like(z) for _ in range(5)]
    f = act.f(z, buf[0]).clone()
    np.testing.assert_allclose(f.numpy(), a.f(Z), **F64)
    np.testing.assert_allclose(act.df(z, f, buf[1]).numpy(), a.df(Z), **F64)
    np.testing.assert_allclose(act.d2f(z, f, buf[2]).numpy(), a.d2f(Z), **F64)
    g = torch.linspace(-1.0, 2.0, len(Z), dtype=torch.float64)
    np.testing.assert_allclose(act.backward(g, z, f, buf[3]).numpy(), g.numpy() * a.df(Z), **F64)
    zt = torch.linspace(0.5, -1.5, len(Z), dtype=torch.float64)
    av, d1, at, q = (torch.empty_like(z) for _ in range(4))
    c = act.tangent(z, zt, av, d1, at, q, buf[4])
    np.testing.assert_allclose(av.numpy(), a.f(Z), **F64)
    np.testing.assert_allclose(d1.numpy(), a.df(Z), **F64)
    np.testing.assert_allclose(at.numpy(), a.df(Z) * zt.numpy(), **F64)
    np.testing.assert_allclose(c * q.numpy(), a.d2f(Z) * zt.numpy(), **F64)


@pytest.mark.parametrize("name", NAMES)
def test_the_compiled_cpu_steps_compute_the_table_s_values_and_derivatives(cpu_step, name):
    """cpu_step.cpp's layer loops through its forward pass with tangents, in float64: a first layer of identity
    weights and zero biases makes the pre-activation each input itself and its tangent 1, so the first layer's
    arrays are f, f' and f'' (its value loop, act_row, is the same code: the data steps' tests check it)."""
    a = TABLE[name]
    w = 3
    net = MLP(1, 1, [(name, w), ("Tanh", 2)], input_range=([-1.0], [1.0])).double()
    with torch.no_grad():
        net.linear_layers()[0].weight.fill_(1.0)
        net.linear_layers()[0].bias.zero_()
    eng = MLPEngine(net, len(Z))
    step = cpu_step.CpuTangentStep(eng)
    xs = torch.tensor(Z, dtype=torch.float64)[:, None]
    assert torch.equal(eng.scale_x(xs), xs)
    n = len(Z)
    step._call(step.module.tangent_forward, xs, torch.ones_like(xs), step.W, step.b, step.acts, step.AA, step.DQ)
    value, tangent = step.AA[0][:n].numpy(), step.AA[0][n:2 * n].numpy()
    d1, q = step.DQ[0][:n].numpy(), step.DQ[0][n:2 * n].numpy()
    for j in range(w):
        np.testing.assert_allclose(value[:, j], a.f(Z), **F64)
        np.testing.assert_allclose(d1[:, j], a.df(Z), **F64)
        np.testing.assert_allclose(tangent[:, j], a.df(Z), **F64)
        np.testing.assert_allclose(q[:, j], a.d2f(Z), **F64)


# ---------------------------------------------------------------- the Triton spellings, through the interpreter
_PROBE = '''
import triton
import triton.language as tl

__HELPERS__

__FUNCTIONS__


@triton.jit
def probe(z_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    z = tl.load(z_ptr + i)
__BODY__
'''


def _run_probe(functions: str, body: list[str], outputs: int, stem: str, helpers: str) -> np.ndarray:
    n = 256
    src = (_PROBE.replace("__HELPERS__", helpers).replace("__FUNCTIONS__", functions)
           .replace("__BODY__", "\n".join("    " + line for line in body)))
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        module = tritonlib.load_module(src, stem, interpreted=True)
        z = torch.zeros(n, dtype=torch.float32)
        z[:len(Z)] = torch.tensor(Z, dtype=torch.float32)
        out = torch.zeros(outputs * n, dtype=torch.float32)
        module.probe[(1,)](z, out, N=n)
    return out.view(-1, n)[:, :len(Z)].double().numpy()


@pytest.mark.parametrize("name", NAMES)
def test_the_triton_training_step_s_functions_are_the_table_s(name):
    a = TABLE[name]
    body = [f"a = _f_{name}(z)", f"d = _d_{name}(z, a)", f"dd = _dd_{name}(z, a, d)",
            "tl.store(out_ptr + i, a)", "tl.store(out_ptr + N + i, d)", "tl.store(out_ptr + 2 * N + i, dd)"]
    f, d, dd = _run_probe(activations.triton_source(), body, 3, f"probe_step_{name}", tritonlib.EXACT_ACTIVATIONS)
    z32 = Z.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(f, a.f(z32), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(d, a.df(z32), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dd, a.d2f(z32), rtol=2e-5, atol=2e-6)
    assert triton_step._prelude().count(f"def _f_{name}(z):") == 1


@pytest.mark.parametrize("name", NAMES)
def test_the_triton_inference_kernel_s_function_is_the_table_s(name):
    """The kernels' float32 form (the interpreter runs the exact forms; the hardware-tanh forms run on a GPU
    only, where the kernels' own GPU tests check them). Softplus is z itself above the threshold, exactly."""
    a, fn = TABLE[name], triton_mlp._ACTIVATION_FN[name]
    helpers = triton_mlp._PRELUDE.split("__EXACT_ACTIVATIONS__")[0].split("import triton.language as tl")[1]
    functions = helpers + tritonlib.EXACT_ACTIVATIONS + "\n\n" + triton_mlp.activation_source()
    (f,) = _run_probe(functions.replace("__FP32_INPUT_PRECISION__", '"ieee"'),
                      [f"tl.store(out_ptr + i, {fn}(z, tl.float32, True))"], 1,
                      f"probe_mlp_{name}", "")
    z32 = Z.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(f, a.f(z32), rtol=2e-6, atol=2e-6)
    if name == "Softplus":
        assert (f[z32 > 20.0] == z32[z32 > 20.0]).all()
