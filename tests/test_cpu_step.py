"""The fused engine's data step in one compiled CPU call (training.cpu_step).

The reference is the engine's own data step on torch operators (itself checked against autograd in
tests/test_engine.py). The extension is built on first use (about 30 s, once per machine); the tests skip
only where there is no C++ compiler (ninja is pinned: a missing one fails), so a source that no longer
builds fails here.
"""
import shutil

import ninja
import numpy as np
import pytest
import torch

from core.errors import InvalidInputError
from training.engine import MLPEngine
from test_triton_step import build_net, grads

NETS = {  # hidden layers, inputs, outputs, output activation: every activation; thin and wide first/last layers
    "3x64": ([("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], 3, 2, None),
    "odd": ([("GELU", 50), ("ELU", 20), ("Softplus", 9)], 3, 5, None),
    "relu-tanh": ([("ReLU", 32), ("LeakyReLU", 17), ("Tanh", 24)], 2, 1, "Sigmoid"),
    # 12 inputs, 10 outputs (BLAS products at both ends), a 6-wide layer (the thin loops in the middle)
    "wide-ends": ([("Tanh", 6), ("SiLU", 40)], 12, 10, "Tanh"),
}


@pytest.fixture(scope="module")
def cpu_step():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the compiled CPU data step cannot be built")
    from training import cpu_step

    cpu_step.load()  # a build failure fails the test
    return cpu_step


def make(name, seed=0):
    return build_net(*NETS[name], seed=seed)


# float32: to float32 rounding; float64 (a float64 polish): to float64 rounding, well below anything float32 sees
TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}


def close(got, want):
    for a, b in zip(got, want):
        rtol, atol = TOL[b.dtype]
        assert torch.allclose(a, b, rtol=rtol, atol=atol * float(b.abs().max())), (a - b).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,rows,tile", [("3x64", 1024, 256), ("3x64", 300, 7), ("odd", 77, 32),
                                            ("relu-tanh", 33, 256), ("wide-ends", 129, 64)])
def test_the_compiled_step_gives_the_engines_loss_and_gradients(cpu_step, name, rows, tile, dtype):
    """Whole and ragged tiles; every activation; the second data term of a step adds to the first; in
    float32 (training) and float64 (a float64 polish: the loss comes back in float64)."""
    net = make(name).to(dtype)
    eng = MLPEngine(net, 1024)
    g = torch.Generator().manual_seed(1)
    xs = (torch.rand(rows, net.n_inputs, generator=g) * 2 - 1).to(dtype)
    ys = torch.randn(rows, net.n_outputs, generator=g).to(dtype)
    eng.zero_grad()
    want = eng.data_step(xs, ys, 0.7)
    want_g = grads(net)
    for p in net.parameters():  # stale values the first call must overwrite, not add to
        p.grad.fill_(3.0)
    eng.data_kernel = cpu_step.CpuDataStep(eng, tile=tile)
    eng.zero_grad()
    got = eng.data_step(xs, ys, 0.7)
    assert got.dtype == dtype and float(got) == pytest.approx(float(want), rel=TOL[dtype][0] / 10)
    close(grads(net), want_g)
    half = rows // 2 + 1
    eng.data_step(xs[:half], ys[:half], 0.3)  # added to the first: a second data term
    both = grads(net)
    eng.data_kernel = None
    eng.zero_grad()
    eng.data_step(xs, ys, 0.7)
    eng.data_step(xs[:half], ys[:half], 0.3)
    close(both, grads(net))


def _quadratic(z, zt):
    """A residual with its gradient in closed form: mean(z^2 + 3 zt^2)."""
    n = z.numel()
    return torch.mean(z * z + 3.0 * zt * zt), z * (2.0 / n), zt * (6.0 / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,rows,shared", [("3x64", 300, True), ("3x64", 64, False), ("odd", 77, True),
                                              ("relu-tanh", 33, False), ("wide-ends", 129, True),
                                              # more than 2,048 rows: in tiles of 256, the last one ragged
                                              ("3x64", 2500, False), ("odd", 2311, True)])
