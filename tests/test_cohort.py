"""Seeds trained as one stacked model (training.cohort): the same runs as alone, resumable both ways."""
import numpy as np
import pytest
import torch

from surrogates.losses import DataLoss, ODEResidualLoss
from surrogates.network import MLP
from training.cohort import cohort_refusal, train_together
from training.trainer import Trainer

N, BATCH = 500, 64  # 500 rows in batches of 64: passes end mid-way, as in a real run


def _data():
    g = np.random.default_rng(0)
    X = g.uniform(-2, 2, (N, 3)).astype(np.float32)
    Y = np.stack([np.sin(X[:, 0] * X[:, 1]), np.tanh(X[:, 2] - X[:, 0])], 1).astype(np.float32)
    return X, Y


def _trainer(out, seed, schedule="cosine", metric="mse", batch=BATCH, val=True, hidden=None, **kw):
    X, Y = _data()
    torch.manual_seed(seed)
    m = MLP(3, 2, hidden or [("SiLU", 16), ("Tanh", 16)], input_range=([-2] * 3, [2] * 3), output_center=[0.1, 0.0],
            output_scale=[0.9, 0.8])
    Xv, Yv = torch.as_tensor(X[:50]), torch.as_tensor(Y[:50])
    validation = (lambda net: {"val_mae": torch.mean(torch.abs(net(Xv) - Yv))}) if val else None
    tr = Trainer(m, out, validation=validation, val_every=20, lr=1e-2, lr_schedule=schedule, seed=seed,
                 progress=False, **kw)
    tr.add_loss(DataLoss(X, Y, batch_size=batch, metric=metric, seed=seed, name="data"))
    return tr, m


def _flat(m):
    return torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])


@pytest.mark.parametrize("metric", ["mse", "l4"])
def test_a_cohort_trains_each_seed_as_it_trains_alone(tmp_path, metric):
    seeds = [0, 1, 2]
    alone = []
    for s in seeds:
        tr, m = _trainer(tmp_path / f"alone{s}", s, metric=metric)
        tr.train(70)
        alone.append((tr, m))
    pairs = [_trainer(tmp_path / f"cohort{s}", s, metric=metric) for s in seeds]
    summaries = train_together([t for t, _ in pairs], 70)
    assert [s["cohort"] for s in summaries] == [3, 3, 3]
    assert {s["path"] for s in summaries} == {"seeds stacked (training.cohort)"}
    for (ta, ma), (tc, mc), s in zip(alone, pairs, seeds):
        assert [r["iteration"] for r in tc.rows] == [20, 40, 60, 70]
        for ra, rc in zip(ta.rows, tc.rows):
            assert rc["data"] == pytest.approx(ra["data"], rel=1e-4), f"seed {s} at {ra['iteration']}"
            assert rc["val_mae"] == pytest.approx(ra["val_mae"], rel=1e-4)
        torch.testing.assert_close(_flat(mc), _flat(ma), rtol=1e-4, atol=1e-5)
        assert tc.best_iteration == ta.best_iteration
        for f in ("best_model.pth", "losses.csv", "model_stats.txt", "checkpoint.pth"):
            assert (tmp_path / f"cohort{s}" / f).exists(), f
    # the seeds really are different networks (own initialisation, own data order)
    assert not torch.allclose(_flat(pairs[0][1]), _flat(pairs[1][1]))


def test_full_batch_and_constant_schedule(tmp_path):
    alone = []
    for s in (3, 4):
        tr, m = _trainer(tmp_path / f"a{s}", s, schedule="constant", batch=None)
        tr.train(30)
        alone.append(m)
    pairs = [_trainer(tmp_path / f"c{s}", s, schedule="constant", batch=None) for s in (3, 4)]
    train_together([t for t, _ in pairs], 30)
    for ma, (_, mc) in zip(alone, pairs):
        torch.testing.assert_close(_flat(mc), _flat(ma), rtol=1e-4, atol=1e-5)


def _killed_cohort(tmp_path, at_validation):
    """A cohort whose run is killed at its ``at_validation``-th validation (of the first seed)."""
    pairs = [_trainer(tmp_path / f"seed{s}", s) for s in (0, 1)]
    calls = {"n": 0}
    base = pairs[0][0].validation

    def dying(net):
        calls["n"] += 1
        if calls["n"] == at_validation:
            raise KeyboardInterrupt
        return base(net)

    pairs[0][0].validation = dying
    with pytest.raises(KeyboardInterrupt):
        train_together([t for t, _ in pairs], 70)


