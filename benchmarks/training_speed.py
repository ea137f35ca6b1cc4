"""Training throughput: iterations per second of the project's trainer against a plain eager loop.

    python -m benchmarks.training_speed [--config config/quick.yaml] [--iterations 2000] [--rounds 5]

On the machine at hand (one torch thread on a CPU, or the GPU where torch sees one), for the configured
default network on problem C (the data-driven 3x64 net of the paper) and the step problem D:

* ``reference``: a plain eager loop of the same network, as the upstream Pinn-Torch trainer runs it
  (contiguous slices of the data, ``torch.optim.Adam``, the loss read back every step);
* ``autograd``: this project's Trainer on its autograd path;
* ``fused``: the Trainer on the hand-written engine (``training.engine``) with the fused Adam, on torch
  operators; on a CPU also with its data and residual steps as compiled calls (``training.cpu_step``,
  engine ``cpp``, what ``auto`` picks there), on a GPU with its data step (and a PINN's ODE residual step)
  in one Triton kernel each (``training.triton_step``, engine ``triton``);
* the same for a PINN step (data + ODE residual on ``training.physics.collocation_points`` points + the
  initial condition), and the cost of one collocation row relative to one data row in each path.

With ``--upstream DIR`` (a checkout of the upstream Pinn-Torch repository, with the packages it imports:
chaospy, h5py, matplotlib), its own ``fisiocomPinn.Trainer`` is timed too, on the same network, batch, data
and device, with its default data loss (per-row RMSE) and ``torch.optim.Adam``: the trainer the project set
out to outrun. It runs in a child process, because its package has the same name as this project's
compatibility layer; every row then also gets its ratio to it.

Timings vary between runs on shared machines, so the variants are measured in interleaved rounds and
each figure is the median over rounds; ratios are taken within a round. The data are drawn from the
problem's input box (the speed of a step does not depend on the values). Prints a Markdown table with the
machine; ``--reference`` also writes it to benchmarks/reference/training_speed.md, the tracked table that
``python -m benchmarks.reference --docs`` puts into benchmarks/README.md.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import cli
from core.errors import InvalidInputError
from core.io import write_text
from core.layout import Layout
from core.machine import describe_machine, machine_info
from surrogates.config import load_config
from surrogates.study import Study
from surrogates.losses import DataLoss, InitialConditionLoss, ODEResidualLoss
from surrogates.network import MLP
from training.trainer import Trainer

REFERENCE = Path(__file__).resolve().parent / "reference" / "training_speed.md"
UPSTREAM = "upstream Pinn-Torch trainer"


def _data(p, n: int, seed: int = 0):
    lo, hi = p.box()
    g = np.random.default_rng(seed)
    X = g.uniform(lo, hi, size=(n, len(lo))).astype(np.float32)
    Y = g.uniform(-0.2, 1.0, size=(n, len(p.outputs))).astype(np.float32)
    return X, Y


def _net(p, hidden, X, Y, device, seed=0):
    torch.manual_seed(seed)
    return MLP(len(p.inputs), len(p.outputs), hidden, input_range=p.box(), output_center=Y.mean(0),
               output_scale=Y.std(0) + 1e-3).to(device)


def reference_loop(p, hidden, X, Y, batch, iters, lr, device) -> float:
    """Iterations/s of a plain eager loop (upstream style) of the same architecture."""
    torch.manual_seed(0)
    net = _net(p, hidden, X, Y, device)
    seq = torch.nn.Sequential(*[m for m in net.net]).to(device)  # the same layers, no in-model scaling
    opt = torch.optim.Adam(seq.parameters(), lr=lr)
    Xt, Yt = torch.as_tensor(X, device=device), torch.as_tensor(Y, device=device)
    i = 0
    t0 = None
    for it in range(iters + 50):
        if it == 50:
            _sync(device)
            t0 = time.perf_counter()
        seq.zero_grad()
        opt.zero_grad()
        xb, yb = Xt[i:i + batch], Yt[i:i + batch]
        i += batch
        if i + batch > len(Xt):
            i = 0
        loss = torch.mean((yb - seq(xb)).ravel() ** 2)
        loss.item()
        loss.backward()
        opt.step()
    _sync(device)
    return iters / (time.perf_counter() - t0)


_UPSTREAM_CHILD = r"""
import contextlib, io, json, math, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["upstream"])
import torch
torch.set_num_threads(args["threads"])
import fisiocomPinn.Trainer as T
from pathlib import Path
if Path(T.__file__).resolve().parent != Path(args["upstream"], "fisiocomPinn").resolve():
    sys.exit(f"imported {T.__file__}, not the upstream checkout's fisiocomPinn")
