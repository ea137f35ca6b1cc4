"""Step problems (ITNN) on a model paced by a stimulus: the time is an input, the labels are Euler steps with the
stimulus at their own times, and a rollout advances the time; the Euler floor of an imported model is taken
against Myokit's CVODES where its simulator runs."""
import numpy as np
import pytest
import torch

import solvers
from core.errors import InvalidInputError
from solvers.myokit_import import simulator_unavailable
from surrogates import datasets as ds
from surrogates.config import load_config, validate_config
from surrogates.itnn import rollout
from surrogates.problems import problem_from_config
from surrogates.scoring import evaluate

LR = "myokit:lr-1991.mmt"
STATE_RANGES = {"membrane.V": [-85.5, 60.0], "ica.Ca_i": [1e-4, 1e-2], "ina.m": [0.0, 1.0], "ina.h": [0.0, 1.0],
                "ina.j": [0.0, 1.0], "ica.d": [0.0, 1.0], "ica.f": [0.3, 1.0], "ik.x": [0.0, 0.7]}


def _config(t_end=6.0, **step):
    """The default configuration with LRT (LR1991's first ``t_end`` ms, gNa sampled: the stimulus at 1 ms) and
    its step problem LRS (0.1 ms, the time an input)."""
    m = solvers.get_model(LR)
    outputs = list(STATE_RANGES)
    cfg = load_config().as_dict()
    cfg["problems"]["LRT"] = dict(kind="trajectory", model=LR, inputs=["t", "ina.gNa"], outputs=outputs,
                                  ranges={"ina.gNa": [12.0, 20.0]}, t_end=t_end, save_interval=0.5,
                                  test_trajectories=3)
    cfg["problems"]["LRS"] = dict(kind="step", model=LR, inputs=[*outputs, "ina.gNa", "t"], outputs=outputs,
                                  ranges={**STATE_RANGES, "ina.gNa": [12.0, 20.0], "t": [0.0, t_end]}, step=0.1,
                                  test_from="LRT", **step)
    assert set(outputs) == set(m.state_names)
    return validate_config(cfg)


def _problems(cfg=None):
    study = cfg or _config()
    return study.problem("LRS"), study.problem("LRT")


def test_a_paced_step_dataset_s_labels_are_euler_steps_with_the_stimulus_at_their_times():
    p, _ = _problems()
    m = p.model
    assert p.rollout_clock == (p.param_inputs.index("t"), 0.1) and p.param_inputs == ("ina.gNa", "t")
    train, _ = ds.make_split(p, 64, 0, 1)
    X, Y = train["X"], train["Y"]
    idx = [m.state_names.index(o) for o in p.outputs]
    for x, y in zip(X, Y):  # an independent Euler, one row at a time: 10 steps of 0.01 from the row's time
        state = np.empty(m.n_states)
        state[idx] = x[:len(idx)]
        t0, gna = x[p.inputs.index("t")], x[p.inputs.index("ina.gNa")]
        for i in range(10):
            state = state + 0.01 * m.numpy_rhs(state, {"ina.gNa": gna}, t=t0 + i * 0.01)
        np.testing.assert_allclose(y, state[idx], rtol=1e-12, atol=1e-12)


def test_the_step_map_continues_the_solver_s_paced_trajectory_through_the_stimulus():
    p, _ = _problems()
    m = p.model
    _, Y = solvers.simulate(m, m.initial_state(1), 3.0, 0.01, 1, backend="numpy")  # the solver's own clock
    for k in (90, 95, 100, 140, 145, 150):  # steps before, into, within, out of the pulse at [1, 1.5) ms
        got = ds.step_map(p, Y[k], {}, np.array([k * 0.01]))
        np.testing.assert_allclose(got, Y[k + 10], rtol=1e-10, atol=1e-12)
    # the time matters: the same state stepped at a time without the stimulus goes elsewhere
    assert abs(ds.step_map(p, Y[100], {}, np.array([200.0]))[0, 0] - Y[110, 0, 0]) > 1.0