def test_a_killed_cohort_resumes_exactly(tmp_path):
    ref = [_trainer(tmp_path / "ref" / f"seed{s}", s) for s in (0, 1)]
    train_together([t for t, _ in ref], 70)
    _killed_cohort(tmp_path / "run", 3)  # dies at iteration 60: both seeds' checkpoints are at 40
    again = [_trainer(tmp_path / "run" / f"seed{s}", s) for s in (0, 1)]
    summaries = train_together([t for t, _ in again], 70)
    assert [s["resumed_from"] for s in summaries] == [40, 40]
    for (_, a), (_, b) in zip(ref, again):
        torch.testing.assert_close(_flat(b), _flat(a), rtol=0, atol=0)
    assert [r["iteration"] for r in again[1][0].rows] == [20, 40, 60, 70]


def test_a_cohort_checkpoint_resumes_alone_and_the_other_way_round(tmp_path):
    ref = [_trainer(tmp_path / "ref" / f"seed{s}", s) for s in (0, 1)]
    train_together([t for t, _ in ref], 70)
    _killed_cohort(tmp_path / "run", 3)
    tr, m = _trainer(tmp_path / "run" / "seed1", 1)  # one seed goes on alone from the cohort's checkpoint
    assert tr.train(70)["resumed_from"] == 40
    torch.testing.assert_close(_flat(m), _flat(ref[1][1]), rtol=1e-4, atol=1e-5)
    # a lone run killed at 40 and a cohort that resumes it (its partner starting fresh would be out of step:
    # the cohort then trains them one after the other, and says so)
    lone, _ = _trainer(tmp_path / "mixed" / "seed0", 0)
    calls = {"n": 0}
    base = lone.validation

    def dying(net):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return base(net)

    lone.validation = dying
    with pytest.raises(KeyboardInterrupt):
        lone.train(70)
    pairs = [_trainer(tmp_path / "mixed" / f"seed{s}", s) for s in (0, 1)]
    summaries = train_together([t for t, _ in pairs], 70)
    assert [s["cohort"] for s in summaries] == [1, 1]
    assert summaries[0]["resumed_from"] == 40 and summaries[1]["resumed_from"] is None
    for (_, a), (_, b) in zip(ref, pairs):
        torch.testing.assert_close(_flat(b), _flat(a), rtol=1e-4, atol=1e-5)


def test_what_a_cohort_refuses_trains_one_after_the_other(tmp_path, capsys):
    from surrogates.config import load_config

    a, _ = _trainer(tmp_path / "a", 0)
    b, _ = _trainer(tmp_path / "b", 1, batch=32)
    assert "batch" in cohort_refusal([a, b])
    c, _ = _trainer(tmp_path / "c", 1, hidden=[("SiLU", 8)])
    assert "architectures" in cohort_refusal([a, c])
    d, _ = _trainer(tmp_path / "d", 1, patience=3)
    assert "patience" in cohort_refusal([a, d])
    assert "fewer than two" in cohort_refusal([a])
    e, _ = _trainer(tmp_path / "e", 1)
    e.add_loss(ODEResidualLoss(load_config().problem("C"), 16, "uniform", seed=5), 0.1)
    assert "physics" in cohort_refusal([a, e])
    same, _ = _trainer(tmp_path / "a", 2)
    with pytest.raises(Exception, match="same output folder"):
        cohort_refusal([a, same])
    summaries = train_together([a, b], 20)
    assert [s["cohort"] for s in summaries] == [1, 1]
    assert "one after the other" in capsys.readouterr().err
    assert a.iteration == b.iteration == 20


def test_a_diverging_seed_stops_the_cohort_naming_its_folder(tmp_path):
    from training.trainer import TrainingDivergedError

    pairs = [_trainer(tmp_path / f"seed{s}", s) for s in (0, 1)]
    pairs[1][0].losses[0][0].Y[7, 0] = float("inf")  # one bad label: seed 1's loss becomes infinite
    with pytest.raises(TrainingDivergedError, match="seed1"):
        train_together([t for t, _ in pairs], 70)


