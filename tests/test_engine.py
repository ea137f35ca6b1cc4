"""The hand-written MLP engine against autograd: values, gradients and directional derivatives."""
import numpy as np
import pytest
import torch

from surrogates.network import MLP
from training.engine import ACTIVATIONS, MLPEngine

ALL = sorted(ACTIVATIONS)


def make(hidden, n_in=4, n_out=2, out_act=None, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = MLP(n_in, n_out, hidden, output_activation=out_act, input_range=([0.0] * n_in, [2.0 + i for i in range(n_in)]),
            output_center=[0.3] * n_out, output_scale=[0.5 + 0.2 * j for j in range(n_out)])
    return m.to(dtype)


def grads_of(m):
    return [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("act", ALL)
def test_data_gradients_equal_autograd(act):
    m = make([(act, 16), (act, 16), ("Tanh", 8)], out_act="Sigmoid" if act == "ReLU" else None)
    x = torch.rand(37, 4, dtype=torch.float64) * 3
    y = torch.rand(37, 2, dtype=torch.float64)
    m.zero_grad()
    ref = torch.mean(((m(x) - y) / m.out_scale) ** 2)
    ref.backward()
    want = grads_of(m)
    eng = MLPEngine(m, rows=64)
    eng.zero_grad()
    loss = eng.data_step(eng.scale_x(x), eng.scale_y(y), weight=1.0)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ALL)
def test_directional_derivative_and_its_gradients_equal_autograd(act):
    """A physics-style residual of the outputs and their t-derivative: values and parameter gradients."""
    m = make([(act, 16), ("SiLU", 12)], n_in=3)
    x = torch.rand(29, 3, dtype=torch.float64) * 2
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # d/dt, t the first input

    def residual_phys(y, dydt):  # in physical units, a made-up nonlinear ODE
        return torch.mean((dydt - torch.stack([y[:, 0] * (1 - y[:, 1]), torch.sin(y[:, 0])], 1)) ** 2)

    m.zero_grad()
    xr = x.clone().requires_grad_(True)
    y = m(xr)
    dydt = torch.stack([torch.autograd.grad(y[:, j].sum(), xr, create_graph=True)[0][:, 0] for j in range(2)], 1)
    ref = residual_phys(y, dydt)
    ref.backward()
    want = grads_of(m)

    eng = MLPEngine(m, rows=32)
    v = direction / m.in_halfwidth  # d(scaled x)/dt
    z, zt = eng.forward(eng.scale_x(x), v)
    torch.testing.assert_close(m.out_center + m.out_scale * zt * 0 + m.out_scale * z, y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.out_scale * zt, dydt.detach(), rtol=1e-10, atol=1e-12)

    eng.zero_grad()
    loss = eng.tangent_step(eng.scale_x(x), v, lambda z_, zt_, xs: residual_phys(m.out_center + m.out_scale * z_,
                                                                                   m.out_scale * zt_))
    assert float(loss) == pytest.approx(float(ref), rel=1e-10)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_per_row_directions_and_accumulation_over_several_terms():
    m = make([("Tanh", 16), ("Tanh", 16)], n_in=2, n_out=1)
    x = torch.rand(50, 2, dtype=torch.float64)
    dv = torch.rand(50, dtype=torch.float64)  # a total derivative along a trace: d/dt + dV/dt d/dV
    y = torch.rand(50, 1, dtype=torch.float64)
    m.zero_grad()
    xr = x.clone().requires_grad_(True)
    out = m(xr)
    g = torch.autograd.grad(out.sum(), xr, create_graph=True)[0]
    total = g[:, 0] + g[:, 1] * dv
    ref = torch.mean(((out - y) / m.out_scale) ** 2) + 0.3 * torch.mean((total - out[:, 0]) ** 2)
    ref.backward()
    want = grads_of(m)
    eng = MLPEngine(m, rows=64)
    xs = eng.scale_x(x)
    v = torch.stack([torch.ones(50, dtype=torch.float64), dv], 1) / m.in_halfwidth
    eng.zero_grad()
    a = eng.data_step(xs, eng.scale_y(y))
    b = eng.tangent_step(xs, v, lambda z, zt, _: torch.mean((m.out_scale * zt[:, 0] - (m.out_center + m.out_scale * z)[:, 0]) ** 2),
                         weight=0.3)
    assert float(a + 0.3 * b) == pytest.approx(float(ref), rel=1e-12)
    for g_, w in zip(grads_of(m), want):
        torch.testing.assert_close(g_, w, rtol=1e-9, atol=1e-12)


def test_float32_engine_matches_autograd_to_float32_precision():
    m = make([("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], dtype=torch.float32)
    x = torch.rand(1024, 4) * 3
    y = torch.rand(1024, 2)
    m.zero_grad()
    torch.mean(((m(x) - y) / m.out_scale) ** 2).backward()
    want = grads_of(m)
    eng = MLPEngine(m, rows=1024)
    eng.zero_grad()
    eng.data_step(eng.scale_x(x), eng.scale_y(y))
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_the_engine_refuses_what_it_cannot_train():
    from core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="trains surrogates.network.MLP"):
        MLPEngine(torch.nn.Linear(2, 2), rows=8)
    eng = MLPEngine(make([("Tanh", 4)]), rows=8)
    with pytest.raises(InvalidInputError, match="sized for 8 rows, got 9"):
        eng.forward(torch.zeros(9, 4, dtype=torch.float64))


@pytest.mark.slow
def test_the_trainer_gives_the_same_run_on_the_fused_and_the_autograd_path(tmp_path):
    """Same data order, same losses, same schedule: the two paths follow the same trajectory (float32 rounding
    apart) and their loss curves agree closely."""
    from surrogates.losses import DataLoss
    from training.trainer import Trainer

    g = np.random.default_rng(0)
    X = g.uniform(-1, 1, (600, 3)).astype(np.float32)
    Y = np.stack([np.sin(2 * X[:, 0]) * X[:, 1], X[:, 2] ** 2], 1).astype(np.float32)
    finals, curves = [], []
    for engine in ("fused", "autograd"):
        torch.manual_seed(3)
        m = MLP(3, 2, [("SiLU", 32), ("Sigmoid", 32)], input_range=([-1] * 3, [1] * 3), output_center=[0.0, 0.3],
                output_scale=[0.5, 0.3])
        tr = Trainer(m, tmp_path / engine, val_every=20, lr=3e-3, lr_schedule="cosine", engine=engine, progress=False)
        tr.add_loss(DataLoss(X, Y, batch_size=64, seed=5, name="data"))
        tr.train(200)
        finals.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
        curves.append(np.array([r["total"] for r in tr.rows]))
    torch.testing.assert_close(finals[0], finals[1], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(curves[0], curves[1], rtol=2e-2)
    assert curves[0][-1] < 0.7 * curves[0][0]  # it trained


def test_physics_losses_have_fused_forms_that_match_autograd(tmp_path):
    from surrogates.config import load_config
    from surrogates.losses import GateResidualLoss, InitialConditionLoss, ODEResidualLoss
    from surrogates.problems import problem_from_config
    from surrogates.datasets import trace_states

    cfg = load_config().as_dict()
    c = problem_from_config("C", cfg)
    torch.manual_seed(0)
    m = MLP(4, 2, [("SiLU", 16), ("Tanh", 16)], input_range=c.box(), output_center=[0.4, 0.05], output_scale=[0.6, 0.1])
    hh = problem_from_config("hh_m", {**cfg, "problems": {**cfg["problems"], "hh_m": {**cfg["problems"]["hh_m"], "t_end": 5.0}}})
    t, S = trace_states(hh)
    torch.manual_seed(1)
    mh = MLP(2, 1, [("Tanh", 16)], input_range=([0.0, -90.0], [5.0, 50.0]), output_center=[0.5], output_scale=[0.5])
    cases = [(m, lambda: ODEResidualLoss(c, 256, "sobol", seed=2)), (m, lambda: InitialConditionLoss(c, 128, "uniform", seed=3)),
             (mh, lambda: GateResidualLoss(hh.model, "m", t, S, "seed")), (mh, lambda: GateResidualLoss(hh.model, "m", t, S, "total"))]
    for net, make in cases:
        net.zero_grad()
        ref = make()(net)
        ref.backward()
        want = [p.grad.clone() for p in net.parameters()]
        eng = MLPEngine(net, 1024)
        step = make().fused(eng)
        eng.zero_grad()
        got = step(1.0)
        assert float(got) == pytest.approx(float(ref), rel=1e-4)
        for p, w in zip(net.parameters(), want):
            torch.testing.assert_close(p.grad, w, rtol=2e-3, atol=1e-6)


def _pinn_trainer(out, capture, engine="fused"):
    from surrogates.config import load_config
    from surrogates.losses import DataLoss, InitialConditionLoss, ODEResidualLoss
    from training.trainer import Trainer

    c = load_config().problem("C")
    g = np.random.default_rng(0)
    lo, hi = c.box()
    X = g.uniform(lo, hi, (500, 4)).astype(np.float32)
    Y = g.uniform(0, 1, (500, 2)).astype(np.float32)
    torch.manual_seed(2)
    m = MLP(4, 2, [("SiLU", 16), ("Sigmoid", 16)], input_range=c.box(), output_center=[0.4, 0.05], output_scale=[0.6, 0.1])
    tr = Trainer(m, out, val_every=25, lr=3e-3, lr_schedule="cosine", engine=engine, capture=capture, progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=64, seed=1, name="data"))
    tr.add_loss(ODEResidualLoss(c, 128, "sobol", seed=2), 0.5)
    tr.add_loss(InitialConditionLoss(c, 64, "uniform", seed=3), 0.5)
    return tr, m


@pytest.mark.slow
def test_the_static_step_follows_the_plain_fused_path(tmp_path):
    """The capturable step (device-side batch offsets, learning rate from the step count), run uncaptured on
    the CPU: the same batches, points and updates as the plain fused step."""
    finals = []
    for capture in (True, False):
        tr, m = _pinn_trainer(tmp_path / str(capture), capture)
        tr.train(100)
        finals.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
        assert [r["iteration"] for r in tr.rows] == [25, 50, 75, 100]
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-4, atol=1e-6)


def test_the_capturable_step_never_touches_the_host(tmp_path, monkeypatch):
    """What a CUDA graph captures must neither make tensors from host data (a list index is copied to the
    device at every call: the capture refuses it) nor read values back. Checked on the CPU by recording every
    operator of the static step's body (data, ODE residual and initial-condition losses, optimiser)."""
    from conftest import op_recorder

    from training.graph import StaticStep

    rec = op_recorder()
    body = StaticStep._body

    def recorded(self):
        with rec:
            body(self)

    monkeypatch.setattr(StaticStep, "_body", recorded)
    tr, _ = _pinn_trainer(tmp_path, True)
    tr.train(3)
    assert len(rec.ops) > 50  # the body did run under the recorder
    from conftest import host_touches

    found = host_touches(rec.ops)
    assert not found, f"the capturable step does: {found}"


@pytest.mark.gpu
def test_the_captured_step_on_a_gpu_matches_the_uncaptured_one(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    finals = []
    for capture in (True, False):
        tr, m = _pinn_trainer(tmp_path / str(capture), capture)
        m.cuda()
        tr.train(100)
        finals.append(torch.cat([p.detach().reshape(-1).cpu() for p in m.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-3, atol=1e-5)


def test_a_static_step_run_resumes_exactly(tmp_path):
    """Killed mid-pass and resumed, the static step continues with the same batches and state."""
    ref, ref_m = _pinn_trainer(tmp_path / "ref", True)
    ref.train(100)
    calls = {"n": 0}
    run, m = _pinn_trainer(tmp_path / "run", True)

    def dying(model):
        calls["n"] += 1
        if calls["n"] == 3:  # at iteration 75: the checkpoint of iteration 50 (mid-pass: 500 rows / 64) stays
            raise KeyboardInterrupt
        return {}

    run.validation = dying
    with pytest.raises(KeyboardInterrupt):
        run.train(100)
    again, m2 = _pinn_trainer(tmp_path / "run", True)
    assert again.train(100)["resumed_from"] == 50
    for a, b in zip(ref_m.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_fourth_power_loss_equals_autograd():
    from surrogates.losses import DataLoss

    m = make([("SiLU", 16), ("Sigmoid", 16)], dtype=torch.float32)
    x, y = torch.rand(64, 4) * 3, torch.rand(64, 2)
    loss = DataLoss(x, y, metric="l4", seed=0)
    m.zero_grad()
    ref = loss(m)
    ref.backward()
    want = grads_of(m)
    eng = MLPEngine(m, 64)
    eng.zero_grad()
    got = DataLoss(x, y, metric="l4", seed=0).fused(eng)(1.0)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("outputs", [["u", "w"], ["w", "u"]])
def test_the_closed_form_ode_residual_equals_autograd_in_float64(outputs):
    """The fused ODE residual (forward-mode d/dt, the model's SymPy Jacobian for the residual's gradient, no
    autograd) against autograd's create_graph path: loss to 1e-12, every parameter gradient to 1e-9, with the
    network's outputs in the model's order and swapped."""
    from surrogates.config import load_config
    from surrogates.losses import ODEResidualLoss
    from surrogates.problems import problem_from_config

    cfg = load_config().as_dict()
    cfg["problems"]["C"] = {**cfg["problems"]["C"], "outputs": outputs}
    c = problem_from_config("C", cfg)
    assert c.model.has_jacobian()
    torch.manual_seed(0)
    m = MLP(4, 2, [("SiLU", 16), ("Sigmoid", 16), ("Tanh", 8)], input_range=c.box(), output_center=[0.4, 0.05],
            output_scale=[0.6, 0.1]).double()
    m.zero_grad()
    ref = ODEResidualLoss(c, 300, "sobol", seed=4)(m)
    ref.backward()
    want = grads_of(m)
    eng = MLPEngine(m, 512)
    eng.zero_grad()
    got = ODEResidualLoss(c, 300, "sobol", seed=4).fused(eng)(0.5)
    assert float(got) == pytest.approx(float(ref), rel=1e-12)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, 0.5 * w, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_the_lbfgs_polish_through_the_engine_follows_autograd(tmp_path):
    """The polish's closure on the fused engine (full-set data term in chunks, forward-mode residual, closed-form
    residual gradient) against the autograd closure: the same L-BFGS run, loss for loss."""
    runs = []
    for engine in ("fused", "autograd"):
        tr, m = _pinn_trainer(tmp_path / engine, capture=False, engine=engine)
        tr.lbfgs_iterations = 60
        tr.LBFGS_CHUNK = 128  # the 500 data rows in 4 chunks (128, 128, 128, 116)
        tr.train(50)
        if engine == "fused":
            assert tr._lbfgs_fused() is not None and tr._lbfgs_fused()[0].rows == 128
        runs.append((np.array([r["total"] for r in tr.rows if r["iteration"] > 50]), m.state_dict()))
    (fused, wf), (auto, wa) = runs
    assert len(fused) == 3 and fused[-1] < fused[0]  # it polished
    np.testing.assert_allclose(fused, auto, rtol=1e-5)  # measured: 3e-7
    for k in wf:
        torch.testing.assert_close(wf[k], wa[k], rtol=1e-3, atol=1e-4)  # measured: 2e-5 at most


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("variant", ["seed", "total"])
def test_the_closed_form_gate_residual_equals_autograd_in_float64(variant, affine):
    """hh_m's gate residual (the HH right-hand side; V near the rates' removable singularities is on the trace)
    on the fused path against autograd's create_graph path, in float64: through the gate equation's two
    coefficients per point (m's equation is affine in m), and through the full closed-form Jacobian."""
    from surrogates.config import load_config
    from surrogates.datasets import trace_states
    from surrogates.losses import GateResidualLoss
    from surrogates.problems import problem_from_config

    cfg = load_config().as_dict()
    cfg["problems"]["hh_m"] = {**cfg["problems"]["hh_m"], "t_end": 12.0}  # through the first action potential
    hh = problem_from_config("hh_m", cfg)
    assert hh.model.has_jacobian()
    t, S = trace_states(hh)
    torch.manual_seed(1)
    m = MLP(2, 1, [("Tanh", 16), ("SiLU", 8)], input_range=([0.0, -90.0], [12.0, 50.0]), output_center=[0.5],
            output_scale=[0.5]).double()
    loss = GateResidualLoss(hh.model, "m", t, S, variant)
    assert (loss.affine is not None) == hh.model.affine_in("m") == True  # noqa: E712
    if not affine:
        loss.affine = None
    loss.x, loss.dVdt, loss.S = loss.x.double(), loss.dVdt.double(), torch.as_tensor(np.asarray(S), dtype=torch.float64)
    m.zero_grad()
    ref = loss(m)
    ref.backward()
    want = grads_of(m)
    eng = MLPEngine(m, loss.fused_rows())
    eng.zero_grad()
    got = loss.fused(eng)(1.0)
    assert float(got) == pytest.approx(float(ref), rel=1e-12)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def _gate_trainer(out, capture, t_end=12.0, engine="fused"):
    """hh_m's PINN in small: data rows of the trace's gate and its gate residual on the whole trace (1,201
    points at t_end 12)."""
    from surrogates.config import load_config
    from surrogates.datasets import trace_states
    from surrogates.losses import DataLoss, GateResidualLoss
    from surrogates.problems import problem_from_config
    from training.trainer import Trainer

    cfg = load_config().as_dict()
    cfg["problems"]["hh_m"] = {**cfg["problems"]["hh_m"], "t_end": t_end}
    hh = problem_from_config("hh_m", cfg)
    t, S = trace_states(hh)
    m_col = list(hh.model.states).index("m")
    rows = np.arange(0, len(t), 3)
    X = np.stack([t[rows], S[rows, 0]], axis=1).astype(np.float32)
    Y = S[rows, m_col:m_col + 1].astype(np.float32)
    torch.manual_seed(1)
    m = MLP(2, 1, [("Tanh", 16), ("Tanh", 16)], input_range=([0.0, -90.0], [t_end, 50.0]), output_center=[0.5],
            output_scale=[0.5])
    tr = Trainer(m, out, val_every=20, lr=1e-3, engine=engine, capture=capture, progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=None, seed=1, name="data"))
    tr.add_loss(GateResidualLoss(hh.model, "m", t, S, "total"), 0.1)
    tr.lbfgs_iterations = 40
    return tr, m


def test_the_polish_objective_in_static_form_follows_the_plain_one(tmp_path, capsys):
    """The polish's objective as the CUDA graph would replay it (run uncaptured on the CPU): the same L-BFGS
    run, loss for loss, as op-by-op evaluation; a capture that fails falls back to it and says so."""
    from training import graph

    runs = []
    for static in (True, False):  # the same first-order steps (the static step) before either polish
        tr, m = _gate_trainer(tmp_path / str(static), True)
        if not static:
            tr._polish_objective = lambda fused: (lambda: tr._fused_objective(fused[1], fused[0]))
        tr.train(20)
        assert isinstance(tr._polish_objective(tr._lbfgs_fused()), graph.CapturedObjective) == static
        runs.append((np.array([r["total"] for r in tr.rows]), torch.cat([p.detach().reshape(-1) for p in m.parameters()])))
    (a, wa), (b, wb) = runs
    assert len(a) == 3 and a[-1] < a[0]  # it polished (20 Adam steps, then 2 rounds of 20 L-BFGS iterations)
    np.testing.assert_array_equal(a, b)
    torch.testing.assert_close(wa, wb, rtol=0, atol=0)

    def refuse(self, *args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    orig = graph.CapturedObjective.__init__
    graph.CapturedObjective.__init__ = refuse
    try:
        tr, m = _gate_trainer(tmp_path / "refused", True)
        tr.train(20)
    finally:
        graph.CapturedObjective.__init__ = orig
    assert "L-BFGS objective not captured (RuntimeError: operation not permitted" in capsys.readouterr().err
    np.testing.assert_array_equal(np.array([r["total"] for r in tr.rows]), b)


def test_the_static_polish_objective_keeps_the_float64_copys_precision(tmp_path):
    """The captured objective's static outputs are made in the objective's own precision: on the float64 copy
    the loss L-BFGS compares in its line search is float64 (rounded to float32 it stalls as the float32
    polish does) and equals the op-by-op value exactly."""
    from training import graph

    tr, m = _gate_trainer(tmp_path, True)
    tr.train(1)
    model, _, _ = tr._polish_setup(True)
    eng, steps = tr._lbfgs_fused(model)
    static = graph.CapturedObjective(lambda: tr._fused_objective(steps, eng), "cpu")
    total, terms = static()
    assert total.dtype == torch.float64 and all(v.dtype == torch.float64 for v in terms.values())
    plain, plain_terms = tr._fused_objective(steps, eng)
    assert float(total) == float(plain) and set(terms) == set(plain_terms)


@pytest.mark.parametrize("wide", [False, True])
def test_the_polish_objective_never_touches_the_host(tmp_path, wide):
    """What the polish's graph would capture (the full-set data term and the gate residual, both through the
    engine) runs no operator that reads a value back or makes a tensor from host data; on the float64 copy
    too (the loss terms' float32 tensors are converted when it is built, not when it runs)."""
    from conftest import host_touches, op_recorder

    tr, m = _gate_trainer(tmp_path, True)
    tr.train(1)
    model, _, obj = tr._polish_setup(wide)
    assert (model is not m) == wide and next(model.parameters()).dtype == (torch.float64 if wide else torch.float32)
    rec = op_recorder()
    with rec:
        obj._body()
    assert len(rec.ops) > 20
    found = host_touches(rec.ops)
    assert not found, f"the polish objective does: {found}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_captured_polish_on_a_gpu_matches_the_uncaptured_one(tmp_path, dtype):
    """The graph's evaluation equals the op-by-op one at the same weights (loss, terms, every gradient, in the
    objective's precision), also after the weights moved in place as L-BFGS moves them; then a whole polish,
    captured and not, lowers the loss alike. Not step for step: on an H200 (2026-11-28) the two runs' losses
    after 40 L-BFGS iterations differed by 7% in float32 and 0.3% in float64 (cuBLAS may pick other kernels
    inside a capture, and L-BFGS's line search amplifies rounding), while both had lowered it ~2,500x."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from training import graph

    wide = dtype == "float64"
    tight = dict(rtol=1e-10, atol=1e-13) if wide else dict(rtol=2e-5, atol=1e-7)
    tr, m = _gate_trainer(tmp_path / "eval", True)
    m.cuda()
    tr.lbfgs_iterations = 0
    tr.train(20)
    model, _, obj = tr._polish_setup(wide)
    assert isinstance(obj, graph.CapturedObjective) and obj.graph is not None
    params = list(model.parameters())
    assert all(p.dtype == getattr(torch, dtype) for p in params)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for moved in (False, True):
        if moved:  # in place, as L-BFGS moves them: the graph must read the parameters where they are
            with torch.no_grad():
                for p in params:
                    p.add_(1e-2 * torch.randn(p.shape, generator=gen, device="cuda", dtype=p.dtype))
        want_total, want_terms = obj.evaluate()  # op by op
        want = [p.grad.clone() for p in params]
        for p in params:  # a replay that wrote no gradient would leave these
            p.grad.fill_(float("nan"))
        total, terms = obj()
        assert total.dtype == params[0].dtype and set(terms) == set(want_terms)
        torch.testing.assert_close(total, want_total.detach(), **tight)
        for k in terms:
            torch.testing.assert_close(terms[k], want_terms[k].detach(), **tight)
        for p, g in zip(params, want):
            torch.testing.assert_close(p.grad, g, **tight)

    ends = []
    for capture in (True, False):
        tr, m = _gate_trainer(tmp_path / str(capture), capture)
        tr.lbfgs_dtype = dtype
        m.cuda()
        tr.train(20)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        loss = np.array([r["total"] for r in tr.rows])
        assert len(loss) == 3 and loss[-1] < 1e-2 * loss[0]
        ends.append(loss[-1])
    assert 0.67 < ends[0] / ends[1] < 1.5


@pytest.mark.parametrize("affine", [True, False])
def test_the_data_term_inside_the_gate_residuals_pass_equals_the_two_terms_apart(affine):
    """hh_m's polish: the data rows are trace points, so the data term is read off the residual's forward
    pass. Loss values and every gradient equal the two terms computed apart (float64, both residual paths);
    a data row that is not a trace point, or another metric, keeps them apart."""
    from surrogates.config import load_config
    from surrogates.datasets import trace_states
    from surrogates.losses import DataLoss, GateResidualLoss
    from surrogates.problems import problem_from_config

    cfg = load_config().as_dict()
    cfg["problems"]["hh_m"] = {**cfg["problems"]["hh_m"], "t_end": 12.0}
    hh = problem_from_config("hh_m", cfg)
    t, S = trace_states(hh)
    points = np.arange(0, len(t), 2)
    gate = GateResidualLoss(hh.model, "m", t, S, "total", points=points)
    if not affine:
        gate.affine = None
    rows = points[np.random.default_rng(0).permutation(len(points))[:200]]
    X = np.stack([t[rows], S[rows, 0]], axis=1).astype(np.float32)  # as the dataset holds them
    Y = S[rows, 1:2]
    torch.manual_seed(1)
    m = MLP(2, 1, [("Tanh", 16), ("SiLU", 8)], input_range=([0.0, -90.0], [12.0, 50.0]), output_center=[0.5],
            output_scale=[0.5]).double()
    gate.x, gate.dVdt, gate.S = gate.x.double(), gate.dVdt.double(), gate.S.double()
    data = DataLoss(torch.as_tensor(X).double(), torch.as_tensor(Y), batch_size=None, seed=0)
    eng = MLPEngine(m, gate.fused_rows())
    eng.zero_grad()
    apart = [float(data.fused_full(eng)(1.0)) * 1.0, float(gate.fused(eng)(0.1))]
    want = [g.clone() for g in grads_of(m)]
    gate.x = gate.x.float()  # matched as float32 rows, as in training
    joint = gate.fused_with_data(eng, data, 1.0, 0.1)
    gate.x = gate.x.double()
    assert joint is not None
    eng.zero_grad()
    got = [float(joint[0](1.0)), float(joint[1](0.1))]
    assert got == pytest.approx(apart, rel=1e-12)
    for g, w in zip(grads_of(m), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    gate.x = gate.x.float()
    off = DataLoss(torch.as_tensor(X + np.float32(0.5)).double(), torch.as_tensor(Y), batch_size=None, seed=0)
    assert gate.fused_with_data(eng, off, 1.0, 0.1) is None
    assert gate.fused_with_data(eng, DataLoss(torch.as_tensor(X).double(), torch.as_tensor(Y), metric="l4", seed=0),
                                1.0, 0.1) is None


def test_the_polish_objective_with_the_data_term_inside_the_residual_equals_the_two_terms_apart(tmp_path, monkeypatch):
    """The Trainer's polish objective (float32, hh_m in small): the joint pass and the two terms apart give
    the same terms and gradients at the same weights; then a polish with it lowers the loss."""
    from surrogates.losses import GateResidualLoss

    tr, m = _gate_trainer(tmp_path, False)
    tr.lbfgs_iterations = 0
    tr.train(20)
    out = []
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(GateResidualLoss, "fused_with_data", lambda *a, **k: None)
        eng, steps = tr._lbfgs_fused()
        assert (getattr(steps[0], "__name__", "") == "data_step") == joint
        total, terms = tr._fused_objective(steps, eng)
        out.append((float(total), {k: float(v) for k, v in terms.items()}, [g.clone() for g in grads_of(m)]))
    (ta, terms_a, ga), (tb, terms_b, gb) = out
    assert ta == pytest.approx(tb, rel=1e-5) and terms_a == pytest.approx(terms_b, rel=1e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    monkeypatch.undo()
    assert getattr(tr._fused_steps()[0], "__name__", "") == "data_step"  # the first-order steps take it too
    tr2, _ = _gate_trainer(tmp_path / "polish", False)
    tr2.train(20)
    assert getattr(tr2._lbfgs_fused()[1][0], "__name__", "") == "data_step"
    assert tr2.rows[-1]["total"] < 0.1 * tr2.rows[0]["total"]


def test_first_order_steps_with_the_data_term_inside_the_residual_follow_the_two_terms_apart(tmp_path, monkeypatch):
    """hh_m's full-batch Adam steps (plain fused path): 60 steps with the joint pass and with the two terms
    apart end at the same losses and weights (float32 rounding)."""
    from surrogates.losses import GateResidualLoss

    runs = []
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(GateResidualLoss, "fused_with_data", lambda *a, **k: None)
        tr, m = _gate_trainer(tmp_path / str(joint), False)
        tr.lbfgs_iterations = 0
        tr.train(60)
        runs.append((np.array([[r["total"], r["data"]] for r in tr.rows]),
                     torch.cat([p.detach().reshape(-1) for p in m.parameters()])))
    (la, wa), (lb, wb) = runs
    assert la.shape == (3, 2) and la[-1, 0] < la[0, 0]
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)


def test_float32_held_terms_on_a_float64_engine_equal_float64_autograd():
    """The float64 polish builds the engine on a float64 copy of the model while the losses keep their
    float32 tensors (data rows, trace points, dV/dt): every term then computes in float64 (its values and
    gradients equal autograd's on float64 tensors to 1e-10), not in float32 through a mixed-precision
    operation (a float32 tensor over a float64 0-d tensor stays float32)."""
    from surrogates.config import load_config
    from surrogates.datasets import trace_states
    from surrogates.losses import DataLoss, GateResidualLoss
    from surrogates.problems import problem_from_config

    cfg = load_config().as_dict()
    cfg["problems"]["hh_m"] = {**cfg["problems"]["hh_m"], "t_end": 12.0}
    hh = problem_from_config("hh_m", cfg)
    t, S = trace_states(hh)
    rows = np.arange(0, len(t), 5)
    X = np.stack([t[rows], S[rows, 0]], axis=1).astype(np.float32)
    Y = S[rows, 1:2].astype(np.float32)
    torch.manual_seed(1)
    m = MLP(2, 1, [("Tanh", 16), ("Tanh", 16)], input_range=([0.0, -90.0], [12.0, 50.0]), output_center=[0.5],
            output_scale=[0.5]).double()
    for variant in ("seed", "total"):
        for make in (lambda: DataLoss(X, Y, batch_size=None, seed=0),
                     lambda: GateResidualLoss(hh.model, "m", t, S, variant)):
            wide = make()  # the reference: the same term with float64 tensors, through autograd
            for name in ("X", "Y", "x", "dVdt"):  # the same (float32-rounded) values
                if hasattr(wide, name):
                    setattr(wide, name, getattr(wide, name).double())
            if hasattr(wide, "S"):  # the fused form's gate coefficients come from the float64 trace
                wide.S = torch.as_tensor(np.asarray(S), dtype=torch.float64)
            m.zero_grad()
            ref = wide(m)
            ref.backward()
            want = [g.clone() for g in grads_of(m)]
            held = make()
            assert all(getattr(held, n).dtype == torch.float32 for n in ("X", "x", "S") if hasattr(held, n))
            eng = MLPEngine(m, 4096)
            eng.zero_grad()
            step = held.fused_full(eng) if isinstance(held, DataLoss) else held.fused(eng)
            got = step(1.0)
            assert got.dtype == torch.float64 and float(got) == pytest.approx(float(ref.detach()), rel=1e-10)
            for g, w in zip(grads_of(m), want):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_a_float64_polish_moves_a_float64_copy_and_rounds_each_round_back(tmp_path, capsys):
    """lbfgs_dtype = float64: L-BFGS runs on a float64 copy (its objective values are recorded), and after
    each round the float32 model holds the copy's weights rounded (the float32 objective there equals the
    recorded float64 one to float32 rounding); the model, its best checkpoint and the first-order steps stay
    float32. The same run in float32 differs (it is not a no-op switch). With autograd the polish stays float32
    and says why."""
    from surrogates.network import load_checkpoint

    runs = {}
    for dtype in ("float64", "float32"):
        tr, m = _gate_trainer(tmp_path / dtype, False)
        tr.lbfgs_dtype = dtype
        tr.train(20)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        runs[dtype] = (tr, m, [r["total"] for r in tr.rows])
    err = capsys.readouterr().err
    assert err.count("L-BFGS polish in float64 from iteration 20 (a copy of the float32 model") == 1
    tr, m, totals = runs["float64"]
    assert len(totals) == 3 and totals[-1] < 0.5 * totals[0]
    assert totals[:2] != runs["float32"][2][:2] or totals[2] != runs["float32"][2][2]
    assert totals[0] == runs["float32"][2][0]  # the first-order steps are the same
    eng, steps = tr._lbfgs_fused()  # the float32 objective at the model's (rounded) weights
    total32, _ = tr._fused_objective(steps, eng)
    assert float(total32) == pytest.approx(totals[-1], rel=1e-4)
    best, _ = load_checkpoint(tmp_path / "float64" / "best_model.pth")
    assert all(v.dtype == torch.float32 for v in best.state_dict().values())

    from training import cpu_step

    if cpu_step.unavailable_reason() is None:  # engine cpp: its compiled steps in float32, then in float64
        tr, m = _gate_trainer(tmp_path / "cpp", False)
        tr.engine, tr.lbfgs_dtype = "cpp", "float64"
        tr.train(20)
        assert tr.path() == "fused engine, compiled CPU steps" and len(tr.rows) == 3
        assert tr.rows[-1]["total"] < 0.5 * tr.rows[0]["total"]
        assert "L-BFGS polish in float64 from iteration 20" in capsys.readouterr().err

    tr, m = _gate_trainer(tmp_path / "autograd", False)
    tr.engine, tr.lbfgs_dtype = "autograd", "float64"
    tr.train(20)
    err = capsys.readouterr().err
    assert "lbfgs_dtype 'float64' needs the fused engine" in err and "polish in float64" not in err
    assert len(tr.rows) == 3 and tr.rows[-1]["total"] < tr.rows[0]["total"]


def test_lbfgs_dtype_is_checked():
    from core.errors import InvalidInputError
    from training.trainer import Trainer

    with pytest.raises(InvalidInputError, match="lbfgs_dtype must be 'float32', 'float64' or 'auto', got 'half'"):
        Trainer(MLP(2, 1, [("Tanh", 4)]), "unused", lbfgs_dtype="half")


def test_an_auto_polish_goes_on_in_float64_where_float32_stalls(tmp_path, monkeypatch, capsys):
    """lbfgs_dtype = auto: the polish runs in float32 until no step changes the float32 loss, then the
    iterations left run on a float64 copy (here float32 steps are made to find nothing, as in the hh_m stalls):
    it goes on to the end and lowers the loss; with float32 alone it stops at the stall."""
    import training.lbfgs as mod

    real = mod._strong_wolfe

    def search(obj_func, x, t, d, loss, grad, gtd, **kw):
        if d.dtype == torch.float32:
            return loss, grad, 0.0, 1, kw["g_max"]  # no step
        return real(obj_func, x, t, d, loss, grad, gtd, **kw)

    monkeypatch.setattr(mod, "_strong_wolfe", search)
    ends = {}
    for dtype in ("auto", "float32"):
        tr, m = _gate_trainer(tmp_path / dtype, False)
        tr.lbfgs_dtype, tr.lbfgs_iterations = dtype, 100
        summary = tr.train(20)
        ends[dtype] = (summary["iterations"], [r["total"] for r in tr.rows])
        assert all(p.dtype == torch.float32 for p in m.parameters())
    err = capsys.readouterr().err
    assert "L-BFGS polish in float64 from iteration 40 (stalled in float32" in err
    assert err.count("L-BFGS converged at iteration 40") == 1  # the float32 run only
    (n_auto, auto), (n32, f32) = ends["auto"], ends["float32"]
    assert n32 == 40 and len(f32) == 2  # rows at 20 (Adam) and 40: stopped at the stall
    assert n_auto == 120 and auto[-1] < 0.5 * f32[-1]  # 20 Adam steps, 100 polish iterations, 80 of them float64


def test_the_training_paths_are_the_engines_the_configuration_names():
    """training.paths.REGISTRY and the configuration schema's training.engine name the same paths."""
    from pathlib import Path

    import yaml

    from training.paths import REGISTRY

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "core" / "config.schema.yaml").read_text())
    assert list(REGISTRY) == schema["$defs"]["train_keys"]["engine"]["enum"]
    assert all(name == p.name for name, p in REGISTRY.items())


def test_the_trainer_takes_its_training_path_from_the_registry(tmp_path, monkeypatch):
    """A path registered under a new name is one the Trainer accepts; it puts its kernels into the engine of
    the first-order steps and into the polish's; an unknown name is refused, naming the registered ones."""
    from core.errors import InvalidInputError
    from surrogates.losses import DataLoss
    from training import paths
    from training.trainer import Trainer

    calls = []

    class Recording(paths.TorchOperators):
        name = "recording"

        def kernels(self, trainer, eng, polish):
            calls.append((polish, eng.W[0].dtype))

    monkeypatch.setitem(paths.REGISTRY, "recording", Recording())
    g = np.random.default_rng(0)
    X = g.uniform(-1, 1, (200, 2)).astype(np.float32)
    Y = np.sin(X[:, :1]).astype(np.float32)
    torch.manual_seed(0)
    tr = Trainer(MLP(2, 1, [("Tanh", 8)]), tmp_path / "r", val_every=10, engine="recording", lbfgs_iterations=20,
                 lbfgs_dtype="float64", progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=32, seed=1, name="data"))
    summary = tr.train(20)
    assert calls == [(False, torch.float32), (True, torch.float64)]
    assert summary["path"] == "fused engine" and summary["iterations"] == 40
    with pytest.raises(InvalidInputError, match=r"unknown engine 'nope'; valid: \['auto', 'fused', 'cpp', 'triton', "
                                                r"'autograd', 'recording'\]"):
        Trainer(MLP(2, 1, [("Tanh", 8)]), tmp_path / "n", engine="nope")
