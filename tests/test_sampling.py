"""Sampling the training rows where the state changes fast (training.sampling: rate), from training data only."""
import numpy as np
import pytest
import torch

from core.errors import InvalidInputError
from surrogates.config import load_config
from surrogates.losses import DataLoss, contrast_weights, rate_weights


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def _rows(p, n=4000, seed=0):
    """Rows of a trajectory problem and their labels from the solver (states along real trajectories)."""
    import solvers

    g = np.random.default_rng(seed)
    lo, hi = p.box()
    cells = 40
    X0 = g.uniform(lo, hi, (cells, len(lo)))
    states, params = p.split(p.columns(X0), cells)
    _, Y = solvers.simulate(p.model, states, 20.0, p.dt, 10, params, backend="numpy")  # (saves, cells, states)
    t = np.arange(Y.shape[0]) * 10 * p.dt
    X = np.concatenate([np.broadcast_to(t[:, None, None], (len(t), cells, 1)),
                        np.broadcast_to(X0[None, :, 1:], (len(t), cells, len(lo) - 1))], axis=2).reshape(-1, len(lo))
    return X, Y.reshape(-1, Y.shape[-1])[:, [p.model.state_names.index(o) for o in p.outputs]]


def test_rate_weights_favour_the_fast_rows_and_keep_a_uniform_floor(cfg):
    p = cfg.problem("C")
    X, Y = _rows(p)
    w = rate_weights(p, X, Y, 4.0)
    assert w.shape == (len(X),) and w.min() >= 1.0 and np.isfinite(w).all()
    assert np.mean(w - 1.0) == pytest.approx(4.0)  # the strength is the mean excess over the floor
    fast = np.argsort(w)[-len(w) // 20:]  # the heaviest 5%: their u changes fast (upstrokes and downstrokes)
    f = p.model.torch_rhs(torch.as_tensor(Y), {k: torch.as_tensor(v) if np.ndim(v) else v
                                                 for k, v in p.parameters(p.columns(X)).items()}).numpy()
    speed = np.abs(f[:, 0])
    assert speed[fast].min() > np.median(speed)
    assert np.array_equal(rate_weights(p, X, Y, 0.0), np.ones(len(X)))


def test_rate_weights_of_a_step_problem_are_its_increments_and_other_kinds_are_refused(cfg):
    d = cfg.problem("D")
    g = np.random.default_rng(1)
    X = g.uniform(*d.box(), (500, len(d.inputs)))
    inc = g.normal(size=(500, len(d.outputs))) * np.array([1e-2, 1e-3])
    w = rate_weights(d, X, inc, 2.0)
    r = np.linalg.norm(inc / inc.std(0), axis=1)
    assert np.allclose(w, 1 + 2.0 * r / r.mean())
    with pytest.raises(InvalidInputError, match="sampling 'rate' needs a trajectory or a step problem; 'hh_m'"):
        h = cfg.problem("hh_m")
        rate_weights(h, np.zeros((3, len(h.inputs))), np.zeros((3, len(h.outputs))), 1.0)


def test_contrast_weights_favour_rows_whose_neighbours_disagree(cfg):
    """Rows where the label jumps between neighbouring inputs (here: a step in u0 at 0.4, as a threshold)
    weigh more than rows in smooth regions; neighbours share the time."""
    p = cfg.problem("C")
    g = np.random.default_rng(2)
    lo, hi = p.box()
    X = g.uniform(lo, hi, (3000, 4))
    X[:, 0] = np.round(X[:, 0])  # a time grid, as in the datasets
    Y = np.stack([np.where(X[:, 1] > 0.4, 1.0, 0.0) + 0.01 * X[:, 0], 0.05 * X[:, 0]], axis=1)  # smooth in t only
    w = contrast_weights(p, X, Y, 4.0)
    assert w.min() >= 1.0 and np.mean(w - 1.0) == pytest.approx(4.0)
    near = np.abs(X[:, 1] - 0.4) < 0.02
    far = np.abs(X[:, 1] - 0.4) > 0.2
    assert np.median(w[near]) > 3 * np.median(w[far])
    with pytest.raises(InvalidInputError, match="sampling 'contrast' needs a trajectory or a step problem; 'hh_m'"):
        h = cfg.problem("hh_m")
        contrast_weights(h, np.zeros((30, len(h.inputs))), np.zeros((30, len(h.outputs))), 1.0)
    with pytest.raises(InvalidInputError, match="more than 8 training rows"):
        contrast_weights(p, X[:5], Y[:5], 1.0)


def test_weighted_passes_draw_rows_in_proportion_and_resume_exactly():
    X = torch.arange(1000, dtype=torch.float32)[:, None]
    w = np.ones(1000)
    w[:100] = 10.0  # the first tenth weighs 10: about half of every pass
    loss = DataLoss(X, X, batch_size=100, seed=3, weights=w)
    loss._new_pass()
    share = (loss._perm < 100).float().mean().item()
    assert 0.45 < share < 0.60  # 1000 / (1000 + 900) = 0.526
    # a resumed loss continues with the same rows
    ref = DataLoss(X, X, batch_size=100, seed=3, weights=w)
    seen = [ref._perm_rows(ref._next_rows()).clone() for _ in range(4)]
    again = DataLoss(X, X, batch_size=100, seed=3, weights=w)
    for _ in range(2):
        again._next_rows()
    state = again.state_dict()
    resumed = DataLoss(X, X, batch_size=100, seed=3, weights=w)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed._perm_rows(resumed._next_rows()), s) for s in seen[2:])
    # without weights every row comes once per pass
    plain = DataLoss(X, X, batch_size=100, seed=3)
    plain._new_pass()
    assert torch.equal(plain._perm.sort().values, torch.arange(1000))


