"""The fused engine's data step in one Triton kernel (training.triton_step).

On a CPU the kernel runs through Triton's interpreter and is compiled ahead of time for sm_90 (ptxas
figures); the ``gpu`` test runs the captured training step on CUDA. The reference is the fused engine's own
data step (itself checked against autograd in tests/test_engine.py).
"""
import tempfile

import numpy as np
import pytest
import torch
import triton

from core.errors import InvalidInputError
from surrogates.network import MLP
from training.engine import MLPEngine

NETS = {
    "3x64": ([("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], 4, 2),
    "4x128": ([("SiLU", 128)] * 4, 4, 2),
    "odd": ([("GELU", 50), ("ELU", 20), ("Softplus", 9)], 3, 5),
    "relu-tanh": ([("ReLU", 32), ("LeakyReLU", 17), ("Tanh", 24)], 2, 1),
}


@pytest.fixture()
def interpreter():
    """Triton's CPU interpreter, on for the test only (the kernels module decorates per mode)."""
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        yield


def make(name, seed=0):
    return build_net(*NETS[name], seed=seed)


def build_net(hidden, n_in, n_out, output_activation=None, seed=0):
    """A random MLP with a random input box and output scaling (tests/test_cpu_step.py uses it too)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-2, 2, n_in)
    net = MLP(n_in, n_out, hidden, output_activation=output_activation,
              input_range=(lo, lo + rng.uniform(0.5, 3, n_in)),
              output_center=rng.uniform(-1, 1, n_out), output_scale=rng.uniform(0.5, 2, n_out))
    with torch.no_grad():  # pre-activations of order 1-2 (the ReLUs' kinks, the Softplus' threshold sides)
        for lin in net.linear_layers():
            lin.weight.mul_(2.0)
            lin.bias.mul_(2.0)
    return net


def grads(net):
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("name,rows", [("3x64", 200), ("4x128", 50), ("odd", 77), ("relu-tanh", 33)])
def test_the_kernel_gives_the_engines_loss_and_gradients(interpreter, name, rows):
    """Rows that are and are not a multiple of BLOCK_M; every activation; the second call in a step adds."""
    from training.triton_step import TritonDataStep

    net = make(name)
    eng = MLPEngine(net, 1024)
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(rows, net.n_inputs, generator=g) * 2 - 1
    ys = torch.randn(rows, net.n_outputs, generator=g)
    eng.zero_grad()
    want = eng.data_step(xs, ys, 0.7)
    want_g = grads(net)
    eng.data_kernel = TritonDataStep(eng)
    eng.zero_grad()
    got = eng.data_step(xs, ys, 0.7)
    assert abs(float(got) - float(want)) <= 1e-5 * float(want)
    for a, b in zip(grads(net), want_g):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), (a - b).abs().max()
    eng.data_step(xs[: rows // 2 + 1], ys[: rows // 2 + 1], 0.3)  # added to the first: a second data term
    eng.data_kernel = None
    eng.zero_grad()
    eng.data_step(xs, ys, 0.7)
    eng.data_step(xs[: rows // 2 + 1], ys[: rows // 2 + 1], 0.3)
    for a, b in zip([p.grad.clone() for p in net.parameters()], grads(net)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.slow
def test_a_trainer_on_the_triton_engine_follows_the_fused_one(interpreter):
    """Trainer(engine="triton") through the static step (what a GPU captures): the same loss curve and weights
    as engine "fused" to float32 rounding, over 20 Adam steps with a cosine schedule."""
    from surrogates.losses import DataLoss
    from training.trainer import Trainer

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (600, 4)).astype(np.float32)
    Y = np.stack([np.sin(3 * X[:, 0]) * X[:, 1], X[:, 2] * X[:, 3]], 1).astype(np.float32)
    out = {}
    for engine in ("fused", "triton"):
        net = make("3x64")
        with tempfile.TemporaryDirectory() as d:
            tr = Trainer(net, d, validation=None, val_every=10, lr=3e-3, lr_schedule="cosine", engine=engine,
                         progress=False, capture=True)
            tr.add_loss(DataLoss(X, Y, batch_size=64, seed=0))
            tr.train(20)
            out[engine] = ([r["total"] for r in tr.rows], [p.detach().clone() for p in net.parameters()])
        assert (tr._engine.data_kernel is not None) == (engine == "triton")
    (lf, wf), (lt, wt) = out["fused"], out["triton"]
    assert np.allclose(lf, lt, rtol=1e-4) and len(lf) == 2
    for a, b in zip(wf, wt):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_a_pinn_on_the_triton_engine_follows_the_fused_one(interpreter, tmp_path, monkeypatch):
    """A PINN (data, ODE residual, initial condition) with engine "triton": the data and initial-condition terms
    go through the data kernel, the ODE residual through the residual kernel, every step; 30 static steps
    equal engine "fused"'s."""
    from test_engine import _pinn_trainer

    from training.triton_step import TritonResidualStep

    calls = []
    call = TritonResidualStep.__call__
    monkeypatch.setattr(TritonResidualStep, "__call__",
                        lambda self, x, v, weight=1.0: calls.append(x.shape) or call(self, x, v, weight))
    finals = []
    for engine in ("fused", "triton"):
        tr, m = _pinn_trainer(tmp_path / engine, True, engine)
        tr.train(30)
        finals.append((torch.cat([p.detach().reshape(-1) for p in m.parameters()]), tr.rows[-1]))
        assert len(calls) == (30 if engine == "triton" else 0)  # _pinn_trainer's 128 collocation points a step
    assert calls[0] == (128, 4)
    torch.testing.assert_close(finals[0][0], finals[1][0], rtol=1e-4, atol=1e-5)
    for k in ("data", "physics", "initial", "total"):
        assert finals[1][1][k] == pytest.approx(finals[0][1][k], rel=1e-4)


RESIDUAL_NETS = {  # (hidden, problem): every activation's second derivative, widths that are not powers of 2
    "3x64-C": ([("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], "C"),
    "odd-B": ([("GELU", 50), ("ELU", 20), ("Softplus", 9)], "B"),
    "relu-tanh-B": ([("ReLU", 32), ("LeakyReLU", 17), ("Tanh", 24)], "B"),
}


def _problem(name):
    from surrogates.config import load_config

    return load_config().problem(name)


@pytest.mark.slow
@pytest.mark.parametrize("name,rows", [("3x64-C", 200), ("odd-B", 77), ("relu-tanh-B", 33)])
def test_the_residual_kernel_gives_the_engines_loss_and_gradients(interpreter, name, rows):
    """The ODE residual step in one kernel (scaling, forward with tangents, the model's residual and its
    closed-form gradient, backward) against the engine's torch operators: the same loss and gradients after
    a data term (added to it), rows that are not a multiple of BLOCK_M."""
    from surrogates.losses import ODEResidualLoss
    from training.triton_step import residual_steps

    hidden, pname = RESIDUAL_NETS[name]
    p = _problem(pname)
    net = build_net(hidden, len(p.inputs), len(p.outputs))
    g = torch.Generator().manual_seed(1)
    xd, yd = torch.rand(40, net.n_inputs, generator=g), torch.randn(40, net.n_outputs, generator=g)
    out = []
    for kernel in (True, False):
        eng = MLPEngine(net, max(rows, 40))
        if kernel:
            eng.residual_kernel = residual_steps(eng)
            assert eng.residual_kernel(p) is not None
        eng.zero_grad()
        eng.data_step(xd, yd, 0.3)
        loss = ODEResidualLoss(p, rows, "sobol", seed=3).fused(eng)(0.7)
        out.append((float(loss), grads(net)))
    (lk, gk), (lt, gt) = out
    assert lk == pytest.approx(lt, rel=1e-5)
    for a, b in zip(gk, gt):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), (a - b).abs().max()


def test_the_residual_kernel_leaves_what_it_does_not_write_to_the_engine(interpreter):
    """Hodgkin-Huxley's rates call vtrap, which the kernel does not write: no kernel for that problem (the
    engine's torch operators do it). A problem whose inputs are not the network's is refused by name."""
    import solvers
    from surrogates.problems import Problem
    from training.triton_step import TritonResidualStep, _residual_source, residual_steps

    hh = Problem("hh", "trajectory", solvers.get_model("hh"), ("t", "V0", "I_stim"), ("V", "m", "h", "n"),
                 t_end=5.0, ranges={"V0": (-80.0, 30.0), "I_stim": (0.0, 15.0)})
    net = build_net([("Tanh", 16)], 3, 4)
    assert residual_steps(MLPEngine(net, 32))(hh) is None
    c = _problem("C")
    src = _residual_source(__import__("training.triton_step", fromlist=["_Layout"])._Layout(make("3x64")), c)
    with pytest.raises(InvalidInputError, match="problem 'C' has 4 inputs and 2 outputs, the network 3 and 4"):
        TritonResidualStep(MLPEngine(net, 32), c, src)


def test_what_the_kernel_cannot_do_is_refused_by_name(interpreter):
    from training.triton_step import TritonDataStep

    net = MLP(2, 1, [("Tanh", 8)], output_activation="Sigmoid", input_range=([0, 0], [1, 1]))
    with pytest.raises(InvalidInputError, match="without an output activation"):
        TritonDataStep(MLPEngine(net, 64))
    net = MLP(2, 1, [("Tanh", 256)], input_range=([0, 0], [1, 1]))
    with pytest.raises(InvalidInputError, match="widths up to 128"):
        TritonDataStep(MLPEngine(net, 64))
    net = MLP(2, 1, [("Tanh", 8)], input_range=([0, 0], [1, 1]))
    step = TritonDataStep(MLPEngine(net, 64))
    with pytest.raises(InvalidInputError, match="sized for 1 to 64 rows"):
        step(torch.zeros(65, 2), torch.zeros(65, 1))
    with pytest.raises(InvalidInputError, match="mean squared error"):
        step(torch.zeros(6, 2), torch.zeros(6, 1), p=1.0)
    eng = MLPEngine(net, 64)
    eng.data_kernel = step
    eng.zero_grad()  # other powers go through the engine's own step
    assert float(eng.data_step(torch.zeros(6, 2), torch.ones(6, 1), p=1.0)) > 0


def test_without_the_interpreter_a_cpu_model_is_refused():
    from training.triton_step import TritonDataStep

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        net = MLP(2, 1, [("Tanh", 8)], input_range=([0, 0], [1, 1]))
        with pytest.raises(InvalidInputError, match="runs on a CUDA device"):
            TritonDataStep(MLPEngine(net, 64))


@pytest.fixture()
def ptxas():
    from inference.kernels.triton_mlp import ptxas_unavailable_reason

    reason = ptxas_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["3x64", "4x128"])
def test_the_kernel_compiles_for_sm90(ptxas, name):
    """Compiled ahead of time for an H100 (no GPU needed): tensor-core products; the 3x64 net without
    spills at its launch configuration (the 4x128 net spills some: printed, see training.triton_step)."""
    from training.triton_step import ptx_report

    r = ptx_report(make(name))
    print(f"\n{r['network']}: BLOCK_M={r['BLOCK_M']} num_warps={r['num_warps']} {r['registers']} registers, "
          f"spills {r['spill_stores']}/{r['spill_loads']} B, shared {r['shared_bytes']} B")
    assert r["tensor_cores"] and 0 < r["registers"] <= 255 and r["shared_bytes"] <= 227 * 1024
    if name == "3x64":
        assert r["spill_stores"] == r["spill_loads"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["3x64", "4x128"])
def test_the_residual_kernel_compiles_for_sm90(ptxas, name):
    """The residual step compiled ahead of time for an H100 (problem C): tensor-core products; the 3x64 net
    without spills at its launch configuration (the 4x128 net spills some: printed)."""
    from training.triton_step import ptx_report

    r = ptx_report(make(name), problem=_problem("C"))
    print(f"\nresidual step, {r['network']}: BLOCK_M={r['BLOCK_M']} num_warps={r['num_warps']} {r['registers']} "
          f"registers, spills {r['spill_stores']}/{r['spill_loads']} B, shared {r['shared_bytes']} B")
    assert r["tensor_cores"] and 0 < r["registers"] <= 255 and r["shared_bytes"] <= 227 * 1024
    if name == "3x64":
        assert r["spill_stores"] == r["spill_loads"] == 0


@pytest.mark.gpu
def test_gpu_captured_triton_step_follows_the_fused_one():
    """On CUDA: the captured training step with the Triton data step against the captured fused step."""
    from surrogates.losses import DataLoss
    from training.trainer import Trainer

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (20_000, 4)).astype(np.float32)
    Y = np.stack([np.sin(3 * X[:, 0]) * X[:, 1], X[:, 2] * X[:, 3]], 1).astype(np.float32)
    out = {}
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        for engine in ("fused", "triton"):
            net = make("3x64").cuda()
            with tempfile.TemporaryDirectory() as d:
                tr = Trainer(net, d, validation=None, val_every=100, lr=3e-3, lr_schedule="cosine", engine=engine,
                             progress=False)
                tr.add_loss(DataLoss(X, Y, batch_size=1024, seed=0))
                tr.train(500)
                out[engine] = [r["total"] for r in tr.rows]
    assert np.allclose(out["fused"], out["triton"], rtol=2e-2), out


@pytest.mark.gpu
def test_gpu_captured_triton_pinn_step_follows_the_fused_one():
    """On CUDA: a PINN on C (data, ODE residual, initial condition), captured, with the Triton data and residual
    steps against the captured fused step: the same loss curve within 2% over 500 steps."""
    from surrogates.losses import DataLoss, InitialConditionLoss, ODEResidualLoss
    from training.trainer import Trainer

    c = _problem("C")
    rng = np.random.default_rng(0)
    lo, hi = c.box()
    X = rng.uniform(lo, hi, (5000, 4)).astype(np.float32)
    Y = np.stack([0.4 + 0.3 * np.sin(X[:, 0] / 3.0) * X[:, 1], 0.05 + 0.02 * X[:, 2]], 1).astype(np.float32)
    out = {}
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        for engine in ("fused", "triton"):
            torch.manual_seed(0)
            net = MLP(4, 2, [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], input_range=c.box(),
                      output_center=[0.4, 0.05], output_scale=[0.5, 0.1]).cuda()
            with tempfile.TemporaryDirectory() as d:
                tr = Trainer(net, d, validation=None, val_every=100, lr=3e-3, lr_schedule="cosine", engine=engine,
                             progress=False)
                tr.add_loss(DataLoss(X, Y, batch_size=1024, seed=0, name="data"))
                tr.add_loss(ODEResidualLoss(c, 1024, "sobol", seed=1), 1.0)
                tr.add_loss(InitialConditionLoss(c, 256, "sobol", seed=2), 1.0)
                tr.train(500)
                out[engine] = [(r["total"], r["physics"]) for r in tr.rows]
                if engine == "triton":
                    assert tr._engine.residual_kernel(c) is not None
    assert np.allclose(out["fused"], out["triton"], rtol=2e-2), out
