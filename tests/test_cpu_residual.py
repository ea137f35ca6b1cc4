"""The ODE residual's loss and gradient as one compiled loop (surrogates.cpu_residual), generated from the model.

The reference is the residual's definition differentiated by autograd in float64: ``mean(((scale zt) -
f(center + scale z, params(x))) / scale)^2)`` with ``f`` the model's torch right-hand side, not the closed
form the kernel shares its Jacobian statements with.
"""
import pytest
import torch

import solvers
from surrogates.cpu_residual import ResidualGrad, kernel_source, residual_kernel
from surrogates.problems import Problem

pytest.importorskip("numba")

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


class _Scaled:
    def __init__(self, center, scale):
        self.out_center, self.out_scale = torch.tensor(center), torch.tensor(scale)


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
    grad = ResidualGrad(residual_kernel(p), _Scaled(center, scale)).at(x)
    got = grad(z, zt)
    assert got[0].dtype == torch.float32 and got[1].shape == z.shape and got[2].shape == zt.shape
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
    for a, b in zip(got[1:], want[1:]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    again = grad(z, zt)  # the same bits on every call, into the same buffers
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1]) and torch.equal(got[2], again[2])


def test_the_kernel_is_generated_from_the_model_and_the_problem():
    src = kernel_source(PROBLEMS["swapped"])
    assert "I = F(0.1)" in src  # the problem's fixed value, not the model's default 0.08
    assert "u = F(_oc[1]) + F(_os[1]) * F(_z[_i, 1])" in src  # u is the network's second output
    assert "I = F(_x[_i, 3])" in kernel_source(PROBLEMS["C"])
    assert "g_Na = F(120.0)" in kernel_source(PROBLEMS["hh"])  # a default


def test_rows_that_do_not_match_the_points_are_refused():
    p = PROBLEMS["C"]
    grad = ResidualGrad(residual_kernel(p), _Scaled(*SCALES["C"])).at(torch.zeros(10, 4))
    with pytest.raises(ValueError, match="10 points and 9 output rows"):
        grad(torch.zeros(9, 2), torch.zeros(9, 2))


class _Recorder:
    """Stands in for the compiled residual step: records which residual gradient it was given."""

    rows = 10**9

    def __init__(self):
        self.given = []

    def __call__(self, xs, vs, residual_grad, weight=1.0):
        self.given.append(residual_grad)
        return torch.zeros(())


@pytest.mark.parametrize("closed_form", [True, False])
def test_the_compiled_path_takes_the_kernel_where_the_model_has_a_closed_form_jacobian(closed_form, monkeypatch):
    """engine "cpp" (a compiled residual step set on the engine): the residual's gradient from the kernel;
    a model whose Jacobian SymPy cannot print keeps the torch operators; the plain fused engine always does.
    (That training on the kernel ends where the torch operators end: tests/test_cpu_step.py, the PINN test.)"""
    from surrogates.engine import MLPEngine
    from surrogates.losses import ODEResidualLoss
    from surrogates.network import MLP

    p = PROBLEMS["C"]
    if not closed_form:
        monkeypatch.setattr(type(FHN), "jacobian_statements", lambda self: None)
        assert residual_kernel(p) is None
    m = MLP(4, 2, [("Tanh", 8)], input_range=p.box(), output_center=[0.4, 0.05], output_scale=[0.5, 0.06])
    eng = MLPEngine(m, 64)
    loss = ODEResidualLoss(p, 64, "sobol", seed=0)
    eng.tangent_kernel = rec = _Recorder()
    loss.fused(eng)(1.0)
    assert isinstance(rec.given[-1], ResidualGrad) == closed_form
    eng.tangent_kernel = None  # the plain fused engine: torch operators
    loss.fused(eng)(1.0)
    assert len(rec.given) == 1


def test_the_trainer_on_the_compiled_steps_takes_the_kernel(tmp_path, monkeypatch):
    """Through the Trainer (engine "cpp", what "auto" picks on a CPU): every step's ODE residual goes through
    the kernel. (A first version built the losses' steps before setting the compiled kernels on the engine,
    so training never reached it while the direct tests passed.)"""
    pytest.importorskip("ninja")
    from test_engine import _pinn_trainer

    calls = []
    call = ResidualGrad.__call__
    monkeypatch.setattr(ResidualGrad, "__call__", lambda self, z, zt: calls.append(z.shape) or call(self, z, zt))
    tr, _ = _pinn_trainer(tmp_path / "cpp", False, "cpp")
    tr.train(5)
    assert len(calls) == 5 and calls[0] == (128, 2)  # _pinn_trainer's 128 collocation points a step
    calls.clear()
    tr, _ = _pinn_trainer(tmp_path / "fused", False, "fused")  # torch operators throughout
    tr.train(5)
    assert calls == []


def test_in_float64_the_compiled_residual_step_equals_the_torch_operators():
    """A float64 polish (lbfgs_dtype) of a PINN on C: the compiled residual step in float64 with the kernel's
    gradient gives the torch operators' float64 loss and gradients (same points: two losses, one seed)."""
    pytest.importorskip("ninja")
    from surrogates import cpu_step
    from surrogates.engine import MLPEngine
    from surrogates.losses import ODEResidualLoss
    from surrogates.network import MLP

    p = PROBLEMS["C"]
    torch.manual_seed(0)
    m = MLP(4, 2, [("SiLU", 16), ("Sigmoid", 16)], input_range=p.box(), output_center=[0.4, 0.05],
            output_scale=[0.5, 0.06]).double()
    out = []
    for compiled in (True, False):
        eng = MLPEngine(m, 300)
        if compiled:
            eng.tangent_kernel = cpu_step.CpuTangentStep(eng)
        eng.zero_grad()
        loss = ODEResidualLoss(p, 300, "sobol", seed=3).fused(eng)(0.5)
        out.append((loss, [q.grad.clone() for q in m.parameters()]))
    (lc, gc), (lt, gt) = out
    assert lc.dtype == torch.float64 and float(lc) == pytest.approx(float(lt), rel=1e-12)
    for a, b in zip(gc, gt):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))