def test_the_compiled_residual_step_gives_the_engines_loss_and_gradients(cpu_step, name, rows, shared, dtype):
    """The forward pass with tangents and its backward (tangent_step_closed): one direction for every row
    (the ODE residual's d/dt) or one per row; every activation; a second term adds to the first; in one
    piece and in tiles; float32 and float64."""
    net = make(name).to(dtype)
    size = max(512, rows)
    eng = MLPEngine(net, size)
    g = torch.Generator().manual_seed(2)
    xs = (torch.rand(rows, net.n_inputs, generator=g) * 2 - 1).to(dtype)
    vs = (torch.randn(net.n_inputs, generator=g) if shared else torch.randn(rows, net.n_inputs, generator=g)).to(dtype)
    eng.zero_grad()
    want = eng.tangent_step_closed(xs, vs, _quadratic, 0.7)
    want_g = grads(net)
    for p in net.parameters():
        p.grad.fill_(3.0)
    eng.tangent_kernel = cpu_step.CpuTangentStep(eng)
    eng.zero_grad()
    got = eng.tangent_step_closed(xs, vs, _quadratic, 0.7)
    assert got.dtype == dtype and float(got) == pytest.approx(float(want), rel=TOL[dtype][0] / 10)
    close(grads(net), want_g)
    eng.data_step(xs, torch.zeros(rows, net.n_outputs, dtype=dtype), 0.3)  # a data term after it adds
    both = grads(net)
    eng.tangent_kernel = None
    eng.zero_grad()
    eng.tangent_step_closed(xs, vs, _quadratic, 0.7)
    eng.data_step(xs, torch.zeros(rows, net.n_outputs, dtype=dtype), 0.3)
    close(both, grads(net))
    with pytest.raises(InvalidInputError, match=f"sized for 1 to {size} rows"):
        cpu_step.CpuTangentStep(eng)(torch.zeros(size + 1, net.n_inputs, dtype=dtype),
                                     torch.ones(net.n_inputs, dtype=dtype), _quadratic)


def test_a_pinn_on_the_compiled_steps_follows_the_torch_operators(cpu_step, tmp_path):
    """A PINN (data, ODE residual in closed form, initial condition) on engine "cpp": every term through a
    compiled call; 60 steps equal engine "fused"'s to float32 rounding."""
    from test_engine import _pinn_trainer

    finals = []
    for engine in ("fused", "cpp"):
        tr, m = _pinn_trainer(tmp_path / engine, False, engine)
        tr.train(60)
        assert (tr._engine.tangent_kernel is not None) == (engine == "cpp")
        finals.append((torch.cat([p.detach().reshape(-1) for p in m.parameters()]), tr.rows[-1]))
    torch.testing.assert_close(finals[0][0], finals[1][0], rtol=1e-4, atol=1e-5)
    for k in ("data", "physics", "initial", "total"):
        assert finals[1][1][k] == pytest.approx(finals[0][1][k], rel=1e-4)


def test_the_same_inputs_give_the_same_bits(cpu_step):
    net = make("3x64")
    eng = MLPEngine(net, 1024)
    eng.data_kernel = cpu_step.CpuDataStep(eng)
    xs, ys = torch.rand(1000, 3), torch.rand(1000, 2)
    runs = []
    for _ in range(2):
        eng.zero_grad()
        loss = eng.data_step(xs, ys)
        runs.append((loss.clone(), grads(net)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def _train(engine, d, iters=40):
    from surrogates.losses import DataLoss
    from training.trainer import Trainer

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (600, 3)).astype(np.float32)
    Y = np.stack([np.sin(3 * X[:, 0]) * X[:, 1], X[:, 2] ** 2], 1).astype(np.float32)
    net = make("3x64")
    tr = Trainer(net, d, validation=None, val_every=10, lr=3e-3, lr_schedule="cosine", engine=engine,
                 progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=64, seed=0))
    tr.train(iters)
    return tr, net


def test_a_trainer_on_the_compiled_step_follows_the_torch_operators(cpu_step, tmp_path):
    """engine "cpp" (and "auto", which picks it on a CPU) against engine "fused" (torch operators): the same
    loss curve and weights to float32 rounding over 40 Adam steps."""
    out = {}
    for engine in ("fused", "cpp", "auto"):
        tr, net = _train(engine, tmp_path / engine)
        assert (tr._engine.data_kernel is not None) == (engine != "fused")
        out[engine] = ([r["total"] for r in tr.rows], [p.detach().clone() for p in net.parameters()])
    lf, wf = out["fused"]
    for engine in ("cpp", "auto"):
        lc, wc = out[engine]
        assert len(lc) == 4 and np.allclose(lf, lc, rtol=1e-4)
        for a, b in zip(wf, wc):
            assert torch.allclose(a, b, atol=1e-5)


