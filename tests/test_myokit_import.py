"""Published models in Myokit (.mmt) and CellML form, imported (solvers.get_model(PATH)) and checked against
Myokit itself: its derivatives at the initial state, and one paced beat against its CVODES simulator."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

myokit = pytest.importorskip("myokit")

import solvers  # noqa: E402
from benchmarks.myokit_check import (  # noqa: E402
    APD_OK, CASES, RMS_OK, apd90, compare, euler_trace, load_case, myokit_data, reference_trace,
    simulator_unavailable,
)
from core.errors import InvalidInputError  # noqa: E402
from solvers.backends.cuda import cuda_source  # noqa: E402

DATA = myokit_data()
LR = DATA / "lr-1991.mmt"
FILES = ["lr-1991.mmt", "beeler-1977-model.mmt", "noble-1962.mmt", "decker-2009.mmt",
         "formats/cellml/lr-1991-exported-1.cellml", "formats/cellml/br-1977.cellml", "formats/cellml/corrias.cellml"]


def _myokit_model(path: Path):
    if path.suffix == ".mmt":
        return myokit.load(str(path))[:2]
    return myokit.formats.importer("cellml").model(str(path)), None


@pytest.mark.parametrize("name", FILES)
def test_derivatives_at_the_initial_state_equal_myokits(name):
    path = DATA / name
    m = solvers.get_model(str(path))
    mm, protocol = _myokit_model(path)
    y0 = m.initial_state()[0]
    np.testing.assert_array_equal(y0, mm.initial_values(True))
    times = [(0.0, 0.0)]  # (time, pace): before any stimulus
    if protocol is not None and any(v.binding() == "pace" for v in mm.variables(deep=True)):
        e = protocol.events()[0]
        times.append((e.start() + e.duration() / 2, e.level()))  # within the first pulse
    for t, pace in times:
        ref = np.array(mm.evaluate_derivatives(inputs={"time": t, "pace": pace}))
        ours = m.numpy_rhs(y0, t=t) if m.time_ident else m.numpy_rhs(y0)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0, err_msg=f"{name} at t = {t}")


def test_names_initial_state_parameters_and_intermediates_follow_the_file():
    m = solvers.get_model(LR)
    mm = myokit.load_model(str(LR))
    assert m.name == "lr_1991" and m.time_variable == "engine.time"
    assert list(m.state_names) == [v.qname() for v in mm.states()]
    assert m.state_names[0] == "membrane.V" and m.ident("membrane.V") == "membrane__V"
    assert m.defaults["ina.gNa"] == 16.0 and m.defaults["membrane.i_stim.stim_amplitude"] == -80.0
    assert m.defaults["cell.RTF.T"] == 310.0  # 273 + 37: no references, a literal in Myokit's sense
    assert {"ina.INa", "ik.xi", "ina.m.alpha", "cell.RTF", "engine.pace"} <= set(m.intermediates)
    # a parameter by its qualified name acts on the right-hand side as in Myokit
    y0 = m.initial_state()
    mm.get("ina.gNa").set_rhs(0)
    ref = mm.evaluate_derivatives(inputs={"time": 0.0, "pace": 0.0})
    np.testing.assert_allclose(m.numpy_rhs(y0, {"ina.gNa": 0.0}, t=0.0)[0], ref, rtol=1e-9, atol=0)
    assert solvers.get_model(str(LR)) is m  # imported once per file content
    assert m.default_dt == 0.01  # measured: benchmarks/reference/myokit_check.csv


def test_a_time_dependent_right_hand_side_needs_the_time():
    m = solvers.get_model(LR)
    with pytest.raises(InvalidInputError, match="depends on time.*keyword t"):
        m.numpy_rhs(m.initial_state())
    # the stimulus is on in [1, 1.5) ms of every 1000 ms
    y = m.initial_state(4)
    dv = m.numpy_rhs(y, t=np.array([0.99, 1.0, 1.49, 1001.2]))[:, 0]
    assert dv[0] < 1 and (dv[1:] > 70).all()


def test_torch_right_hand_side_and_its_closed_form_jacobian():
    torch = pytest.importorskip("torch")
    m = solvers.get_model(LR)
    y = torch.tensor(m.initial_state(3), dtype=torch.float64)
    y[2, 0] = -47.13  # exactly where an if() picks its other branch
    t = torch.tensor([0.0, 1.2, 300.0], dtype=torch.float64)
    f = m.torch_rhs(y, t=t)
    np.testing.assert_allclose(f.numpy(), m.numpy_rhs(y.numpy(), t=t.numpy()), rtol=1e-13, atol=0)
    fj, J = m.torch_rhs_jacobian(y, t=t)
    auto = torch.func.vmap(torch.func.jacrev(lambda yy, tt: m.torch_rhs(yy, t=tt)))(y[:2], t[:2])
    assert torch.equal(fj, f)
    torch.testing.assert_close(J[:2], auto, rtol=1e-10, atol=1e-12)
    assert m.torch_rhs(y.float(), t=t.float()).dtype == torch.float32


def test_numpy_and_compiled_cpu_backends_agree_through_the_stimulus():
    m = solvers.get_model(LR)
    args = (m, m.initial_state(2), 5.0)
    _, a = solvers.simulate(*args, dt=0.01, save_every=10, backend="numpy")
    _, b = solvers.simulate(*args, dt=0.01, save_every=10, backend="cpu")
    np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-13)  # the same operations; libm's exp against NumPy's
    assert a[-1, 0, 0] > 0  # the pulse at 1 ms fired the upstroke
    _, c = solvers.simulate(*args, dt=0.01, save_every=10, backend="cpu", dtype="float32")
    np.testing.assert_allclose(c[-1, :, 0], a[-1, :, 0], atol=0.05)


def test_cuda_source_is_generated_and_compiles_with_nvcc(tmp_path):
    m = solvers.get_model(LR)
    for dtype in ("float32", "float64"):
        src = cuda_source(m, dtype)
        assert "membrane__V" in src and "engine__time" in src and " ? " in src
    y = m.initial_state()[0]
    for t in (0.0, 1.2):  # before and within the first pulse
        np.testing.assert_allclose(_c_rhs(m, tmp_path)(y, t), m.numpy_rhs(y, t=t), rtol=1e-12)
    for dtype in ("float32", "float64"):
        src = cuda_source(m, dtype)
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            pytest.skip("nvcc is not installed")
        (tmp_path / "k.cu").write_text(src)
        res = subprocess.run([nvcc, "-arch=sm_90", "--ptx", "-o", str(tmp_path / "k.ptx"), str(tmp_path / "k.cu")],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


@pytest.mark.gpu
def test_cuda_matches_numpy_on_a_gpu():
    if solvers.available_backends()["cuda"] is not None:
        pytest.skip(solvers.available_backends()["cuda"])
    m = solvers.get_model(LR)
    _, a = solvers.simulate(m, m.initial_state(3), 5.0, dt=0.01, save_every=10, backend="numpy")
    _, b = solvers.simulate(m, m.initial_state(3), 5.0, dt=0.01, save_every=10, backend="cuda")
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)


CONSTRUCTS = """
[[model]]
c.x = 0.5
c.y = 1

