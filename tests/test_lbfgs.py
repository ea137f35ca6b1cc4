"""training.lbfgs.LBFGS: torch's L-BFGS with the two-loop recursion in matrix form."""
import pytest
import torch

from training.lbfgs import LBFGS


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], torch.cos(2 * x[:, 2]) + x[:, 0] ** 2], 1)
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.SiLU(),
                            torch.nn.Linear(16, 2)).double()
    return m, x, y


def _run(opt_cls, steps, **kw):
    m, x, y = _problem()
    opt = opt_cls(m.parameters(), **kw)
    losses = []

    def closure():
        opt.zero_grad()
        loss = torch.mean((m(x) - y) ** 2)
        loss.backward()
        return loss

    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()]), losses, opt


@pytest.mark.parametrize("kw", [dict(line_search_fn="strong_wolfe", history_size=7, max_iter=20),
                                dict(line_search_fn=None, lr=0.5, history_size=4, max_iter=10),
                                dict(line_search_fn="strong_wolfe", history_size=1, max_iter=20)])
def test_the_iterates_are_torchs(kw):
    """Float64, two step() calls (state carried between them), the history full and wrapping: the same
    parameters and losses as torch.optim.LBFGS to rounding. (Over more iterations the two drift apart as any
    two summation orders do on a non-convex problem: 1e-14, 2e-11, 8e-9, 7e-5 after 20, 40, 60, 80.)"""
    ref, ref_losses, ref_opt = _run(torch.optim.LBFGS, 2, **kw)
    got, losses, opt = _run(LBFGS, 2, **kw)
    assert ref_losses[-1] < 0.5 * ref_losses[0]  # it did optimise
    st, ref_st = opt.state[opt._params[0]], ref_opt.state[ref_opt._params[0]]
    assert st["n_iter"] == ref_st["n_iter"] and st["func_evals"] == ref_st["func_evals"]
    assert st["S"].shape[0] == len(ref_st["old_stps"]) == kw["history_size"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-9)


def test_the_direction_is_the_two_loop_recursion():
    g = torch.Generator().manual_seed(1)
    k, n = 6, 40
    S, Y = torch.randn(k, n, generator=g, dtype=torch.float64), torch.randn(k, n, generator=g, dtype=torch.float64)
    Y = Y + 3 * S  # y.s > 0, as the memory update keeps
    rho = 1 / (Y * S).sum(1)
    grad = torch.randn(n, generator=g, dtype=torch.float64)
    q, al = -grad.clone(), [None] * k
    for i in range(k - 1, -1, -1):
        al[i] = rho[i] * S[i].dot(q)
        q -= al[i] * Y[i]
    r = q * 0.7
    for i in range(k):
        r += S[i] * (al[i] - rho[i] * Y[i].dot(r))
    torch.testing.assert_close(LBFGS._direction(grad, S, Y, rho, 0.7), r, rtol=1e-12, atol=1e-12)


def test_complex_parameters_are_refused():
    with pytest.raises(ValueError, match="real parameters"):
        LBFGS([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])