@pytest.mark.parametrize("bad", [np.ones(999), -np.ones(1000), np.zeros(1000), np.full(1000, np.nan)])
def test_bad_weights_are_refused(bad):
    X = torch.zeros(1000, 1)
    with pytest.raises(InvalidInputError, match="weights must be 1000 finite non-negative numbers"):
        DataLoss(X, X, batch_size=10, weights=bad)


def test_training_takes_the_sampling_setting(cfg, tmp_path):
    from core.layout import Layout
    from surrogates import datasets as ds
    from training.train import train_surrogate

    from conftest import ROOT, TINY
    from core.config import merge, read_config
    from surrogates.config import validate_config
    import copy

    c = validate_config(merge(merge(read_config(ROOT / "config/quick.yaml"), copy.deepcopy(TINY)),
                              {"results_dir": str(tmp_path / "r"), "training": {"sampling": "rate"}}))
    lay = Layout(c.results_dir)
    ds.write_test(c, "C", lay.test("C"))
    ds.write_split(c, "C", 300, lay.split("C", 300, "train"), lay.split("C", 300, "val"))
    r = train_surrogate(c, "C", "ddnn", 300, 0, lay.dataset_dir("C"), tmp_path / "m", iterations=10)
    assert r["settings"]["sampling"] == "rate" and r["settings"]["sampling_strength"] == 4.0
    with pytest.raises(Exception, match="sampling"):
        validate_config(merge(c.as_dict(), {"training": {"sampling": "adaptive"}}))
    c2 = merge(c.as_dict(), {"results_dir": str(tmp_path / "r"), "training": {"sampling": "contrast"}})
    r = train_surrogate(validate_config(c2), "C", "ddnn", 300, 0, lay.dataset_dir("C"), tmp_path / "m2", iterations=10)
    assert r["settings"]["sampling"] == "contrast"


def test_the_accuracy_program_trains_in_worker_processes(tmp_path):
    """``benchmarks.surrogate_accuracy --workers 2``: the runs go to spawned processes (a forked child of a
    process that has used OpenMP was killed by libgomp once, mid-ablation) and give the same results as
    in-process training."""
    import copy

    from benchmarks.surrogate_accuracy import run, select_runs
    from conftest import ROOT, TINY
    from core.config import merge, read_config
    from surrogates.config import validate_config

    def cfg_at(d):
        return validate_config(merge(merge(read_config(ROOT / "config/quick.yaml"), copy.deepcopy(TINY)),
                                     {"results_dir": str(tmp_path / d), "training": {"seeds": [0, 1]}}))

    runs = select_runs(cfg_at("a"), ["C:ddnn:300"])
    pooled = run(cfg_at("a"), runs, iterations=20, workers=2)
    alone = run(cfg_at("b"), runs, iterations=20, workers=1)
    assert len(pooled) == 2 and pooled["mae"].tolist() == pytest.approx(alone["mae"].tolist(), rel=1e-6)