[engine]
time = 0 bind time

[c]
p = 3
dot(x) = if(not (x > 0.2 and x < 0.7) or y == 2, 1, 2) + 7 % p + 7 // p - abs(x - 1) + floor(x * 3) + ceil(x) + \
    piecewise(y < 0, 10, y < 2, log(x, 2) + log10(y + 1) + sin(x) + cos(y) + tan(x) + asin(x) + acos(x) + atan(y), 30)
dot(y) = -y * x^1.5 + sqrt(y) + 2^x + exp(-engine.time)
"""


@pytest.mark.parametrize("state", [[0.5, 1.0], [0.1, 2.0], [0.9, 0.5], [0.2, 3.0]])
def test_conditions_and_functions_match_myokit_on_every_backend(tmp_path, state):
    path = tmp_path / "constructs.mmt"
    path.write_text(CONSTRUCTS)
    m = solvers.get_model(path)
    mm = myokit.load_model(str(path))
    ref = np.array(mm.evaluate_derivatives(state=state, inputs={"time": 0.25}))
    f = m.numpy_rhs(np.array(state), t=0.25)
    np.testing.assert_allclose(f, ref, rtol=1e-12, atol=0)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(m.torch_rhs(torch.tensor(state, dtype=torch.float64), t=0.25).numpy(), ref, rtol=1e-12)
    # one Euler step from t = 0 on the compiled backend
    dt = 0.125
    _, Y = solvers.simulate(m, [state], dt, dt=dt, backend="cpu")
    f0 = np.array(mm.evaluate_derivatives(state=state, inputs={"time": 0.0}))
    np.testing.assert_allclose(Y[1, 0], np.array(state) + dt * f0, rtol=1e-12)
    # the C statements the CUDA kernel inlines, compiled for this CPU
    np.testing.assert_allclose(_c_rhs(m, tmp_path)(state, 0.25), ref, rtol=1e-12)


def _c_rhs(m, tmp_path):
    """The model's C statements (those of the CUDA kernel) as a host function, compiled with the C compiler."""
    import ctypes

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    lines = [f"const double {m.ident(s)} = y[{i}];" for i, s in enumerate(m.state_names)]
    lines += [f"const double {m.ident(n)} = {p.default!r};" for n, p in m.parameters.items()]
    lines += [f"const double {m.time_ident} = t;", *m.c_statements("float64")]
    lines += [f"out[{i}] = d_{m.ident(s)};" for i, s in enumerate(m.state_names)]
    src = "#include <math.h>\nvoid rhs(const double* y, double t, double* out) {\n" + "\n".join(lines) + "\n}\n"
    (tmp_path / "rhs.c").write_text(src)
    res = subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(tmp_path / "rhs.so"), str(tmp_path / "rhs.c"), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    fn = ctypes.CDLL(str(tmp_path / "rhs.so")).rhs
    P = ctypes.POINTER(ctypes.c_double)

    def rhs(y, t):
        y, out = np.ascontiguousarray(y, dtype=np.float64), np.empty(m.n_states)
        fn(y.ctypes.data_as(P), ctypes.c_double(t), out.ctypes.data_as(P))
        return out

    return rhs


