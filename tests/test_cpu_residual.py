"""The ODE residual's loss and gradient as one compiled loop (training.cpu_residual), generated from the model,
and the residual step that calls it from inside one compiled call (training.cpu_step.CpuResidualStep).

The reference is the residual's definition differentiated by autograd in float64: ``mean(((scale zt) -
f(center + scale z, params(x))) / scale)^2)`` with ``f`` the model's torch right-hand side, not the closed
form the kernel shares its Jacobian statements with.
"""
import ctypes

import numba  # noqa: F401  (pinned: a missing one fails here, not as skips)
import numpy as np
import pytest
import torch

import solvers
from surrogates.problems import Problem
from training import cpu_residual
from training.cpu_residual import kernel_source, residual_kernel

FHN = solvers.get_model("fhn")
HH = solvers.get_model("hh")

PROBLEMS = {
    # the paper's C: I from an input column
    "C": Problem("C", "trajectory", FHN, ("t", "u0", "w0", "I"), ("u", "w"), t_end=20.0,
                 ranges={"u0": (-0.1, 0.81), "w0": (0.0, 0.12), "I": (0.08, 0.12)}),
    # outputs in another order than the model's states, I fixed by the problem
    "swapped": Problem("swapped", "trajectory", FHN, ("t", "u0", "w0"), ("w", "u"), fixed={"I": 0.1}, t_end=20.0,
                       ranges={"u0": (-0.1, 0.81), "w0": (0.0, 0.12)}),
    # four states, vtrap and its derivative, a parameter from a column and the rest the model's defaults
    "hh": Problem("hh", "trajectory", HH, ("t", "V0", "I_stim"), ("V", "m", "h", "n"), t_end=5.0,
                  ranges={"V0": (-80.0, 30.0), "I_stim": (0.0, 15.0)}),
}
SCALES = {"C": ([0.4, 0.05], [0.5, 0.06]), "swapped": ([0.05, 0.4], [0.06, 0.5]),
          "hh": ([-50.0, 0.3, 0.4, 0.4], [40.0, 0.3, 0.3, 0.2])}


def _reference(p, x, z, zt, center, scale):
    x, z, zt = (t.double() for t in (x, z, zt))
    center, scale = torch.tensor(center, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    z, zt = z.requires_grad_(True), zt.requires_grad_(True)
    y = center + scale * z
    order = [p.outputs.index(s) for s in p.model.state_names]
    f = p.model.torch_rhs(y[:, order], p.parameters(p.columns(x)))
    f = f[:, [p.model.state_names.index(o) for o in p.outputs]]
    loss = torch.mean(((scale * zt - f) / scale) ** 2)
    gz, gzt = torch.autograd.grad(loss, (z, zt))
    return loss.detach(), gz, gzt


def _tiles(kernel, x, z, zt, center, scale, cuts):
    """The kernel's C callback over the rows in pieces (as the compiled residual step calls it, through its
    address): the loss and the gradients, each piece adding to the running sum the last returned."""
    x, z, zt = (np.ascontiguousarray(t.double().numpy()) for t in (x, z, zt))
    oc, os_ = np.array(center, dtype=np.float64), np.array(scale, dtype=np.float64)
    gz, gzt = np.full_like(z, np.nan), np.full_like(z, np.nan)
    proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                             *[ctypes.c_void_p] * 7)
    tile = proto(kernel.tile.address)
    n, k = z.shape
    c, acc = 2.0 / (n * k), 0.0
    for a, b in zip([0, *cuts], [*cuts, n]):
        acc = tile(b - a, x.shape[1], c, acc, *(t[a:].ctypes.data for t in (z, zt, x)), oc.ctypes.data,
                   os_.ctypes.data, gz[a:].ctypes.data, gzt[a:].ctypes.data)
    return acc / (n * k), torch.from_numpy(gz), torch.from_numpy(gzt)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_the_compiled_residual_equals_the_definition_differentiated(name):
    p = PROBLEMS[name]
    center, scale = SCALES[name]
    g = torch.Generator().manual_seed(0)
    n, k = 333, len(p.outputs)
    lo, hi = (torch.tensor(b) for b in p.box())
    x = (lo + (hi - lo) * torch.rand(n, len(p.inputs), generator=g)).float()
    if name == "hh":  # points on vtrap's removable singularities (V = -40, -55 mV: alpha_m, alpha_n)
        x[:4, 1] = torch.tensor([-40.0, -55.0, -40.0, -55.0])
    z = torch.randn(n, k, generator=g)
    zt = torch.randn(n, k, generator=g)
    if name == "hh":  # states at the singularities: z of V from the chosen V0 values
        z[:4, 0] = (x[:4, 1] - center[0]) / scale[0]
    want = _reference(p, x, z, zt, center, scale)
    kernel = residual_kernel(p)
    # the loop over every row at once (the cotangents scaled by 2 / N, the loss the mean)
    gz, gzt = np.empty((n, k)), np.empty((n, k))
    loss = kernel.rows(z.double().numpy(), zt.double().numpy(), x.double().numpy(), np.array(center),
                       np.array(scale), gz, gzt, 2.0 / (n * k), 0.0) / (n * k)
    got = [loss, torch.from_numpy(gz), torch.from_numpy(gzt)]
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-9)
    for a, b in zip(got[1:], want[1:]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max()))
    # the C callback in ragged pieces: the same loss (the same sum in the same order) and the same gradients
    tiled = _tiles(kernel, x, z, zt, center, scale, cuts=[1, 128, 300])
    assert tiled[0] == got[0]
    assert torch.equal(tiled[1], got[1]) and torch.equal(tiled[2], got[2])