from benchmarks.training_speed import _data, _net
from surrogates.config import load_config
study = load_config(*args["config"])
p = study.problem(args["problem"])
X, Y = _data(p, 100_000)
torch.manual_seed(0)
net = _net(p, args["hidden"], X, Y, args["device"])
seq = torch.nn.Sequential(*[m for m in net.net])  # the same layers as the reference loop, no in-model scaling
opt = torch.optim.Adam(seq.parameters(), lr=args["lr"])
val = 0.01  # upstream evaluates its validation split on almost every one of the first n_batchs steps and never
#             after them when val_steps is large; a 1% split keeps that cost small, as in the upstream comparison's measurement
batches = math.ceil(len(X) * (1 - val) / args["batch"])
tr = T.Trainer(max(1, math.ceil(args["iterations"] / batches)), seq, device=args["device"], batch_size=args["batch"],
               data=torch.as_tensor(X), target=torch.as_tensor(Y), validation=val, val_steps=10**9, print_steps=10**9,
               optimizer=opt, patience=10**9)
with contextlib.redirect_stdout(io.StringIO()):
    if args["device"] == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tr.train()
    if args["device"] == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
print(json.dumps({"iterations": tr.n_it, "seconds": dt}))
"""


def upstream_rate(upstream: str, config: list, problem: str, hidden, batch: int, iterations: int, lr: float,
                  device: str) -> float:
    """Iterations/s of the upstream Pinn-Torch ``Trainer`` from the checkout ``upstream`` (see the module's
    docstring), on the same network, batch, data and device as :func:`reference_loop`."""
    import json
    import subprocess

    root = Path(upstream)
    if not (root / "fisiocomPinn" / "Trainer.py").is_file():
        raise InvalidInputError(f"--upstream {upstream}: no fisiocomPinn/Trainer.py there (give the root of a Pinn-Torch "
                                "checkout)")
    args = {"upstream": str(root.resolve()), "config": [str(Path(c).resolve()) for c in config], "problem": problem, "hidden": [list(h) for h in hidden],
            "batch": batch, "iterations": iterations, "lr": lr, "device": device, "threads": torch.get_num_threads()}
    here = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _UPSTREAM_CHILD, json.dumps(args)], capture_output=True, text=True,
                          cwd=here, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [here] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))})
    if proc.returncode != 0:
        raise InvalidInputError(f"the upstream trainer from {upstream} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["iterations"] / out["seconds"]


def trainer_rate(p, hidden, X, Y, batch, iters, lr, device, engine, physics=None, capture="auto") -> float:
    """Iterations/s of this project's Trainer (one validation at the end; set-up, and on a GPU the capture of
    the step's CUDA graph, included; the one-off build of a Triton kernel or of the compiled CPU step is not:
    a short run first)."""
    if engine in ("triton", "cpp") and iters > 3:
        trainer_rate(p, hidden, X, Y, batch, 3, lr, device, engine, physics, capture)
    net = _net(p, hidden, X, Y, device)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(net, out, validation=None, val_every=iters, lr=lr, lr_schedule="cosine", engine=engine,
                     progress=False, capture=capture)
        tr.add_loss(DataLoss(X, Y, batch_size=batch, seed=0, name="data"))
        if physics:
            tr.add_loss(ODEResidualLoss(p, physics.collocation_points, physics.sampler, seed=1), physics.weight)
            tr.add_loss(InitialConditionLoss(p, max(256, physics.collocation_points // 4), physics.sampler, seed=2),
                        physics.ic_weight)
        _sync(device)
        t0 = time.perf_counter()
        tr.train(iters)
        _sync(device)
        return iters / (time.perf_counter() - t0)


def cohort_rate(p, hidden, X, Y, batch, iters, lr, device, size: int = 3) -> float:
    """Network-iterations/s of ``size`` seeds trained together as one stacked model (training.cohort):
    ``size * iters`` steps of a network over the wall time (set-up and, on a GPU, the capture included)."""
    from training.cohort import train_together

    with tempfile.TemporaryDirectory() as out:
        trainers = []
        for seed in range(size):
            tr = Trainer(_net(p, hidden, X, Y, device, seed), f"{out}/{seed}", validation=None, val_every=iters, lr=lr,
                         lr_schedule="cosine", progress=False)
            tr.add_loss(DataLoss(X, Y, batch_size=batch, seed=seed, name="data"))
            trainers.append(tr)
        _sync(device)
        t0 = time.perf_counter()
        summaries = train_together(trainers, iters)
        _sync(device)
        if summaries[0]["cohort"] != size:
            raise RuntimeError("the cohort was refused; see the message above")
        return size * iters / (time.perf_counter() - t0)


def row_costs(p, hidden, X, Y, batch, n_coll, device, reps=200, rounds=5) -> dict:
    """Seconds per data row and per collocation row, for the autograd and the fused path, and on a CPU the
    fused path through the compiled steps (``training.cpu_step``: what engine "auto" trains with there), on
    a GPU through the Triton data and residual steps (``training.triton_step``, uncaptured).
    Each path's data and collocation calls are timed in turn ``rounds`` times: medians of the per-row
    costs, and the ratio is the median of the rounds' ratios (a shared machine's speed drifts between
    rounds, less within one)."""
    from training.engine import MLPEngine

    out = {}
    gpu = torch.device(device).type == "cuda"
    paths = ["autograd", "fused"] + (["triton"] if gpu else ["compiled"])
    for engine in paths:
        net = _net(p, hidden, X, Y, device)
        data = DataLoss(X, Y, batch_size=batch, seed=0)
        phys = ODEResidualLoss(p, n_coll, "sobol", seed=1)
        if engine in ("fused", "compiled", "triton"):
            eng = MLPEngine(net, max(batch, n_coll))
            if engine == "triton":  # the data and residual steps in one Triton kernel each (engine "triton")
                from training.triton_step import TritonDataStep, residual_steps

                try:
                    eng.data_kernel, eng.residual_kernel = TritonDataStep(eng), residual_steps(eng)
                except Exception as exc:  # a kernel new to this GPU must not lose the table
                    print(f"row costs, Triton path: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
                    continue
            if engine == "compiled":
                from training.cpu_step import CpuDataStep, CpuStepUnavailable, CpuTangentStep, residual_steps

                try:
                    eng.data_kernel, eng.tangent_kernel = CpuDataStep(eng), CpuTangentStep(eng)
                    eng.residual_kernel = residual_steps(eng)
                except CpuStepUnavailable as exc:
                    print(f"row costs, compiled path: skipped ({exc})", file=sys.stderr)
                    continue
            fd, fp = data.fused(eng), phys.fused(eng)

            def d():
                eng.zero_grad()
                fd(1.0)

            def c():
                eng.zero_grad()
                fp(1.0)
        else:
            def d():
                net.zero_grad(set_to_none=True)
                data(net).backward()

            def c():
                net.zero_grad(set_to_none=True)
                phys(net).backward()
        dr, cr = [], []
        for _ in range(max(int(rounds), 1)):
            dr.append(_per_call(d, device, reps) / batch)
            cr.append(_per_call(c, device, reps) / n_coll)
        out[engine] = {"data_row_s": _median(dr), "collocation_row_s": _median(cr),
                       "ratio": _median([b / a for a, b in zip(dr, cr)])}
    return out


def _per_call(fn, device, reps):
    for _ in range(10):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(study: Study, iterations: int, rounds: int, device: str, upstream: str | None = None,
            config_files: list | None = None) -> tuple[list[dict], dict]:
    results = []
    costs = {}
    for name in ("C", "D"):
        if name not in study.problems:
            continue
        p = study.problem(name)
        s = study.training(name)
        hidden = [tuple(h) for h in s.architectures[s.architecture]]
        batch = s.batch_size or 1024
        X, Y = _data(p, 100_000)
        variants = {"reference (plain eager loop)": lambda: reference_loop(p, hidden, X, Y, batch, iterations, s.lr, device)}
        if upstream:
            variants[UPSTREAM] = lambda: upstream_rate(upstream, config_files or [], name, hidden, batch, iterations,
                                                       s.lr, device)
        variants |= {
                    "trainer, autograd path": lambda: trainer_rate(p, hidden, X, Y, batch, iterations, s.lr, device, "autograd"),
                    "trainer, fused engine": lambda: trainer_rate(p, hidden, X, Y, batch, iterations, s.lr, device, "fused")}
        gpu = torch.device(device).type == "cuda"
        if not gpu:  # the data step in one compiled call (training.cpu_step), what engine "auto" picks here
            variants["trainer, compiled CPU steps"] = lambda: trainer_rate(
                p, hidden, X, Y, batch, iterations, s.lr, device, "cpp")
        if gpu:  # on a GPU the fused step is captured by default ("auto"); the uncaptured one beside it
            variants["trainer, fused engine, CUDA graph"] = variants.pop("trainer, fused engine")
            variants["trainer, fused engine, not captured"] = lambda: trainer_rate(
                p, hidden, X, Y, batch, iterations, s.lr, device, "fused", capture=False)
            # the data step in one Triton kernel (training.triton_step), captured as the fused step is
            variants["trainer, Triton data step, CUDA graph"] = lambda: trainer_rate(
                p, hidden, X, Y, batch, iterations, s.lr, device, "triton")
        variants["3 seeds as one stacked model (per network)"] = lambda: cohort_rate(
            p, hidden, X, Y, batch, iterations, s.lr, device)
        if p.kind == "trajectory":
            phys = s.physics
            n_pinn = iterations if gpu else max(iterations // 8, 50)
            variants["PINN, autograd path"] = lambda: trainer_rate(p, hidden, X, Y, batch, max(iterations // 8, 50), s.lr,
                                                                    device, "autograd", phys)
            variants["PINN, fused engine" + (", CUDA graph" if gpu else "")] = lambda: trainer_rate(
                p, hidden, X, Y, batch, n_pinn, s.lr, device, "fused", phys)
            if not gpu:  # every term through the compiled CPU steps (engine "auto" on a CPU)
                variants["PINN, compiled CPU steps"] = lambda: trainer_rate(
                    p, hidden, X, Y, batch, n_pinn, s.lr, device, "cpp", phys)
            if gpu:  # its data and initial-condition terms through the Triton data step, the residual through
                # the Triton residual step (training.triton_step)
                variants["PINN, Triton steps, CUDA graph"] = lambda: trainer_rate(
                    p, hidden, X, Y, batch, n_pinn, s.lr, device, "triton", phys)
        rates = {k: [] for k in variants}
        for _ in range(rounds):
            for k, f in variants.items():
                if rates[k] and math.isnan(rates[k][-1]):  # failed in an earlier round: not tried again
                    rates[k].append(math.nan)
                    continue
                try:
                    rates[k].append(f())
                except Exception as exc:  # one variant failing (a kernel new to this GPU) must not lose the table
                    print(f"{name} {k}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    rates[k].append(math.nan)
        ref = rates["reference (plain eager loop)"]
        up = rates.get(UPSTREAM)
        for k, r in rates.items():
            results.append({"problem": name, "network": s.architecture, "batch": batch, "variant": k,
                            "it_per_s": _median(r), "vs_reference": _median([a / b for a, b in zip(r, ref)])})
            if up:
                results[-1]["vs_upstream"] = _median([a / b for a, b in zip(r, up)])
            print(f"{name} {k:34s} {_median(r):9.1f} it/s  (x{results[-1]['vs_reference']:.2f} the reference; "
                  f"rounds {', '.join(f'{v:.0f}' for v in r)})", flush=True)
        if p.kind == "trajectory":
            costs[name] = row_costs(p, hidden, X, Y, batch, s.physics.collocation_points, device, rounds=rounds)
    return results, costs


def _median(values) -> float:
    """The median of the finite values (NaN: a failed run), NaN when none is."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _fmt(v: float, spec: str) -> str:
    return "failed" if math.isnan(v) else format(v, spec)


