"""Surrogate library: networks, losses, physics residual, trainer, ITNN rollout, seed README scenarios."""
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from core.errors import InvalidInputError
from surrogates import datasets as ds
from surrogates.itnn import rollout
from surrogates.losses import DataLoss, GateResidualLoss, InitialConditionLoss, ODEResidualLoss, ResidualLoss
from surrogates.network import MLP, load_checkpoint, load_weights, save_checkpoint
from surrogates.config import load_config, validate_config
from training.train import train_surrogate
from training.trainer import Trainer, TrainingDivergedError


@pytest.fixture(scope="module")
def cfg():
    c = load_config().as_dict()
    for name in ("B", "C"):
        c["problems"][name]["test_trajectories"] = 30
    c["problems"]["hh_m"]["t_end"] = 40.0
    c["problems"]["hh_m"]["sizes"] = [400]
    c["training"].update(val_every=50, lr=1e-2)  # short runs: a larger step
    c["training"]["overrides"]["hh_m"]["lbfgs_iterations"] = 0  # the configured polish is thousands of steps
    return validate_config(c)


# ---------------------------------------------------------------- network
def test_network_builds_from_hidden_config_and_counts_parameters():
    net = MLP(4, 2, [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)])
    assert [type(m).__name__ for m in net.net] == ["Linear", "SiLU", "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    assert net.n_params == (4 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 2 + 2)
    assert net(torch.zeros(5, 4)).shape == (5, 2)


@pytest.mark.parametrize("hidden,message", [
    ([("Swish", 8)], r"unknown activation 'Swish'; valid: \['ELU', 'GELU', 'LeakyReLU', 'ReLU', 'SiLU', 'Sigmoid', 'Softplus', 'Tanh'\]"),
    ([("Tanh", 0)], "width must be a positive integer"),
    ([("Tanh",)], r"must be an \(activation, width\) pair"),
    ([], "non-empty list"),
])
def test_bad_network_config_lists_valid_choices(hidden, message):
    with pytest.raises(InvalidInputError, match=message):
        MLP(2, 1, hidden)


def test_scaling_is_inside_the_model_in_physical_units():
    net = MLP(1, 1, [("Tanh", 4)], input_range=([10.0], [30.0]), output_center=[5.0], output_scale=[2.0])
    for p in net.parameters():
        nn.init.zeros_(p)
    with torch.no_grad():
        net.net[-1].bias.fill_(1.0)  # z = 1 -> y = center + scale
    assert net(torch.tensor([[20.0]])).item() == pytest.approx(7.0)
    assert net.in_center.item() == 20.0 and net.in_halfwidth.item() == 10.0


def test_checkpoint_restores_without_restating_the_architecture(tmp_path):
    net = MLP(3, 2, [("GELU", 16), ("Softplus", 8)], output_activation="Tanh", input_range=([0, 0, 0], [1, 2, 3]))
    save_checkpoint(net, tmp_path / "m.pth", meta={"note": "x"})
    back, meta = load_checkpoint(tmp_path / "m.pth")
    x = torch.rand(7, 3)
    assert torch.equal(back(x), net(x)) and meta == {"note": "x"}
    other = MLP(3, 2, [("GELU", 32)])
    with pytest.raises(InvalidInputError, match="m.pth holds weights of another architecture"):
        load_weights(other, torch.load(tmp_path / "m.pth", weights_only=True)["state_dict"], "m.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="damaged"):
        load_checkpoint(tmp_path / "bad.pth")


# ---------------------------------------------------------------- losses
class Affine(nn.Module):
    """y = 2 x (two outputs from two inputs), with an output scale the losses must divide by."""

    def __init__(self, scale=(1.0, 1.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("out_scale", torch.tensor(scale))

    def forward(self, x):
        return self.w * x


def test_data_losses_match_hand_computation():
    X = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    Y = torch.tensor([[1.0, 5.0], [6.0, 0.0]])
    err = 2 * X - Y  # [[1, -1], [0, -2]]
    m = Affine()
    assert DataLoss(X, Y, metric="mse")(m).item() == pytest.approx((1 + 1 + 0 + 4) / 4)
    assert DataLoss(X, Y, metric="mae")(m).item() == pytest.approx((1 + 1 + 0 + 2) / 4)
    assert DataLoss(X, Y, metric="rmse")(m).item() == pytest.approx(np.sqrt(6 / 4))
    assert DataLoss(X, Y, metric="rel_l2")(m).item() == pytest.approx(np.sqrt(6) / np.sqrt(1 + 25 + 36))
    assert DataLoss(X, Y, metric="l4")(m).item() == pytest.approx((1 + 1 + 0 + 16) / 4)
    scaled = Affine(scale=(1.0, 2.0))  # errors of output 2 are halved before squaring
    assert DataLoss(X, Y, metric="mse")(scaled).item() == pytest.approx((1 + 0.25 + 0 + 1) / 4)
    assert torch.equal(err, 2 * X - Y)
    with pytest.raises(InvalidInputError, match=r"unknown data loss 'l3'; valid: \['l4', 'mae', 'mse', 'rel_l2', 'rmse'\]"):
        DataLoss(X, Y, metric="l3")
    with pytest.raises(InvalidInputError, match="NaN"):
        DataLoss(X, Y * float("nan"))


def test_minibatches_cover_every_row_each_pass_and_reshuffle():
    X = torch.arange(10.0).reshape(10, 1)
    loss = DataLoss(X, X, batch_size=5, seed=3)
    seen = [loss._batch(torch.device("cpu"))[0].flatten().tolist() for _ in range(4)]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and sorted(seen[2] + seen[3]) == list(range(10))
    assert seen[0] + seen[1] != seen[2] + seen[3]
    again = DataLoss(X, X, batch_size=5, seed=3)
    assert again._batch(torch.device("cpu"))[0].flatten().tolist() == seen[0]


class HermiteTrajectory(nn.Module):
    """Cubic Hermite interpolant of a tight solve_ivp solution of problem A: t -> (u, w), differentiable in t."""

    def __init__(self, problem, perturb=0.0):
        super().__init__()
        m = problem.model
        params = {"I": problem.fixed["I"]}
        y0 = np.array([problem.fixed["u0"], problem.fixed["w0"]])
        t = np.linspace(0, problem.t_end, 4001)
        sol = solve_ivp(lambda tt, y: m.numpy_rhs(y[None], params)[0], (0, t[-1]), y0, t_eval=t, method="DOP853",
                        rtol=1e-12, atol=1e-12)
        Y = sol.y.T
        dY = m.numpy_rhs(Y, params)
        self.t, self.Y, self.dY = (torch.tensor(a, dtype=torch.float64) for a in (t, Y, dY))
        self.perturb = perturb
        self.register_buffer("out_scale", torch.ones(2))
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        t = x[:, 0].double()
        i = torch.clamp(torch.searchsorted(self.t, t.detach()) - 1, 0, len(self.t) - 2)
        h = self.t[i + 1] - self.t[i]
        s = ((t - self.t[i]) / h)[:, None]
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        y = h00 * self.Y[i] + h10 * h[:, None] * self.dY[i] + h01 * self.Y[i + 1] + h11 * h[:, None] * self.dY[i + 1]
        y = y + self.perturb * torch.sin(2 * t)[:, None]
        return y.float() + 0 * self.dummy


def test_physics_residual_vanishes_on_the_exact_trajectory_and_not_on_a_perturbed_one(cfg):
    p = cfg.problem("A")
    exact = ODEResidualLoss(p, n_points=2048, sampler="uniform", seed=0)(HermiteTrajectory(p)).item()
    wrong = ODEResidualLoss(p, n_points=2048, sampler="uniform", seed=0)(HermiteTrajectory(p, perturb=0.02)).item()
    assert exact < 1e-8 and wrong > 1e-3
    ic = InitialConditionLoss(p, n_points=64)(HermiteTrajectory(p)).item()
    assert ic < 1e-12


def test_physics_residual_uses_the_solvers_model_definition(cfg):
    p = cfg.problem("C")
    loss = ODEResidualLoss(p, n_points=16, seed=0)

    class Const(nn.Module):  # y = (u0, w0): dy/dt = 0, so the residual is -f(u0, w0, I)
        def __init__(self):
            super().__init__()
            self.d = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x[:, 1:3] + 0 * self.d

    x = loss.sample(16, torch.device("cpu"))
    loss.sample.load_state_dict({"gen": torch.Generator().manual_seed(0).get_state(), "drawn": 0})
    expected = p.model.numpy_rhs(x[:, 1:3].double().numpy(), {"I": x[:, 3].double().numpy()})
    assert loss(Const()).item() == pytest.approx(float(np.mean(expected**2)), rel=1e-5)


def test_gate_residual_variants_differ_only_through_dV_dt(cfg):
    p = cfg.problem("hh_m")
    t, S = ds.trace_states(p)

    class Lin(nn.Module):  # m = a t + b V: dm/dt|_V = a, dm/dV = b
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.tensor(0.01)), nn.Parameter(torch.tensor(0.002))

        def forward(self, x):
            return (self.a * x[:, 0] + self.b * x[:, 1])[:, None]

    seed, total = GateResidualLoss(p.model, "m", t, S, "seed"), GateResidualLoss(p.model, "m", t, S, "total")
    model = Lin()
    m_pred = (0.01 * t + 0.002 * S[:, 0])
    states = S.copy()
    states[:, 1] = m_pred
    f = p.model.numpy_rhs(states)[:, 1]
    dVdt = np.diff(S[:, 0]) / np.diff(t)
    dVdt = np.append(dVdt, dVdt[-1])  # from the trace (the next test: Euler's own dV/dt, stimulus included)
    assert seed(model).item() == pytest.approx(np.mean((0.01 - f) ** 2), rel=1e-4)
    assert total(model).item() == pytest.approx(np.mean((0.01 + 0.002 * dVdt - f) ** 2), rel=1e-4)


def test_the_gate_residual_takes_dV_dt_from_the_trace_and_never_looks_at_the_test_points(cfg):
    """dV/dt is the trace's own (Euler's derivative with the stimulus pulses: the right-hand side without
    them is 10 mV/ms off on the pulses' points), and the training code's residual has no test time point."""
    p = cfg.problem("hh_m")
    t, S = ds.trace_states(p)
    loss = GateResidualLoss(p.model, "m", t, S, "total")
    pr = p.protocol
    mid = t[:-1] + 0.5 * p.save_interval
    on = (mid >= pr["start"]) & (((mid - pr["start"]) % pr["period"]) < pr["duration"])
    pulses = len(np.arange(pr["start"], p.t_end, pr["period"]))
    assert pulses >= 1 and on.sum() == pulses * round(pr["duration"] / p.save_interval)
    euler = p.model.numpy_rhs(S[:-1], {"I_stim": np.where(on, pr["amplitude"], 0.0)})[:, 0]
    np.testing.assert_allclose(loss.dVdt.numpy()[:-1], euler, rtol=1e-5, atol=1e-3)
    without = p.model.numpy_rhs(S[:-1])[:, 0]
    np.testing.assert_allclose((loss.dVdt.numpy()[:-1] - without)[on], pr["amplitude"], atol=1e-2)

    points = ds.pool_training_points(p, cfg.datasets.test_seed)
    test = ds._pool_indices(p, cfg.datasets.test_seed, 0)[0]
    assert len(points) + len(test) == len(t) and not set(points) & set(test)
    sub = GateResidualLoss(p.model, "m", t, S, "total", points=points)
    np.testing.assert_array_equal(sub.x.numpy(), loss.x.numpy()[points])
    np.testing.assert_array_equal(sub.dVdt.numpy(), loss.dVdt.numpy()[points])
    assert not set(np.round(t[test], 6)) & set(np.round(sub.x.numpy()[:, 0].astype(np.float64), 6))
    for bad in ([1, 1], [len(t)], [-1], np.array([0.5]), []):
        with pytest.raises(InvalidInputError, match="points must be distinct indices"):
            GateResidualLoss(p.model, "m", t, S, "total", points=bad)
    with pytest.raises(InvalidInputError, match="increasing time grid"):
        GateResidualLoss(p.model, "m", t[::-1], S, "total")


def test_user_residual_must_return_a_scalar():
    loss = ResidualLoss(lambda b, m: m(b), lambda n, d: torch.zeros(n, 1, device=d), 8, name="bad")
    with pytest.raises(InvalidInputError, match="must return a scalar tensor"):
        loss(nn.Linear(1, 1))


# ---------------------------------------------------------------- trainer
def _toy_data(seed=0, n=256):
    g = np.random.default_rng(seed)
    X = g.uniform(-1, 1, size=(n, 2))
    Y = np.stack([np.sin(2 * X[:, 0]) * X[:, 1], X[:, 0] ** 2], axis=1)
    return X, Y


def _toy_trainer(out, seed=0, validation=None, **kw):
    torch.manual_seed(seed)
    model = MLP(2, 2, [("Tanh", 16), ("Tanh", 16)])
    X, Y = _toy_data()
    tr = Trainer(model, out, validation=validation, val_every=kw.pop("val_every", 50), seed=seed,
                 lr_schedule=kw.pop("lr_schedule", "cosine"), **kw)
    tr.add_loss(DataLoss(X, Y, batch_size=32, seed=seed, name="data"))
    return tr, model


def test_trainer_writes_the_files_users_know(tmp_path):
    tr, model = _toy_trainer(tmp_path)
    summary = tr.train(200)
    assert summary["iterations"] == 200
    for f in ("best_model.pth", "losses.csv", "model_stats.txt", "checkpoint.pth"):
        assert (tmp_path / f).exists(), f
    lines = (tmp_path / "losses.csv").read_text().splitlines()
    assert lines[0].split(",") == ["iteration", "data", "total", "lr", "elapsed_s"] and len(lines) == 5
    first, last = (float(l.split(",")[2]) for l in (lines[1], lines[-1]))
    assert last < first
    stats = (tmp_path / "model_stats.txt").read_text()
    assert "net.0.weight" in stats and "|grad W|" in stats


def test_best_checkpoint_holds_the_weights_of_the_best_validation(tmp_path):
    scores = iter([5.0, 3.0, 1.0, 4.0, 6.0])
    snapshots = []

    def validation(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_mae": next(scores)}

    tr, model = _toy_trainer(tmp_path, validation=validation)
    tr.train(250)
    best, meta = load_checkpoint(tmp_path / "best_model.pth")
    assert meta["iteration"] == 150
    for k, v in best.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k
    assert any(not torch.equal(snapshots[2][k], snapshots[4][k]) for k in snapshots[2])  # training moved on
    assert all(torch.equal(v, snapshots[2][k]) for k, v in model.state_dict().items())  # best loaded back


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    ref, ref_model = _toy_trainer(tmp_path / "ref")
    ref.train(200)
    calls = {"n": 0}

    def dying_validation(m):
        calls["n"] += 1
        if calls["n"] == 3:  # at iteration 150: the checkpoint of iteration 100 is the last one written
            raise KeyboardInterrupt
        return {}

    tr, _ = _toy_trainer(tmp_path / "run", validation=dying_validation)
    with pytest.raises(KeyboardInterrupt):
        tr.train(200)
    tr2, model2 = _toy_trainer(tmp_path / "run", seed=99)  # different init: the checkpoint must override it
    summary = tr2.train(200)
    assert summary["resumed"]
    for (k, a), b in zip(ref_model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    rows = (tmp_path / "run/losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["50", "100", "150", "200"]


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_best_checkpoint(tmp_path):
    calls = iter(range(100, 0, -1))  # every validation improves: the best is the last one before the NaN
    tr, model = _toy_trainer(tmp_path, val_every=10, validation=lambda m: {"val_mae": float(next(calls))})

    class Exploding(DataLoss):
        calls = 0

        def __call__(self, m):
            Exploding.calls += 1
            v = super().__call__(m)
            return v * float("nan") if Exploding.calls > 35 else v

    X, Y = _toy_data()
    tr.losses = []
    tr.add_loss(Exploding(X, Y, batch_size=32, name="data"))
    with pytest.raises(TrainingDivergedError, match="iteration 35: loss data became nan; the best checkpoint"):
        tr.train(100)
    _, meta = load_checkpoint(tmp_path / "best_model.pth")
    assert meta["iteration"] == 30


@pytest.mark.parametrize("optimiser", ["ours", "torch's"])
@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_a_non_finite_loss_in_the_polish_stops_it_at_once(tmp_path, monkeypatch, engine, optimiser):
    """In the L-BFGS polish the loss is checked on every evaluation: by the value training.lbfgs.LBFGS reads
    back anyway (no read of its own), or in the closure where the optimiser is another one."""
    import training.lbfgs as lb

    if optimiser == "torch's":
        monkeypatch.setattr(lb, "LBFGS", torch.optim.LBFGS)
    tr, _ = _toy_trainer(tmp_path, val_every=10, lbfgs_iterations=100, engine=engine)
    last = 30  # the 20 Adam steps (full batch), then the polish: its 10th evaluation is the last finite one
    calls = [0]

    def count(v):
        calls[0] += 1
        return v * float("nan") if calls[0] > last else v

    class ExplodingAutograd(DataLoss):
        def __call__(self, m):
            return count(super().__call__(m))

    class ExplodingFused(DataLoss):  # keeps DataLoss's __call__, so the engine takes its fused form
        def fused_full(self, eng):
            step = super().fused_full(eng)
            return lambda weight: count(step(weight))

    Exploding = ExplodingAutograd if engine == "autograd" else ExplodingFused
    X, Y = _toy_data()
    tr.losses = []
    tr.add_loss(Exploding(X, Y, batch_size=None, name="data"))
    with pytest.raises(TrainingDivergedError, match="iteration 20: loss data became nan; the best checkpoint"):
        tr.train(20)
    assert calls[0] == last + 1  # stopped at the first non-finite evaluation


def test_early_stopping_and_bad_settings(tmp_path):
    tr, _ = _toy_trainer(tmp_path, validation=lambda m: {"val_mae": 1.0}, patience=2, val_every=10)
    s = tr.train(1000)
    assert s["stopped_early"] and s["iterations"] == 30
    with pytest.raises(InvalidInputError, match=r"unknown optimizer 'adamx'; valid"):
        Trainer(MLP(1, 1, [("Tanh", 2)]), tmp_path, optimizer="adamx")
    with pytest.raises(InvalidInputError, match="add at least one loss"):
        Trainer(MLP(1, 1, [("Tanh", 2)]), tmp_path / "x").train(10)


@pytest.mark.slow
def test_lbfgs_polish_lowers_the_loss(tmp_path):
    tr, _ = _toy_trainer(tmp_path / "a")
    tr.train(200)
    plain = tr.rows[-1]["total"]
    tr2, _ = _toy_trainer(tmp_path / "b", lbfgs_iterations=100)
    tr2.train(200)
    assert tr2.rows[-1]["total"] < plain


@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_polish_weight_decay_is_a_term_of_the_polish_and_shrinks_the_weights(tmp_path, engine):
    """lbfgs_weight_decay adds lam / 2 * sum(w**2) over every parameter to the polish's objective (a column
    of its own, in the total) and its gradient lam * w to what L-BFGS reads: the polished weights are
    smaller than without it. The first-order steps are untouched (their rows have no such term)."""
    lam = 1e-2
    plain, m0 = _toy_trainer(tmp_path / "plain", val_every=10, lbfgs_iterations=40, engine=engine)
    plain.train(20)
    decayed, m1 = _toy_trainer(tmp_path / "decay", val_every=10, lbfgs_iterations=40, engine=engine,
                               lbfgs_weight_decay=lam)
    decayed.train(20)
    log = pd.read_csv(tmp_path / "decay/losses.csv")
    adam, polish = log[log["lr"].notna()], log[log["lr"].isna()]
    assert adam["weight_decay"].isna().all() and list(polish["iteration"]) == [40, 60]
    norm2 = sum(float(torch.sum(p.detach().double() ** 2)) for p in m1.parameters())
    assert polish["weight_decay"].iloc[-1] == pytest.approx(0.5 * lam * norm2, rel=1e-5)
    np.testing.assert_allclose(polish["total"], polish["data"] + polish["weight_decay"], rtol=1e-6)
    assert "weight_decay" not in pd.read_csv(tmp_path / "plain/losses.csv")
    size = [sum(float(torch.sum(p.detach() ** 2)) for p in m.parameters()) for m in (m0, m1)]
    assert size[1] < size[0]


def test_polish_weight_decay_gradient_is_that_of_the_penalised_objective(tmp_path):
    """_penalised: value and gradient equal autograd's of data + lam / 2 * sum(w**2)."""
    lam = 0.3
    tr, model = _toy_trainer(tmp_path, lbfgs_weight_decay=lam)
    X, Y = (torch.as_tensor(a, dtype=torch.float32) for a in _toy_data())
    data = torch.mean((model(X) - Y) ** 2)
    data.backward()
    total, terms = tr._penalised(model, data.detach(), {"data": data.detach()}, gradients=True)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = torch.mean((model(X) - Y) ** 2) + 0.5 * lam * sum(torch.sum(p * p) for p in model.parameters())
    want.backward()
    assert float(total) == pytest.approx(float(want), rel=1e-6) and set(terms) == {"data", "weight_decay"}
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), "1e-5", True])
def test_polish_weight_decay_must_be_a_finite_non_negative_number(tmp_path, bad):
    with pytest.raises(InvalidInputError, match="lbfgs_weight_decay must be a finite number >= 0, got"):
        Trainer(MLP(2, 1, [("Tanh", 4)]), tmp_path, lbfgs_weight_decay=bad)


def test_config_checks_monitor_and_polish_weight_decay(cfg):
    for key, value in (("monitor", "val_rmse"), ("lbfgs_weight_decay", -1.0)):
        bad = cfg.as_dict()
        bad["training"]["overrides"]["hh_m"][key] = value
        with pytest.raises(InvalidInputError, match=f"training.overrides.hh_m.{key}"):
            validate_config(bad)


def test_configured_polish_weight_decay_is_per_training_row(cfg, data, tmp_path, monkeypatch):
    """training.lbfgs_weight_decay weighs the penalty against the data loss summed over the rows: the
    Trainer (whose data loss is their mean) gets it divided by n."""
    import training.train as tt

    made = []

    class Recording(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(tt, "Trainer", Recording)
    c = cfg.as_dict()
    c["training"]["overrides"]["hh_m"]["lbfgs_weight_decay"] = 4.0
    train_surrogate(validate_config(c), "hh_m", "ddnn", 400, 0, data / "hh_m", tmp_path, iterations=1)
    assert made[0].lbfgs_weight_decay == pytest.approx(4.0 / 400)


@pytest.mark.slow
def test_monitor_val_max_keeps_the_checkpoint_with_the_smallest_validation_max_error(cfg, data, tmp_path):
    """training.monitor: val_max picks the kept weights by the validation rows' largest error (every
    validation records val_mae and val_max); metrics.json gives the kept checkpoint's both."""
    c = cfg.as_dict()
    c["training"]["overrides"]["hh_m"].update(monitor="val_max", val_every=10)
    r = train_surrogate(validate_config(c), "hh_m", "ddnn", 400, 0, data / "hh_m", tmp_path, iterations=200)
    log = pd.read_csv(tmp_path / "losses.csv")
    best = log.loc[log["val_max"].idxmin()]
    assert r["best_iteration"] == int(best["iteration"]) and r["val_max"] == pytest.approx(best["val_max"])
    assert r["val_mae"] == pytest.approx(best["val_mae"])


# ---------------------------------------------------------------- ITNN
def test_rollout_advances_many_cells_by_increments():
    class Decay(nn.Module):  # increment = -0.1 * state, independent of the parameter
        def __init__(self):
            super().__init__()
            self.d = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return -0.1 * x[:, :2] + 0 * self.d

    y0 = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    R = rollout(Decay(), y0, np.zeros((3, 1)), n_steps=20, keep_every=5)
    assert R.shape == (5, 3, 2)
    np.testing.assert_allclose(R[-1], y0 * 0.9**20, rtol=1e-5)


# ---------------------------------------------------------------- entry point
@pytest.fixture(scope="module")
def data(cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    for p, n in (("B", 1000), ("D", 1000), ("hh_m", 400)):
        ds.write_split(cfg, p, n, root / p / f"n{n}/train.npz", root / p / f"n{n}/val.npz")
        ds.write_test(cfg, p, root / p / "test.npz")
    return root


@pytest.mark.slow
def test_a_tiny_training_run_reduces_test_error_and_writes_metrics(cfg, data, tmp_path):
    short = train_surrogate(cfg, "B", "ddnn", 1000, 0, data / "B", tmp_path / "s", iterations=1)
    long = train_surrogate(cfg, "B", "ddnn", 1000, 0, data / "B", tmp_path / "l", iterations=600)
    assert long["mae"] < 0.5 * short["mae"]
    m = json.loads((tmp_path / "l/metrics.json").read_text())
    for k in ("mae", "max_abs_err", "rel_l2", "n_params", "train_seconds", "iterations", "device", "euler_floor"):
        assert k in m, k
    assert m["test"]["rows"] == 30 * 200 and m["device"] == "cpu" and m["iterations"] == 600
    from training.cpu_step import unavailable_reason  # engine "auto" on a CPU: the compiled steps where they build

    assert m["training_path"] == ("fused engine" if unavailable_reason() else "fused engine, compiled CPU steps")


def test_the_configured_engine_trains_the_run(cfg, data, tmp_path):
    """training.engine reaches the Trainer (the run's metrics say which arithmetic trained it)."""
    c = cfg.as_dict()
    c["training"]["engine"] = "fused"  # torch operators, not the compiled steps "auto" takes on a CPU
    train_surrogate(validate_config(c), "B", "ddnn", 1000, 0, data / "B", tmp_path / "f", iterations=3)
    assert json.loads((tmp_path / "f/metrics.json").read_text())["training_path"] == "fused engine"
    c["training"]["engine"] = "autograd"
    train_surrogate(validate_config(c), "B", "pinn", 1000, 0, data / "B", tmp_path / "a", iterations=3)
    assert json.loads((tmp_path / "a/metrics.json").read_text())["training_path"] == "autograd"


def test_pinn_and_itnn_and_the_hh_m_variants_run(cfg, data, tmp_path):
    r = train_surrogate(cfg, "B", "pinn", 1000, 0, data / "B", tmp_path / "p", iterations=20)
    assert np.isfinite(r["mae"]) and "physics" in (tmp_path / "p/losses.csv").read_text().splitlines()[0]
    r = train_surrogate(cfg, "D", "itnn", 1000, 0, data / "D", tmp_path / "i", iterations=20)
    assert len(r["rollout_error"]["mae"]) == 201 and "rollout_bounded" in r
    for kind in ("ddnn", "pinn_seed", "pinn"):
        r = train_surrogate(cfg, "hh_m", kind, 400, 0, data / "hh_m", tmp_path / kind, iterations=20)
        assert r["arch"] == "tanh2x64" and r["test"]["rows"] == round(0.2 * 4001)


@pytest.mark.slow
def test_physics_informed_runs_take_the_lbfgs_polish_and_zero_iterations(cfg, data, tmp_path):
    """The polish and the untrained score evaluate the objective without a step: a physics loss (which
    differentiates the network) must still be computable there."""
    c = cfg.as_dict()
    c["training"]["overrides"]["hh_m"]["lbfgs_iterations"] = 40
    for kind in ("pinn", "pinn_seed"):
        r = train_surrogate(validate_config(c), "hh_m", kind, 400, 0, data / "hh_m", tmp_path / kind, iterations=20)
        assert r["iterations"] == 60 and np.isfinite(r["mae"])
        log = pd.read_csv(tmp_path / kind / "losses.csv")
        polish = log[log["lr"].isna()]  # the L-BFGS rows (no learning rate): one per 20 iterations
        assert list(polish["iteration"]) == [40, 60] and np.isfinite(polish["physics_" + kind.replace("pinn_", "").replace("pinn", "total")]).all()
        assert polish["elapsed_s"].iloc[-1] > log[log["iteration"] == 20]["elapsed_s"].iloc[0]  # the clock runs on
    r = train_surrogate(cfg, "B", "pinn", 1000, 0, data / "B", tmp_path / "zero", iterations=0)
    assert r["iterations"] == 0 and np.isfinite(r["mae"])


def test_entry_point_rejects_impossible_requests(cfg, data, tmp_path):
    with pytest.raises(InvalidInputError, match="surrogate 'itnn' cannot train on problem 'B'"):
        train_surrogate(cfg, "B", "itnn", 1000, 0, data / "B", tmp_path)
    with pytest.raises(InvalidInputError, match="unknown architecture 'big'"):
        train_surrogate(cfg, "B", "ddnn", 1000, 0, data / "B", tmp_path, architecture="big")
    bad = cfg.as_dict()
    bad["training"]["surrogates"]["itnn"] = ["C"]
    with pytest.raises(InvalidInputError, match="training.surrogates.itnn: itnn cannot train on 'C'"):
        validate_config(bad)


# ---------------------------------------------------------------- the seed README's scenarios
SCENARIO_A = '''
from fisiocomPinn.Net import FullyConnectedNetworkMod

hidden_config = [("ReLU", 128), ("ReLU", 128), ("Tanh", 64)]
input_dim = 4   # Input: [t, u0, w0, Iiapp]
output_dim = 2  # Output: [u(t), w(t)]
my_model = FullyConnectedNetworkMod(input_shape=input_dim, output_shape=output_dim, hidden_config=hidden_config)
print(my_model)

from fisiocomPinn.Trainer import Trainer
from fisiocomPinn.Loss import MSE
import torch

input_data = torch.load("inputs.pt")  # shape [N, 4]
target_data = torch.load("targets.pt") # shape [N, 2]
trainer = Trainer(model=my_model, output_folder="results_ddnn")
loss_mse = MSE(data_in=input_data, target=target_data, batch_size=1024)
trainer.add_loss(loss_mse, weight=1.0)
trainer.train(num_iterations=30)

my_model.load_state_dict(torch.load("results_ddnn/best_model.pth"))
my_model.eval()
predicted_output = my_model(input_data[:5])
'''

SCENARIO_B = '''
from fisiocomPinn.Net import FullyConnectedNetworkMod
from fisiocomPinn.Trainer import Trainer
from fisiocomPinn.Loss_PINN import LOSS_PINN
import torch

my_model = FullyConnectedNetworkMod(input_shape=1, output_shape=2, hidden_config=[("Tanh", 32), ("Tanh", 32)])

def batch_generator(batch_size, device):
    t = torch.rand(batch_size, 1, device=device) * 50.0
    t.requires_grad = True
    return t

def fhn_pinn_func(t_batch, model):
    a, b, c, tau, Iiapp = 0.7, 0.8, 1.0, 12.5, 0.5
    uv_pred = model(t_batch)
    u, w = uv_pred[:, 0:1], uv_pred[:, 1:2]
    du_dt = torch.autograd.grad(u, t_batch, torch.ones_like(u), create_graph=True)[0]
    dw_dt = torch.autograd.grad(w, t_batch, torch.ones_like(w), create_graph=True)[0]
    residual_u = du_dt - (c * (u - u**3 / 3 - w) + Iiapp)
    residual_w = dw_dt - ((u + a - b * w) / tau)
    return torch.mean(residual_u**2) + torch.mean(residual_w**2)

trainer_pinn = Trainer(model=my_model, output_folder="results_pinn")
loss_pinn = LOSS_PINN(pinn_func=fhn_pinn_func, batch_generator=batch_generator, batch_size=2048, name="FHN_Residual_Loss")
trainer_pinn.add_loss(loss_pinn, weight=1.0)
trainer_pinn.train(num_iterations=30)
'''


@pytest.mark.slow
@pytest.mark.parametrize("scenario,folder,column", [(SCENARIO_A, "results_ddnn", "MSE"),
                                                    (SCENARIO_B, "results_pinn", "FHN_Residual_Loss")])
def test_seed_readme_scenarios_run_unchanged(scenario, folder, column, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, Y = np.random.default_rng(0).uniform(size=(2048, 4)), np.random.default_rng(1).uniform(size=(2048, 2))
    torch.save(torch.tensor(X, dtype=torch.float32), "inputs.pt")
    torch.save(torch.tensor(Y, dtype=torch.float32), "targets.pt")
    exec(compile(textwrap.dedent(scenario), "scenario", "exec"), {"__name__": "scenario"})
    assert (tmp_path / folder / "best_model.pth").exists()
    header = (tmp_path / folder / "losses.csv").read_text().splitlines()[0].split(",")
    assert column in header


@pytest.mark.slow
def test_an_itnn_rolls_out_over_other_trajectory_problems_test_sets(cfg, data, tmp_path):
    """benchmarks.itnn_transfer: on C's test set (D's own test_from) each seed scores exactly as training scored
    it; B's test set (I fixed inside D's range) gets rows of its own; A (I = 0) is refused with the reason."""
    from benchmarks.itnn_transfer import main, transfer

    for p in ("B", "C"):
        ds.write_test(cfg, p, tmp_path / "ds" / p / "test.npz")
    runs = [train_surrogate(cfg, "D", "itnn", 1000, s, data / "D", tmp_path / f"s{s}", iterations=150) for s in (0, 1)]
    ck = [tmp_path / f"s{s}" / "best_model.pth" for s in (0, 1)]
    rows = transfer(cfg, "D", 1000, "mlp3x64", ck, ["C", "B"], tmp_path / "ds")
    by = {(r["test"], r["network"]): r for r in rows}
    for s, r in zip((0, 1), runs):
        assert by[("C", f"seed {s}")]["mae"] == pytest.approx(r["mae"], rel=1e-6)
        assert by[("C", f"seed {s}")]["max_abs_err"] == pytest.approx(r["max_abs_err"], rel=1e-6)
    b = [by[("B", k)] for k in ("seed 0", "seed 1", "mean of 2 (std)", "ensemble (mean of the networks)")]
    assert all(np.isfinite(r["mae"]) and r["floor_mae"] > 0 for r in b)
    assert b[2]["mae"] == pytest.approx((b[0]["mae"] + b[1]["mae"]) / 2)
    assert b[0]["mae"] != by[("C", "seed 0")]["mae"]
    with pytest.raises(InvalidInputError, match=r"problem 'A' gives I in \[0, 0\], outside the ITNN's training range"):
        transfer(cfg, "D", 1000, "mlp3x64", ck, ["A"], tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="problem 'B' is not a step problem"):
        transfer(cfg, "B", 1000, "mlp3x64", ck, ["C"], tmp_path / "ds")
    assert main(["--n", "1000", "--arch", "mlp3x64", "--model", str(ck[0]), "--on", "B", "--data", str(tmp_path / "ds"),
                 "--problem", "B"]) == 2  # the same as an error message, no traceback
    # the pipeline's side: which transfers a configuration has, their file, and the table that checks it
    from benchmarks.tables import transfer_table
    from surrogates.transfer import score_transfer, transfer_grid

    assert transfer_grid(cfg) == [("D", "itnn", n, "mlp3x64", "B") for n in (1000, 10000, 100000)]
    out = tmp_path / "on_B.json"
    score_transfer(cfg, "D", 1000, "mlp3x64", ck, "B", tmp_path / "ds" / "B" / "test.npz", out)
    t = transfer_table([out])
    assert list(t.network) == ["seed 0", "seed 1", "mean over seeds", "ensemble"] and set(t.test_on) == {"B"}
    assert t.mae.tolist() == pytest.approx([by[("B", k)]["mae"] for k in ("seed 0", "seed 1", "mean of 2 (std)",
                                                                         "ensemble (mean of the networks)")])
    with pytest.raises(InvalidInputError, match="is not a transfer of this configuration"):
        transfer_table([out], cfg)  # not where this configuration's transfer lies


def test_output_bounds_keep_a_gate_in_its_range_whatever_the_input(cfg, data, tmp_path):
    """training.overrides.hh_m.output_bounds (m in [0, 1]): a Tanh output layer onto the bounds, in the
    checkpoint too; far outside the trace the gate still lies in [0, 1] (an unbounded net gave -6.5 there)."""
    assert cfg.training("hh_m").output_bounds == {"m": (0.0, 1.0)}
    for kind in ("ddnn", "pinn"):
        train_surrogate(cfg, "hh_m", kind, 400, 0, data / "hh_m", tmp_path / kind, iterations=20)
        model, _ = load_checkpoint(tmp_path / kind / "best_model.pth")
        assert model.output_activation == "Tanh"
        assert model.out_center.tolist() == [0.5] and model.out_scale.tolist() == [0.5]
        x = torch.cat([torch.rand(4000, 1) * 400 - 200, torch.rand(4000, 1) * 2000 - 1000], dim=1)
        with torch.no_grad():
            m = model(x)
        assert m.min() >= 0.0 and m.max() <= 1.0 and m.std() > 0
    # C has no bounds: its output layer stays linear
    r = train_surrogate(cfg, "B", "ddnn", 1000, 0, data / "B", tmp_path / "b", iterations=2)
    assert load_checkpoint(tmp_path / "b" / "best_model.pth")[0].output_activation is None and np.isfinite(r["mae"])


def test_output_bounds_are_checked_naming_the_key(cfg):
    from training.train import build_model

    def with_bounds(problem, bounds):
        c = cfg.as_dict()
        c["training"]["overrides"].setdefault(problem, {})["output_bounds"] = bounds
        return validate_config(c)

    with pytest.raises(InvalidInputError, match=r"training.overrides.C.output_bounds: give bounds for each output "
                                                r"of 'C' \(\['u', 'w'\]\), got \['u'\]"):
        with_bounds("C", {"u": [-1.0, 2.0]})
    with pytest.raises(InvalidInputError, match=r"training.overrides.hh_m.output_bounds.m: the lower bound must be "
                                                r"below the upper, got \[1.0, 0.0\]"):
        with_bounds("hh_m", {"m": [1.0, 0.0]})
    with pytest.raises(InvalidInputError, match="'D' is a step problem"):
        with_bounds("D", {"u": [-1.0, 2.0], "w": [-1.0, 1.0]})
    p = cfg.problem("hh_m")
    X = np.array([[0.0, -70.0], [1.0, 20.0]])
    with pytest.raises(InvalidInputError, match=r"training labels of 'm' leave \[0, 0.5\] \(1 rows\)"):
        build_model(p, [("Tanh", 4)], X, np.array([[0.1], [0.7]]), 0, {"m": [0.0, 0.5]})