@pytest.mark.parametrize("text, match", [
    ("[[model]]\nc.x = 1\nc.w = 0\n[engine]\ntime = 0 bind time\n[c]\ndot(x) = -x\nz = dot(x) * 2\ndot(w) = z\n",
     r"variable 'c.z' uses the derivative dot\(c.x\)"),
    ("[[model]]\nc.x = 1\n[engine]\ntime = 0 bind time\nrt = 0 bind realtime\n[c]\ndot(x) = -x + engine.rt\n",
     r"'engine.rt' is bound to 'realtime'"),
    ("[[model]]\nc.x = 1\n[engine]\ntime = 0 bind time\npace = 0 bind pace\n[c]\ndot(x) = -x + engine.pace\n"
     "[[protocol]]\n1 10 1 0 0\n2 20 1 0 0\n", "protocol has 2 events"),
    ("[[model]]\nc.x = 1\n[c]\ndot(x) = -x +\n", "cannot be read by Myokit"),
])
def test_what_cannot_be_translated_is_refused_by_name(tmp_path, text, match):
    path = tmp_path / "bad.mmt"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        solvers.get_model(str(path))


def test_a_missing_file_is_refused():
    with pytest.raises(InvalidInputError, match="does not exist"):
        solvers.get_model("no/such/model.mmt")
    with pytest.raises(InvalidInputError, match=r"unknown model 'lr1991'.*path of a Myokit \(.mmt\)"):
        solvers.get_model("lr1991")


def test_a_path_object_imports_and_a_registered_name_wins_over_a_file(tmp_path, monkeypatch):
    assert solvers.get_model(LR) is solvers.get_model(str(LR)) is solvers.get_model("myokit:lr-1991.mmt")
    with pytest.raises(InvalidInputError, match="does not exist"):
        solvers.get_model("myokit:lr-1992.mmt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hh").write_text(LR.read_text())
    assert solvers.get_model("hh").time_variable is None  # the registered Hodgkin-Huxley model
    assert solvers.get_model("./hh").time_variable == "engine.time"  # the file


def test_apd90_of_a_trapezoid():
    v = np.concatenate([np.full(10, -80.0), np.full(100, 20.0), np.linspace(20, -80, 11), np.full(10, -80.0)])
    # level -70: up a tenth of the way from sample 9 to 10 (9.1), down at sample 119 (the ramp's -70)
    assert apd90(v, save=1.0) == pytest.approx(119.0 - 9.1)
    assert np.isnan(apd90(np.linspace(0, 1, 20)))


@pytest.mark.skipif(simulator_unavailable() is not None, reason=str(simulator_unavailable()))
def test_a_paced_beat_of_luo_rudy_1991_against_myokits_simulator_converges_at_first_order():
    case = next(c for c in CASES if c.name == "lr_1991")
    model, mm, protocol = load_case(case)
    ref = reference_trace(mm, protocol, case.t_end, "membrane.V")
    assert len(ref) == round(case.t_end / 0.1) + 1 and 300 < apd90(ref) < 450
    res = {dt: compare(euler_trace(model, "cpu", dt, case.t_end, "membrane.V"), ref) for dt in (0.01, 0.005)}
    coarse, fine = res[0.01], res[0.005]
    assert model.default_dt == 0.01
    assert coarse["rms_mV"] < RMS_OK and abs(coarse["apd90_diff_ms"]) < APD_OK
    assert 1.7 < coarse["rms_mV"] / fine["rms_mV"] < 2.3  # halving dt halves the error: first order
    assert 1.5 < abs(coarse["apd90_diff_ms"] / fine["apd90_diff_ms"]) < 2.5