def test_the_kernel_is_generated_from_the_model_and_the_problem():
    src = kernel_source(PROBLEMS["swapped"])
    assert "I = F(0.1)" in src  # the problem's fixed value, not the model's default 0.08
    assert "u = F(_oc[1]) + F(_os[1]) * F(_z[_i, 1])" in src  # u is the network's second output
    assert "I = F(_x[_i, 3])" in kernel_source(PROBLEMS["C"])
    assert "g_Na = F(120.0)" in kernel_source(PROBLEMS["hh"])  # a default


@pytest.mark.parametrize("closed_form", [True, False])
def test_the_compiled_path_takes_the_kernel_where_the_model_has_a_closed_form_jacobian(closed_form, monkeypatch):
    """engine "cpp" (compiled steps set on the engine): the whole residual step as one compiled call with the
    kernel; without the compiled loop the residual's closed-form gradient is torch operators between the two
    calls of the tangent step; the plain fused engine never calls either.
    (That training on the kernel ends where the torch operators end: tests/test_cpu_step.py, the PINN test.)"""
    from training import cpu_step
    from training.engine import MLPEngine
    from surrogates.losses import ODEResidualLoss
    from surrogates.network import MLP

    calls = []

    class OneCall:  # stands in for cpu_step.CpuResidualStep
        def __init__(self, engine, kernel, tile=None):
            self.kernel = kernel

        def __call__(self, x, v, weight=1.0):
            calls.append(("one call", self.kernel, x.shape))
            return torch.zeros(())

    class TwoCalls:  # stands in for cpu_step.CpuTangentStep
        rows = 10**9

        def __call__(self, xs, vs, residual_grad, weight=1.0):
            calls.append(("two calls", residual_grad, xs.shape))
            return torch.zeros(())

    monkeypatch.setattr(cpu_step, "CpuResidualStep", OneCall)
    p = PROBLEMS["C"]
    if not closed_form:  # no compiled loop (as without Numba); the model's closed form stays (torch operators)
        monkeypatch.setattr(cpu_residual, "kernel_source", lambda problem: None)
        assert residual_kernel(p) is None and p.model.has_jacobian()
    m = MLP(4, 2, [("Tanh", 8)], input_range=p.box(), output_center=[0.4, 0.05], output_scale=[0.5, 0.06])
    eng = MLPEngine(m, 64)
    loss = ODEResidualLoss(p, 64, "sobol", seed=0)
    eng.tangent_kernel, eng.residual_kernel = TwoCalls(), cpu_step.residual_steps(eng)
    loss.fused(eng)(1.0)
    assert len(calls) == 1 and calls[0][2] == (64, 4)
    if closed_form:
        assert calls[0][0] == "one call" and calls[0][1] is residual_kernel(p)
    else:
        assert calls[0][0] == "two calls" and callable(calls[0][1])
    eng.tangent_kernel = eng.residual_kernel = None  # the plain fused engine: torch operators
    loss.fused(eng)(1.0)
    assert len(calls) == 1


