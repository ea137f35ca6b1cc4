"""surrogates.lbfgs.LBFGS: torch's L-BFGS with the two-loop recursion in matrix form."""
import pytest
import torch

from surrogates.lbfgs import LBFGS


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