def _lr_beginning():
    """LR1991 and a trajectory problem of its first 2 ms (the stimulus at 1 ms), every state an output."""
    from surrogates.config import load_config, validate_config

    m = solvers.get_model("myokit:lr-1991.mmt")
    cfg = load_config().as_dict()
    cfg["problems"]["LR"] = dict(kind="trajectory", model="myokit:lr-1991.mmt", inputs=["t"],
                                 outputs=list(m.state_names), t_end=2.0, save_interval=0.01, test_fraction=0.2,
                                 sizes=[100])
    return m, validate_config(cfg).problem("LR")


def test_the_physics_residual_gives_a_paced_model_its_time():
    torch = pytest.importorskip("torch")
    from surrogates.losses import ODEResidualLoss

    m, p = _lr_beginning()
    loss = ODEResidualLoss(p, n_points=64, sampler="uniform", seed=0)
    y0 = torch.tensor(m.initial_state()[0], dtype=torch.float32)

    class Rest(torch.nn.Module):  # y = the initial state at every t: dy/dt = 0, the residual is -f(y0, t)
        def __init__(self):
            super().__init__()
            self.d = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return y0.expand(x.shape[0], -1) + 0 * x[:, :1] + 0 * self.d

    x = loss.sample(64, torch.device("cpu"))
    loss.sample.load_state_dict({"gen": torch.Generator().manual_seed(0).get_state(), "drawn": 0})
    t = x[:, 0].double().numpy()
    expected = m.numpy_rhs(np.tile(m.initial_state(), (64, 1)), t=t)
    assert ((t >= 1.0) & (t < 1.5)).any()  # some points within the stimulus, where dV/dt is ~80 mV/ms
    assert loss(Rest()).item() == pytest.approx(float(np.mean(expected ** 2)), rel=1e-4)


def test_a_step_problem_on_a_paced_model_without_the_time_is_refused():
    from surrogates.config import load_config
    from surrogates.problems import problem_from_config

    cfg = load_config().as_dict()
    cfg["problems"]["S"] = dict(kind="step", model="myokit:lr-1991.mmt", inputs=["membrane.V"], outputs=["membrane.V"],
                                ranges={"membrane.V": [-85.0, 40.0]}, step=0.1, test_from="C")
    with pytest.raises(InvalidInputError, match=r"problems\.S\.inputs: .*depends on time .*'engine\.time'.*needs the input 't'"):
        problem_from_config("S", cfg)


def test_a_model_folder_holds_myokit_files(tmp_path):
    (tmp_path / "lr-1991.mmt").write_text(LR.read_text())
    assert "lr_1991" in solvers.list_models([tmp_path])
    m = solvers.get_model("lr_1991", [tmp_path])
    assert m.state_names[0] == "membrane.V" and m.default_dt == 0.01


def test_the_residual_s_guards_keep_luo_rudy_finite_where_a_network_strays():
    """LR1991's rates are undefined for Ca_i <= 0 (log) and its gates' switch exp(-(V + 40) / 0.24) makes the
    float32 Jacobian inf / inf at rest: an untrained network's states give NaN. Clamped into the labels' range
    and evaluated in float64, the residual and its gradients (autograd and closed form) are finite."""
    torch = pytest.importorskip("torch")
    from surrogates.losses import ODEResidualLoss

    m, p = _lr_beginning()
    rest = torch.tensor(m.initial_state()[0], dtype=torch.float32)
    stray = rest.clone()
    stray[m.state_names.index("ica.Ca_i")] = -1e-4  # below zero: log(Ca_i) is NaN

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.d = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return stray.expand(x.shape[0], -1) + x[:, :1] * self.d

    lo, hi = rest - 0.5 * rest.abs(), rest + 0.5 * rest.abs()
    plain = ODEResidualLoss(p, n_points=32, sampler="uniform", seed=0)
    assert not torch.isfinite(plain(Net()))
    guarded = ODEResidualLoss(p, n_points=32, sampler="uniform", seed=0, bounds=(lo, hi), rhs_dtype="float64")
    net = Net()
    value = guarded(net)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(net.d.grad)
    # what f saw: the clamped state, the same as the float64 right-hand side there
    y = stray.expand(4, -1)
    x = torch.zeros(4, 1)
    want = m.torch_rhs(torch.maximum(torch.minimum(y, hi), lo).double(), {}, t=x[:, 0].double())
    torch.testing.assert_close(guarded._rhs(y, x), want.float())
    f32 = ODEResidualLoss(p, n_points=32, sampler="uniform", seed=0, bounds=(lo, hi))
    assert not torch.isfinite(f32._rhs(rest.expand(4, -1), x, jacobian=True)[1]).all()  # inf / inf at rest
    f, J = guarded._rhs(rest.expand(4, -1), x, jacobian=True)
    assert torch.isfinite(f).all() and torch.isfinite(J).all()
    with pytest.raises(InvalidInputError, match="state bounds need lo <= hi for each of its 8 outputs"):
        ODEResidualLoss(p, n_points=8, bounds=(hi, lo))