def test_what_the_compiled_step_cannot_do_is_refused_by_name(cpu_step, tmp_path):
    net = make("3x64").half()
    with pytest.raises(InvalidInputError, match="trains float32 or float64 networks, got torch.float16"):
        cpu_step.CpuDataStep(MLPEngine(net, 64))
    net = make("3x64")
    eng = MLPEngine(net, 64)
    step = cpu_step.CpuDataStep(eng)
    with pytest.raises(InvalidInputError, match="mean squared error"):
        step(torch.zeros(6, 3), torch.zeros(6, 2), p=1.0)
    with pytest.raises(InvalidInputError, match="y has 3 columns, the network 2 outputs"):
        step(torch.zeros(6, 3), torch.zeros(6, 3))
    with pytest.raises(InvalidInputError, match="parameters and gradients must be contiguous float64"):
        step(torch.zeros(6, 3, dtype=torch.float64), torch.zeros(6, 2, dtype=torch.float64))  # a float32 net
    with pytest.raises(InvalidInputError, match="x and y must be contiguous float32 CPU tensors"):
        step(torch.zeros(6, 3), torch.zeros(6, 2, dtype=torch.float64))
    eng.data_kernel = step
    eng.zero_grad()  # other powers go through the engine's own step
    assert float(eng.data_step(torch.zeros(6, 3), torch.ones(6, 2), p=1.0)) > 0


def test_auto_falls_back_to_torch_operators_where_it_cannot_be_built(cpu_step, tmp_path, monkeypatch, capsys):
    """No compiler (simulated): engine "auto" trains on the torch operators and says why once; engine "cpp"
    is an error that says why."""
    from training import trainer as trainer_mod

    def refuse():
        raise cpu_step.CpuStepUnavailable("the compiled CPU step could not be built (simulated)")

    monkeypatch.setattr(cpu_step, "load", refuse)
    monkeypatch.setattr(trainer_mod, "_NOTED", set())
    tr, _ = _train("auto", tmp_path / "auto", iters=10)
    assert tr._engine is not None and tr._engine.data_kernel is None
    assert capsys.readouterr().err.count("could not be built (simulated)") == 1
    with pytest.raises(InvalidInputError, match="engine 'cpp': the compiled CPU step could not be built"):
        _train("cpp", tmp_path / "cpp", iters=10)


def test_the_build_is_named_by_what_it_depends_on(cpu_step, monkeypatch):
    """-march=native: a build is never shared between CPUs with different instruction sets (a cluster's
    nodes under one home folder), nor between sources or torch versions."""
    a = cpu_step.build_name()
    monkeypatch.setattr(cpu_step, "_cpu_signature", lambda: "flags : fpu sse2 avx2")
    b = cpu_step.build_name()
    monkeypatch.setattr(cpu_step, "FLAGS", cpu_step.FLAGS + ["-DX"])
    c = cpu_step.build_name()
    assert len({a, b, c}) == 3 and all(n.startswith("surrogates_cpu_step_") for n in (a, b, c))


def test_the_build_folder_is_keyed_by_the_source_not_by_the_checkout(tmp_path, monkeypatch):
    """Two checkouts holding the same source build in one folder from one path (torch's builder keeps the build:
    the command it compiles is the same), two versions of the source in two folders (neither rebuilds the
    other's, nor waits on its lock)."""
    from pathlib import Path

    from torch.utils import cpp_extension

    from training import cpu_step

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    text = cpu_step.SOURCE.read_bytes()
    staged = {}
    for checkout, source in (("a", text), ("b", text), ("c", text + b"\n// another version\n")):
        copy = tmp_path / checkout / "training" / "cpu_step.cpp"
        copy.parent.mkdir(parents=True)
        copy.write_bytes(source)
        monkeypatch.setattr(cpu_step, "SOURCE", copy)
        name = cpu_step.build_name()
        assert name == cpu_step.build_name(source)
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
        staged[checkout] = (name, folder, cpu_step.staged_source(folder, source))
    (name_a, folder_a, src_a), (name_b, folder_b, src_b), (name_c, folder_c, src_c) = staged.values()
    assert (name_a, folder_a, src_a) == (name_b, folder_b, src_b)
    assert name_c != name_a and folder_c != folder_a and folder_c.parent == folder_a.parent
    assert src_a.parent == folder_a and src_a.read_bytes() == text and src_c.read_bytes().endswith(b"another version\n")
    mtime = src_a.stat().st_mtime_ns
    cpu_step.staged_source(folder_a, text)  # the same text again: left as it is (the build stays up to date)
    assert src_a.stat().st_mtime_ns == mtime