def table(results, costs, info, device, iterations, rounds) -> str:
    threads = torch.get_num_threads()
    up = any("vs_upstream" in r for r in results)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {describe_machine(info) if device == 'cuda' else info['cpu']} "
             f"({device}{'' if device == 'cuda' else f', {threads} torch thread(s)'}; torch {torch.__version__}); "
             f"`python -m benchmarks.training_speed --iterations {iterations} --rounds {rounds}"
             f"{' --upstream <Pinn-Torch checkout>' if up else ''}`; medians over the "
             "rounds, ratios within a round.", "",
             "| problem | network | batch | variant | iterations/s | x reference |" + (" x upstream |" if up else ""),
             "|---|---|---:|---|---:|---:|" + ("---:|" if up else "")]
    for r in results:
        lines.append(f"| {r['problem']} | {r['network']} | {r['batch']} | {r['variant']} | {_fmt(r['it_per_s'], '.0f')} | "
                     f"{_fmt(r['vs_reference'], '.2f')} |" + (f" {_fmt(r['vs_upstream'], '.2f')} |" if "vs_upstream" in r
                                                              else (" |" if up else "")))
    for name, c in costs.items():
        lines += ["", f"Cost of one row on problem {name} (seconds per row; collocation row = ODE residual with its "
                      "time derivative; medians over the rounds, the ratio within each round):", "",
                  "| path | data row | collocation row | ratio |", "|---|---:|---:|---:|"]
        for path, v in c.items():
            lines.append(f"| {path} | {v['data_row_s']:.3g} | {v['collocation_row_s']:.3g} | "
                         f"{v['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--iterations", type=cli.integer(1), default=2000)
    ap.add_argument("--rounds", type=cli.integer(1), default=5)
    ap.add_argument("--threads", type=cli.integer(1), default=1, help="torch threads on a CPU")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--reference", action="store_true",
                    help="also write the table to benchmarks/reference/training_speed.md (tracked; the docs are "
                         "generated from it by `python -m benchmarks.reference --docs`)")
    ap.add_argument("--upstream", metavar="DIR", help="also time the upstream Pinn-Torch Trainer from this checkout")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("argument --device: cuda, but torch sees no usable GPU on this machine")
    study = load_config(*a.config)
    info = machine_info()
    results, costs = measure(study, a.iterations, a.rounds, device, a.upstream, a.config)
    text = table(results, costs, info, device, a.iterations, a.rounds)
    print(text)
    out = Layout(study.results_dir).benchmark("training_speed.md")
    write_text(out, text)
    print(f"wrote {out}")
    if a.reference:
        write_text(REFERENCE, text)
        print(f"wrote {REFERENCE}; now run `python -m benchmarks.reference --docs`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