@pytest.mark.gpu
def test_on_a_gpu_the_iterates_are_torchs():
    """The same comparison on CUDA tensors (cuBLAS products and triangular solves), float64."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    kw = dict(line_search_fn="strong_wolfe", history_size=7, max_iter=20)
    runs = []
    for cls in (torch.optim.LBFGS, LBFGS):
        m, x, y = _problem()
        m, x, y = m.cuda(), x.cuda(), y.cuda()
        opt = cls(m.parameters(), **kw)

        def closure():
            opt.zero_grad()
            loss = torch.mean((m(x) - y) ** 2)
            loss.backward()
            return loss

        losses = [float(opt.step(closure).detach()) for _ in range(2)]
        runs.append((torch.cat([p.detach().reshape(-1) for p in m.parameters()]).cpu(), losses))
    (ref, ref_losses), (got, losses) = runs
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-9)


def _stalling_line_search(monkeypatch, stall_with_history=True):
    """The strong-Wolfe search, except that it finds no step (t = 0) along a direction built from the
    history (or along every direction): a call then moves no parameter, as in the float32 stalls seen in
    hh_m polishes."""
    import training.lbfgs as mod

    real = mod._strong_wolfe

    def search(obj_func, x, t, d, loss, grad, gtd, **kw):
        steepest = torch.allclose(d, -grad)
        if not stall_with_history or not steepest:
            return loss, grad, 0.0, 1, kw["g_max"]
        return real(obj_func, x, t, d, loss, grad, gtd, **kw)

    monkeypatch.setattr(mod, "_strong_wolfe", search)


def test_a_call_that_moves_nothing_restarts_from_steepest_descent(monkeypatch):
    """torch's LBFGS, from a state where the history's direction gives no step, repeats that forever; here
    the next call drops the history and moves along -gradient."""
    _stalling_line_search(monkeypatch)
    m, x, y = _problem()
    opt = LBFGS(m.parameters(), line_search_fn="strong_wolfe", history_size=5, max_iter=3)

    def closure():
        opt.zero_grad()
        loss = torch.mean((m(x) - y) ** 2)
        loss.backward()
        return loss

    flat = lambda: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    a = flat()
    opt.step(closure)  # the first iteration is steepest descent: it moves; the second, from the history, stalls
    b = flat()
    assert not torch.equal(a, b)
    opt.step(closure)  # history: no step at all
    assert torch.equal(flat(), b) and not opt.converged
    opt.step(closure)  # afresh from steepest descent: it moves again
    assert not torch.equal(flat(), b) and not opt.converged


def test_a_call_from_steepest_descent_that_moves_nothing_is_convergence(monkeypatch):
    _stalling_line_search(monkeypatch, stall_with_history=False)
    m, x, y = _problem()
    opt = LBFGS(m.parameters(), line_search_fn="strong_wolfe", max_iter=3)

    def closure():
        opt.zero_grad()
        loss = torch.mean((m(x) - y) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.converged


def test_the_polish_stops_once_lbfgs_has_converged(monkeypatch, tmp_path, capsys):
    """The Trainer ends the polish at the first call that moved nothing from steepest descent (every later
    call would change nothing) and says so."""
    import numpy as np

    from surrogates.losses import DataLoss
    from surrogates.network import MLP
    from training.trainer import Trainer

    _stalling_line_search(monkeypatch, stall_with_history=False)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
    Y = (X[:, :1] * X[:, 1:]).astype(np.float32)
    torch.manual_seed(0)
    tr = Trainer(MLP(2, 1, [("Tanh", 8)], input_range=([-1, -1], [1, 1])), tmp_path, validation=None, val_every=10,
                 lbfgs_iterations=200, progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=None))
    summary = tr.train(30)
    assert summary["iterations"] == 50 and [r["iteration"] for r in tr.rows][-2:] == [30, 50]
    assert "L-BFGS converged at iteration 50" in capsys.readouterr().err


def test_the_line_search_is_torchs_on_floats():
    """The strong-Wolfe search on Python floats against torch's on 0-d tensors: along a direction of a
    non-quadratic function, the same step, value, gradient and number of evaluations (to rounding: torch
    divides a number by a tensor as a reciprocal times the number)."""
    from torch.optim.lbfgs import _strong_wolfe as torchs

    import training.lbfgs as mod

    def fn(x):
        return (x ** 4).sum() - 3 * (x ** 2).sum() + x.sum()

    def grad(x):
        return 4 * x ** 3 - 6 * x + 1

    x0 = torch.tensor([0.3, -1.7, 2.2, 0.05], dtype=torch.float64)
    g0 = grad(x0)
    d = -g0
    for t0 in (1.0, 1e-3, 0.4):
        f, g, t, n = torchs(lambda x, t, d: (float(fn(x + t * d)), grad(x + t * d)), x0, t0, d, float(fn(x0)), g0,
                            g0.dot(d))
        ours = mod._strong_wolfe(lambda x, t, d: (float(fn(x + t * d)), grad(x + t * d), float(grad(x + t * d).dot(d)),
                                                 float(grad(x + t * d).abs().max())),
                                 x0, t0, d, float(fn(x0)), g0, float(g0.dot(d)), d_norm=float(d.abs().max()),
                                 g_max=float(g0.abs().max()))
        assert ours[3] == n and n >= 2
        assert ours[2] == pytest.approx(float(t), rel=1e-12) and ours[0] == pytest.approx(f, rel=1e-12)
        torch.testing.assert_close(ours[1], g, rtol=1e-10, atol=1e-12)
        assert ours[4] == pytest.approx(float(g.abs().max()), rel=1e-10)


def test_an_iteration_reads_three_numbers_back_not_ten():
    """Host reads (what makes a GPU wait for the host) outside the objective: one for y.s, one for g.d and
    max|d|, one per line-search evaluation (loss, g.d and max|g| together): 3.1 an iteration here, where
    torch's LBFGS reads 28 (each coefficient of its two-loop recursion, each test of a 0-d tensor) and this
    class with torch's line search read ~10 (counted on hh_m-sized networks)."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import op_recorder

    counts = {}
    for cls in (torch.optim.LBFGS, LBFGS):
        m, x, y = _problem()
        opt = cls(m.parameters(), line_search_fn="strong_wolfe", history_size=10, max_iter=20)
        evals = [0]

        def closure():
            evals[0] += 1
            opt.zero_grad()
            loss = torch.mean((m(x) - y) ** 2)
            loss.backward()
            return loss

        opt.step(closure)
        tolist, orig = [0], torch.Tensor.tolist

        def counted(self):
            tolist[0] += 1
            return orig(self)

        rec, e0, n0 = op_recorder(), evals[0], opt.state[opt._params[0]]["n_iter"]
        try:
            torch.Tensor.tolist = counted
            with rec:
                opt.step(closure)
                opt.step(closure)
        finally:
            torch.Tensor.tolist = orig
        its = opt.state[opt._params[0]]["n_iter"] - n0
        assert its == 40  # no early stop: the counts are per full iteration
        reads = rec.ops.count("aten._local_scalar_dense.default") + tolist[0]  # the closure reads nothing
        counts[cls] = (reads / its, (evals[0] - e0) / its)
    ours, (theirs, _) = counts[LBFGS], counts[torch.optim.LBFGS]
    assert ours[0] <= 2.1 + ours[1] and theirs >= 2.5 * ours[0]