def test_the_ninja_package_is_found_when_ninja_is_not_on_the_path(monkeypatch):
    """torch's builder runs `ninja` from PATH; a venv's python run by its full path may not have the venv's
    bin folder there: the ninja package's folder is put first."""
    from training import cpu_step

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(cpu_step.shutil, "which", lambda name: None)
    cpu_step._ninja_on_path()
    assert cpu_step.os.environ["PATH"].split(cpu_step.os.pathsep)[0] == ninja.BIN_DIR


@pytest.mark.slow
def test_a_build_lock_left_by_a_killed_process_does_not_hang_the_next_load(cpu_step, tmp_path):
    """torch's build lock is a file it deletes when done; a training killed (SIGKILL) while loading the
    extension leaves it, and every later load waited on it forever (found: a killed grid job, then every
    training on that machine hung). The next load removes it, says so, and loads. While a live process
    holds the build (the flock beside it), another load waits for it instead. In an extension folder of its
    own (one build): the shared one may be in use by another checkout's processes at the same time, whose
    loads would remove the planted lock first (and rightly so)."""
    import fcntl
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    folder = tmp_path / "ext" / cpu_step.build_name()
    folder.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    code = "from training import cpu_step; cpu_step.load(); print('loaded')"
    (folder / "lock").touch()  # what a process killed inside torch's load leaves
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]
    assert "a build lock left by a process that was killed" in r.stderr and not (folder / "lock").exists()

    with open(folder / "surrogates.flock", "a") as fh:  # a live builder: the load waits, removes nothing
        fcntl.flock(fh, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(8)
        assert p.poll() is None  # still waiting
        fcntl.flock(fh, fcntl.LOCK_UN)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "loaded" in out and "removed" not in err


def _gate_run(out, engine):
    """hh_m's PINN in small (tests/test_engine.py) over 3,001 trace points (t_end 30: more than one piece of the
    residual step), to be polished in float64."""
    from test_engine import _gate_trainer

    tr, m = _gate_trainer(out, False, t_end=30.0, engine=engine)
    tr.lbfgs_dtype = "float64"
    return tr, m


def test_a_float64_polish_runs_on_the_compiled_steps_and_follows_the_torch_operators(cpu_step, tmp_path):
    """lbfgs_dtype float64 (hh_m's): the float64 copy's objective goes through the compiled calls too (data term
    and gate residual in one tiled pass), equal to the torch operators' in float64 to 1e-12 at the same
    weights; a 40-iteration polish through the Trainer follows engine "fused"'s, loss for loss."""
    import copy

    tr, m = _gate_run(tmp_path / "probe", "auto")
    tr._fused_steps()
    m64 = copy.deepcopy(m).double()
    got = []
    for engine in ("auto", "fused"):
        tr.engine = engine
        eng, steps = tr._lbfgs_fused(m64)
        assert isinstance(eng.tangent_kernel, cpu_step.CpuTangentStep) == (engine == "auto")
        total, terms = tr._fused_objective(steps, eng)
        got.append((total, {k: float(v) for k, v in terms.items()}, [p.grad.clone() for p in m64.parameters()]))
    (tc, kc, gc), (tt, kt, gt) = got
    assert tc.dtype == torch.float64 and float(tc) == pytest.approx(float(tt), rel=1e-12)
    assert kc == pytest.approx(kt, rel=1e-12)
    for a, b in zip(gc, gt):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))

    curves = {}
    for engine in ("auto", "fused"):
        tr, m = _gate_run(tmp_path / engine, engine)
        tr.train(0)  # the polish alone, from the same initial weights
        curves[engine] = [r["total"] for r in tr.rows]
    assert len(curves["auto"]) == 3 and curves["auto"][-1] < 0.1 * curves["auto"][0]  # the score, two rounds
    assert curves["auto"] == pytest.approx(curves["fused"], rel=1e-6)
