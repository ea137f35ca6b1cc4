"""Trainers side by side in one process (training.side_by_side): each exactly as trained alone."""
import numpy as np
import pytest
import torch

from surrogates.config import load_config
from surrogates.losses import DataLoss, InitialConditionLoss, ODEResidualLoss
from surrogates.network import MLP
from training.side_by_side import in_side_by_side_thread, train_side_by_side
from training.trainer import Trainer, TrainingDivergedError


def _pinn(out, seed, device="cpu", explode=False):
    """A small PINN on problem C (data, ODE residual, initial condition), validated every 10 steps, with a
    short L-BFGS polish: every kind of step a side-by-side job runs."""
    c = load_config().problem("C")
    g = np.random.default_rng(seed)
    lo, hi = c.box()
    X = g.uniform(lo, hi, (300, 4)).astype(np.float32)
    Y = g.uniform(0, 1, (300, 2)).astype(np.float32)
    torch.manual_seed(seed)
    m = MLP(4, 2, [("SiLU", 16), ("Tanh", 16)], input_range=c.box(), output_center=[0.4, 0.05],
            output_scale=[0.6, 0.1]).to(device)
    Xv, Yv = torch.as_tensor(X[:40], device=device), torch.as_tensor(Y[:40], device=device)
    tr = Trainer(m, out, validation=lambda net: {"val_mae": torch.mean(torch.abs(net(Xv) - Yv))}, val_every=10,
                 lr=1e9 if explode else 3e-3, seed=seed, progress=False, lbfgs_iterations=20)
    tr.add_loss(DataLoss(X, Y, batch_size=64, seed=seed, name="data"))
    tr.add_loss(ODEResidualLoss(c, 64, "sobol", seed=seed + 10), 0.5)
    tr.add_loss(InitialConditionLoss(c, 32, "uniform", seed=seed + 20), 0.5)
    return tr, m


def _flat(m):
    return torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])


def test_side_by_side_trains_each_network_as_alone_in_its_own_thread(tmp_path):
    alone = []
    for s in (0, 1, 2):
        tr, m = _pinn(tmp_path / f"alone{s}", s)
        tr.train(40)
        alone.append((tr, m))
    pairs = [_pinn(tmp_path / f"sbs{s}", s) for s in (0, 1, 2)]
    seen = []
    orig = Trainer.train

    def train(self, n):
        seen.append(in_side_by_side_thread())
        return orig(self, n)

    Trainer.train = train
    try:
        summaries = train_side_by_side([t for t, _ in pairs], 40)
    finally:
        Trainer.train = orig
    assert seen == [True] * 3 and not in_side_by_side_thread()
    assert [s["cohort"] for s in summaries] == [3, 3, 3]
    assert len({s["train_seconds"] for s in summaries}) == 1  # the wall time of them all, as a cohort reports it
    for (ta, ma), (tb, mb) in zip(alone, pairs):
        assert [r["iteration"] for r in tb.rows] == [r["iteration"] for r in ta.rows] == [10, 20, 30, 40, 60]
        assert [r["total"] for r in tb.rows] == [r["total"] for r in ta.rows]  # the same steps, bit for bit
        assert torch.equal(_flat(ma), _flat(mb)) and tb.best_iteration == ta.best_iteration
        assert (tb.out / "best_model.pth").exists() and (tb.out / "losses.csv").exists()
    assert not torch.equal(_flat(pairs[0][1]), _flat(pairs[1][1]))


def test_a_failing_network_raises_after_the_others_have_finished(tmp_path):
    good, _ = _pinn(tmp_path / "good", 0)
    bad, _ = _pinn(tmp_path / "bad", 1, explode=True)
    with pytest.raises(TrainingDivergedError):
        train_side_by_side([bad, good], 30)
    assert good.iteration == 50  # 30 Adam steps and the 20-iteration polish: it ran to its end


@pytest.mark.gpu
def test_on_a_gpu_side_by_side_equals_one_after_the_other():
    """Each thread on its own CUDA stream, its steps and its polish's objective captured there ("thread_local",
    one capture at a time) while the others run: the same runs as alone, to rounding. Never run: no GPU was available
    where it was written."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    alone = []
    for s in (0, 1, 2):
        tr, m = _pinn(d / f"alone{s}", s, "cuda")
        tr.train(200)
        alone.append((tr, m))
    pairs = [_pinn(d / f"sbs{s}", s, "cuda") for s in (0, 1, 2)]
    train_side_by_side([t for t, _ in pairs], 200)
    for (ta, ma), (tb, mb) in zip(alone, pairs):
        np.testing.assert_allclose([r["total"] for r in tb.rows], [r["total"] for r in ta.rows], rtol=1e-4)
        torch.testing.assert_close(_flat(mb), _flat(ma), rtol=1e-3, atol=1e-4)