def test_the_trainer_on_the_compiled_steps_takes_the_kernel(tmp_path, monkeypatch):
    """Through the Trainer (engine "cpp", what "auto" picks on a CPU): every step's ODE residual goes through
    the one-call compiled residual step. (A first version built the losses' steps before setting the compiled
    kernels on the engine, so training never reached it while the direct tests passed.)"""
    from test_engine import _pinn_trainer

    from training.cpu_step import CpuResidualStep

    calls = []
    call = CpuResidualStep.__call__
    monkeypatch.setattr(CpuResidualStep, "__call__",
                        lambda self, x, v, weight=1.0: calls.append(x.shape) or call(self, x, v, weight))
    tr, _ = _pinn_trainer(tmp_path / "cpp", False, "cpp")
    tr.train(5)
    assert len(calls) == 5 and calls[0] == (128, 4)  # _pinn_trainer's 128 collocation points a step
    calls.clear()
    tr, _ = _pinn_trainer(tmp_path / "fused", False, "fused")  # torch operators throughout
    tr.train(5)
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,tile", [(1, 128), (300, 128), (300, 7), (1024, 2048)])
def test_the_one_call_residual_step_equals_the_torch_operators(dtype, n, tile, monkeypatch):
    """The compiled residual step (one call: inputs scaled inside, per tile forward with tangents, the kernel's
    callback, backward) gives the engine's torch operators' loss and gradients: after a data term (its
    gradient added to), in float32 (the training steps) and float64 (a polish), whole and in ragged tiles."""
    from training import cpu_step
    from training.engine import MLPEngine
    from surrogates.losses import ODEResidualLoss
    from surrogates.network import MLP

    monkeypatch.setattr(cpu_step, "RESIDUAL_TILE", tile)
    p = PROBLEMS["C"]
    torch.manual_seed(0)
    m = MLP(4, 2, [("SiLU", 16), ("Sigmoid", 24), ("Tanh", 16)], input_range=p.box(), output_center=[0.4, 0.05],
            output_scale=[0.5, 0.06]).to(dtype)
    g = torch.Generator().manual_seed(1)
    xd, yd = torch.rand(50, 4, generator=g, dtype=dtype), torch.rand(50, 2, generator=g, dtype=dtype)
    out = []
    for compiled in (True, False):
        eng = MLPEngine(m, max(n, 50))
        if compiled:
            eng.tangent_kernel, eng.residual_kernel = cpu_step.CpuTangentStep(eng), cpu_step.residual_steps(eng)
        eng.zero_grad()
        eng.data_step(xd, yd, 0.3)
        loss = ODEResidualLoss(p, n, "sobol", seed=3).fused(eng)(0.5)
        out.append((loss, [q.grad.clone() for q in m.parameters()]))
    (lc, gc), (lt, gt) = out
    tol = {torch.float32: (2e-6, 2e-5), torch.float64: (1e-12, 1e-10)}[dtype]
    assert lc.dtype == dtype and float(lc) == pytest.approx(float(lt), rel=tol[0])
    for a, b in zip(gc, gt):
        torch.testing.assert_close(a, b, rtol=tol[1], atol=tol[1] * float(b.abs().max()))


def test_the_one_call_residual_step_refuses_a_kernel_for_other_outputs():
    from core.errors import InvalidInputError
    from training.cpu_step import CpuResidualStep
    from training.engine import MLPEngine
    from surrogates.network import MLP

    p = PROBLEMS["hh"]  # four outputs
    m = MLP(4, 2, [("Tanh", 8)], input_range=PROBLEMS["C"].box(), output_center=[0.4, 0.05], output_scale=[0.5, 0.06])
    with pytest.raises(InvalidInputError, match="residual kernel for 2 outputs"):
        CpuResidualStep(MLPEngine(m, 16), residual_kernel(p))
    with pytest.raises(InvalidInputError, match="tile must be >= 1 row"):
        CpuResidualStep(MLPEngine(m, 16), residual_kernel(PROBLEMS["C"]), tile=0)