class ExactStep(torch.nn.Module):
    """The Euler step map itself as a "network": [states (outputs order), params, t] -> increment."""

    def __init__(self, p):
        super().__init__()
        self.p, self.d = p, torch.nn.Parameter(torch.zeros(()))
        self.idx = [p.model.state_names.index(o) for o in p.outputs]

    def forward(self, x):
        p, x = self.p, x.double().numpy()
        y = np.array(np.broadcast_to(p.model.initial_state(), (len(x), p.model.n_states)))
        y[:, self.idx] = x[:, :len(self.idx)]
        cols = dict(zip(p.param_inputs, x[:, len(self.idx):].T))
        t = cols.pop("t")
        nxt = ds.step_map(p, y, cols, t)
        return torch.as_tensor(nxt[:, self.idx] - y[:, self.idx], dtype=torch.float32)


def test_a_rollout_of_the_exact_step_map_reproduces_the_paced_euler_trajectories():
    p, src = _problems()
    problems = {"LRT": src, "LRS": p}
    test, _ = ds.make_test(p, 1, 0, problems)
    net = ExactStep(p)
    metrics, extras = evaluate(net, p, test, problems)
    V = test["Y"][:, 0]
    assert V.max() > 0  # the trajectories fire: the stimulus at 1 ms was applied
    assert metrics["max_abs_err"] < 1e-3 and extras["rollout_bounded"]  # float32 states: ~1e-5 mV
    # the clock is what makes it right: with the time held at 0 the rollout never sees the stimulus
    n = int(test["trajectory"].max()) + 1
    Xt = test["X"].reshape(n, -1, test["X"].shape[1])
    y0, params = p.rollout_inputs(*src.split(src.columns(Xt[:, 0]), n), n)
    frozen = rollout(net, y0, params, 60, keep_every=5)[:, :, 0].T
    assert np.abs(frozen - V.reshape(n, -1)).max() > 50.0


def test_refusals_of_step_problems_name_the_time():
    cfg = _config().as_dict()
    spec = cfg["problems"]["LRS"]
    cfg["problems"]["LRS"] = {**spec, "ranges": {**spec["ranges"], "t": [0.0, 3.0]}}
    with pytest.raises(InvalidInputError, match=r"problems\.LRS\.ranges\.t: \[0, 3\] does not cover .*\[0, 5\.9\]"):
        problem_from_config("LRS", cfg)
    cfg["problems"]["LRS"] = {**spec, "inputs": [i for i in spec["inputs"] if i != "t"]}
    with pytest.raises(InvalidInputError, match=r"problems\.LRS\.inputs: .*depends on time.*needs the input 't'"):
        problem_from_config("LRS", cfg)
    cfg["problems"]["LRS"] = {**spec, "ranges": {k: v for k, v in spec["ranges"].items() if k != "t"}}
    with pytest.raises(InvalidInputError, match=r"problems\.LRS\.ranges: input 't' needs a range"):
        problem_from_config("LRS", cfg)
    d = cfg["problems"]["D"]
    cfg["problems"]["D"] = {**d, "inputs": [*d["inputs"], "t"], "ranges": {**d["ranges"], "t": [0.0, 20.0]}}
    with pytest.raises(InvalidInputError, match=r"problems\.D\.inputs: 't' is neither .*does not depend on time"):
        problem_from_config("D", cfg)


@pytest.mark.skipif(simulator_unavailable() is not None, reason=str(simulator_unavailable()))
def test_the_euler_floor_of_an_imported_model_is_taken_against_myokit_s_cvodes(monkeypatch):
    _, src = _problems()
    _, floor = ds.make_test(src, 1, 0)
    assert floor["reference"] == "myokit CVODES rtol=1e-10 atol=1e-10"
    # Euler at 0.01 ms is first order: its error is far above the two references' difference
    monkeypatch.setattr("solvers.myokit_import.simulator_unavailable", lambda: "no SUNDIALS here")
    _, dop = ds.make_test(src, 1, 0)
    assert dop["reference"] == "solve_ivp DOP853 rtol=1e-10 (Myokit's CVODES unavailable: no SUNDIALS here)"
    assert 0 < floor["mae"] and dop["mae"] == pytest.approx(floor["mae"], rel=1e-3)


def test_the_euler_floor_of_a_built_in_model_stays_against_dop853():
    p = load_config().problem("C")
    assert ds.floor_reference(p, 1e-10) == "solve_ivp DOP853 rtol=1e-10"