def test_the_cohort_step_never_touches_the_host(tmp_path, monkeypatch):
    """The stacked step is what a CUDA graph captures on a GPU: no tensors from host data, no values read."""
    from conftest import host_touches, op_recorder

    from training.cohort import _Cohort

    rec = op_recorder()
    body = _Cohort._body

    def recorded(self, lr):
        with rec:
            body(self, self._lr())  # as captured: the learning rate from the device's step count

    monkeypatch.setattr(_Cohort, "_body", recorded)
    pairs = [_trainer(tmp_path / f"s{s}", s) for s in (0, 1)]
    train_together([t for t, _ in pairs], 3)
    assert len(rec.ops) > 30
    found = host_touches(rec.ops)
    assert not found, f"the cohort step does: {found}"


@pytest.mark.gpu
def test_a_captured_cohort_on_a_gpu_matches_the_seeds_alone(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    alone = []
    for s in (0, 1, 2):
        tr, m = _trainer(tmp_path / f"a{s}", s, capture=False)
        m.cuda()
        tr.validation = None
        tr.train(70)
        alone.append(m)
    pairs = [_trainer(tmp_path / f"c{s}", s, val=False) for s in (0, 1, 2)]
    for _, m in pairs:
        m.cuda()
    train_together([t for t, _ in pairs], 70)
    for ma, (_, mc) in zip(alone, pairs):
        torch.testing.assert_close(_flat(mc), _flat(ma), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_cohort_takes_each_seeds_lbfgs_polish_as_alone(tmp_path):
    """The polish runs per seed after the stacked steps, on parameters that are views of the stacked tensors.
    Engine "fused" (torch operators) on both sides: the stacked steps do the same arithmetic as a lone run's
    torch operators, and 40 L-BFGS iterations turn a difference of float32 rounding in the first-order steps
    (the compiled CPU data step's, ~1e-7) into ~5e-4 in the weights."""
    seeds = [0, 1]
    alone = []
    for s in seeds:
        tr, m = _trainer(tmp_path / f"alone{s}", s, lbfgs_iterations=40, engine="fused")
        tr.train(40)
        alone.append((tr, m))
    pairs = [_trainer(tmp_path / f"cohort{s}", s, lbfgs_iterations=40, engine="fused") for s in seeds]
    train_together([t for t, _ in pairs], 40)
    for (ta, ma), (tc, mc) in zip(alone, pairs):
        assert [r["iteration"] for r in tc.rows] == [20, 40, 60, 80]
        assert tc.rows[-1]["data"] < 0.9 * tc.rows[1]["data"]  # the polish lowered the loss
        assert tc.rows[-1]["data"] == pytest.approx(ta.rows[-1]["data"], rel=1e-3)
        torch.testing.assert_close(_flat(mc), _flat(ma), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_cohorts_polish_runs_on_the_engine_and_in_float64_where_asked(tmp_path, capsys):
    """After the stacked steps each seed's polish runs on its own engine (set up by the cohort's start), so
    lbfgs_dtype = float64 holds in a cohort too (the GPU preset trains hh_m's ddnn seeds as one): each seed
    polishes a float64 copy, its weights rounded back into the stacked tensors' views, and ends where it
    ends alone."""
    seeds = [0, 1]
    alone = []
    for s in seeds:
        tr, m = _trainer(tmp_path / f"alone{s}", s, lbfgs_iterations=40, engine="fused", lbfgs_dtype="float64")
        tr.train(40)
        alone.append((tr, m))
    capsys.readouterr()
    pairs = [_trainer(tmp_path / f"cohort{s}", s, lbfgs_iterations=40, engine="fused", lbfgs_dtype="float64")
             for s in seeds]
    train_together([t for t, _ in pairs], 40)
    err = capsys.readouterr().err
    assert err.count("L-BFGS polish in float64 from iteration 40") == 2 and "needs the fused engine" not in err
    for (ta, ma), (tc, mc) in zip(alone, pairs):
        assert all(p.dtype == torch.float32 for p in mc.parameters())
        assert tc.rows[-1]["data"] < 0.9 * tc.rows[1]["data"]
        assert tc.rows[-1]["data"] == pytest.approx(ta.rows[-1]["data"], rel=1e-3)
        torch.testing.assert_close(_flat(mc), _flat(ma), rtol=1e-3, atol=1e-4)
