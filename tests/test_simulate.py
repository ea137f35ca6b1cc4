"""Forward Euler: backends agree, first-order convergence, errors on bad input."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import solvers
from solvers import BackendUnavailableError, InvalidInputError, NonFiniteStateError

CPU_BACKENDS = ["numpy", "cpu"]


MODELS = solvers.list_models()  # every registered model: a new model file is tested here with no edit
T_END, EVERY = 20.0, 10  # model time units: 2,000 Euler steps of 0.01, every 10th saved


def _case(name, rng, n=37):
    """(y0, params): cells drawn from the model's typical box, per-cell parameters where the box has them."""
    return solvers.get_model(name).sample_typical(n, rng)


@pytest.mark.parametrize("name", MODELS)
def test_numpy_and_cpu_agree_in_float64(name, rng):
    y0, params = _case(name, rng)
    t, Yn = solvers.simulate(name, y0, T_END, 0.01, EVERY, params, backend="numpy")
    t2, Yc = solvers.simulate(name, y0, T_END, 0.01, EVERY, params, backend="cpu")
    assert Yn.shape == Yc.shape == (round(T_END / 0.01) // EVERY + 1, len(y0), y0.shape[1])
    np.testing.assert_array_equal(t, t2)
    # NumPy's SIMD exp and libm's may differ by an ulp: agree to 1e-12 of each state's scale (mV for V); a
    # polynomial right-hand side (fhn) gives the same bits
    scale = np.abs(Yn).max(axis=(0, 1))
    assert (np.abs(Yc - Yn).max(axis=(0, 1)) <= 1e-12 * scale).all()
    if name.startswith("fhn"):
        np.testing.assert_array_equal(Yc, Yn)


@pytest.mark.parametrize("name", MODELS)
def test_float32_tracks_float64(name, rng):
    y0, params = _case(name, rng)
    _, Y64 = solvers.simulate(name, y0, T_END, 0.01, EVERY, params, backend="numpy")
    for backend in CPU_BACKENDS:
        _, Y32 = solvers.simulate(name, y0, T_END, 0.01, EVERY, params, backend=backend, dtype="float32")
        assert Y32.dtype == np.float32
        scale = np.abs(Y64).max(axis=(0, 1))
        err = np.abs(Y32 - Y64).max(axis=(0, 1)) / scale
        assert (err < 2e-3).all(), (backend, err)


@pytest.mark.parametrize("name", MODELS)
def test_euler_converges_at_first_order(name):
    """From the middle of the model's typical box, over 10 model time units."""
    m = solvers.get_model(name)
    y0, params = m.typical_point()
    t_end = 10.0

    def f(t, y):
        return m.numpy_rhs(y[None, :], params)[0]

    ref = solve_ivp(f, (0, t_end), y0[0], method="DOP853", rtol=1e-12, atol=1e-12, t_eval=np.linspace(0, t_end, 11))
    errors = []
    for dt in (0.004, 0.002, 0.001):
        every = round(t_end / 10 / dt)
        _, Y = solvers.simulate(name, y0, t_end, dt, every, params, backend="cpu")
        errors.append(np.abs(Y[:, 0, :] - ref.y.T).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 0.85) & (orders < 1.15)), (errors, orders)


def test_output_layout_and_times():
    t, Y = solvers.simulate("fhn", [[0.5, 0.0], [0.2, 0.1]], 50.0, 0.01, 200)
    assert t.shape == (26,) and t[0] == 0 and t[-1] == pytest.approx(50.0) and t[1] == pytest.approx(2.0)
    assert Y.shape == (26, 2, 2)
    np.testing.assert_array_equal(Y[0], [[0.5, 0.0], [0.2, 0.1]])


def test_auto_picks_a_backend_that_runs_here():
    t, Y = solvers.simulate("fhn", [[0.5, 0.0]], 1.0, backend="auto")
    assert Y.shape == (101, 1, 2)
    expected = "cuda" if solvers.available_backends()["cuda"] is None else "cpu"
    assert solvers.get_backend("auto").name == expected


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_finite_state_names_variable_cell_and_time(backend):
    y0 = np.tile([0.5, 0.0], (6, 1))
    y0[4] = [40.0, 0.0]  # u' ~ -10 u^3: explodes within a few steps of 0.01
    with pytest.raises(NonFiniteStateError) as err:
        solvers.simulate("fhn", y0, 2.0, 0.01, 50, backend=backend)
    e = err.value
    assert (e.variable, e.cell) == ("u", 4)
    assert 0 < e.time <= 1.0
    assert "'u'" in str(e) and "cell 4" in str(e)


def test_non_finite_time_is_the_same_on_both_backends():
    y0 = np.array([[0.5, 0.0], [25.0, 0.0]])
    times = []
    for backend in CPU_BACKENDS:
        with pytest.raises(NonFiniteStateError) as err:
            solvers.simulate("fhn", y0, 2.0, 0.01, 100, backend=backend)
        times.append(err.value.time)
    assert times[0] == times[1]


BAD = [
    (dict(model="fitzhugh"), "unknown model 'fitzhugh'"),
    (dict(backend="gpu"), "unknown backend 'gpu'.*valid: \\['numpy', 'cpu', 'cuda', 'auto'\\]"),
    (dict(dtype="float16"), "unknown dtype 'float16'"),
    (dict(params={"J": 1.0}), "no parameter\\(s\\) \\['J'\\]; valid: \\['I'\\]"),
    (dict(params={"I": np.ones(3)}), "parameter 'I' must be a scalar or an array of shape \\(2,\\)"),
    (dict(params={"I": np.nan}), "parameter 'I' has non-finite values"),
    (dict(y0=np.zeros((2, 3))), "y0 must have shape \\(n_cells, 2\\)"),
    (dict(y0=np.zeros(2)), "y0 must have shape"),
    (dict(y0=[[0.0, np.inf], [0.0, 0.0]]), "state 'w' of cell 0 is inf"),
    (dict(dt=0.0), "dt must be > 0"),
    (dict(dt=-0.01), "dt must be > 0"),
    (dict(t_end=0.001), "t_end must be at least dt"),
    (dict(t_end=float("nan")), "t_end must be a finite number"),
    (dict(t_end=1.005), "not a whole number of steps"),
    (dict(save_every=0), "save_every must be an integer >= 1"),
    (dict(save_every=3), "not a multiple of save_every"),
    (dict(options={"blocks": 4}, backend="cpu"), "takes no option\\(s\\) \\['blocks'\\]"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_rejected_with_a_clear_message(change, message):
    kw = dict(model="fhn", y0=np.zeros((2, 2)), t_end=1.0, dt=0.01, save_every=1, params=None,
              backend="numpy", dtype="float64")
    options = change.pop("options", {})
    kw.update(change)
    with pytest.raises(InvalidInputError, match=message) as err:
        solvers.simulate(**kw, **options)
    assert isinstance(err.value, ValueError)


def test_cuda_without_a_gpu_says_what_is_missing():
    reason = solvers.available_backends()["cuda"]
    if reason is None:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run here"):
        solvers.simulate("fhn", [[0.5, 0.0]], 1.0, backend="cuda")
