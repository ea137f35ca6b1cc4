"""Train one surrogate for one (problem, kind, n, seed, architecture) and score it on the held-out test set.

    python -m surrogates.train --problem C --surrogate ddnn --n 1000 --seed 0 \\
        --data results/datasets/C --out results/models/C/ddnn/n1000/mlp3x64/seed0

Kinds: ``ddnn`` (data only), ``pinn`` (data + ODE residual + initial condition; for ``hh_m`` the residual
with the total derivative along the trace), ``pinn_seed`` (``hh_m`` only: the seed notebook's residual at
fixed V) and ``itnn`` (one-step map of a ``step`` problem, scored by rollout). Defaults come from the
``training`` section of the config. ``metrics.json`` holds the test errors (t = 0 excluded), the number of
parameters, the training time and iterations, the device, and the Euler solver floor of the test set.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

from solvers.errors import InvalidInputError, PipelineError

from .io import load_dataset, project_version, write_json
from .itnn import rollout
from .losses import DataLoss, GateResidualLoss, InitialConditionLoss, ODEResidualLoss, problem_box
from .metrics import error_metrics
from .network import MLP
from .problems import SURROGATE_KINDS as KINDS, Problem, load_config, problem_from_config
from .trainer import Trainer


def training_settings(cfg: dict, problem: str) -> dict:
    """The ``training`` section with the problem's ``overrides`` applied (``physics`` merged key by key)."""
    t = copy.deepcopy(cfg["training"])
    over = copy.deepcopy(t.pop("overrides", {}).get(problem, {}))
    phys = over.pop("physics", {})
    t.update(over)
    t["physics"] = {**t.get("physics", {}), **phys}
    return t


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def _input_range(p: Problem, X: np.ndarray):
    if p.kind in ("trajectory", "step"):
        return problem_box(p)
    lo, hi = X.min(axis=0), X.max(axis=0)  # trace: t and the recorded states' span
    lo[0], hi[0] = 0.0, p.t_end
    pad = 0.05 * (hi - lo)
    return lo - pad * (np.arange(len(lo)) > 0), hi + pad * (np.arange(len(hi)) > 0)


def _output_scaling(Y: np.ndarray):
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    half = (hi - lo) / 2
    return (hi + lo) / 2, np.where(half > 0, half, 1.0)


def build_model(p: Problem, hidden, X, Y, seed: int) -> MLP:
    torch.manual_seed(seed)
    center, scale = _output_scaling(Y)
    return MLP(len(p.inputs), len(p.outputs), hidden, input_range=_input_range(p, X), output_center=center,
               output_scale=scale)


def _state_columns(p: Problem) -> list[int]:
    return [p.inputs.index(o) for o in p.outputs]


def evaluate(model, p: Problem, test: dict, problems: dict | None = None) -> tuple[dict, dict]:
    """Test metrics (t = 0 excluded) and extras (ITNN: error over time)."""
    model.eval()
    device = next(model.parameters()).device
    X, Y = test["X"], test["Y"]
    if p.kind != "step":
        with torch.no_grad():
            pred = torch.cat([model(torch.as_tensor(X[i:i + 65536], dtype=torch.float32, device=device)).cpu()
                              for i in range(0, len(X), 65536)]).numpy()
        return error_metrics(pred, Y, X[:, 0]), {}
    # ITNN: roll out over the source problem's whole test trajectories
    src = problems[p.test_from]
    traj = test["trajectory"]
    n_traj = int(traj.max()) + 1
    K = len(X) // n_traj
    Xt, Yt = X.reshape(n_traj, K, -1), Y.reshape(n_traj, K, -1)
    col = {n: i for i, n in enumerate(src.inputs)}
    y0 = np.stack([Xt[:, 0, col[f"{s}0"]] for s in p.outputs], axis=1)
    params = np.stack([Xt[:, 0, col[n]] for n in p.inputs if n not in p.outputs], axis=1)
    per = round(src.save_interval / p.step)
    if abs(per * p.step - src.save_interval) > 1e-9:
        raise InvalidInputError(f"ITNN step {p.step} does not divide the test grid of {src.name!r} ({src.save_interval})")
    R = rollout(model, y0, params, (K - 1) * per, keep_every=per).transpose(1, 0, 2)  # (n_traj, K, n_states)
    t = Xt[:, :, 0]
    metrics = error_metrics(R.reshape(-1, R.shape[-1]), Yt.reshape(-1, Yt.shape[-1]), t.reshape(-1))
    err_t = np.abs(R - Yt).mean(axis=(0, 2))
    extras = {"rollout_error": {"t": t[0].tolist(), "mae": err_t.tolist()},
              "rollout_bounded": bool(np.isfinite(R).all() and np.abs(R).max() < 10 * np.abs(Yt).max())}
    return metrics, extras


def train_surrogate(cfg: dict, problem: str, surrogate: str, n: int, seed: int, data_dir, out_dir,
                    architecture: str | None = None, test_path=None, iterations: int | None = None) -> dict:
    """Train and score one surrogate; writes the Trainer's files and ``metrics.json`` into ``out_dir``."""
    if surrogate not in KINDS:
        raise InvalidInputError(f"unknown surrogate {surrogate!r}; valid: {sorted(KINDS)}")
    p = problem_from_config(problem, cfg)
    if p.kind not in KINDS[surrogate]:
        raise InvalidInputError(f"surrogate {surrogate!r} cannot train on problem {problem!r} (kind {p.kind!r}); "
                                f"it takes {list(KINDS[surrogate])} problems")
    s = training_settings(cfg, problem)
    arch = architecture or s["architecture"]
    if arch not in s["architectures"]:
        raise InvalidInputError(f"unknown architecture {arch!r}; valid: {sorted(s['architectures'])}")
    hidden = [tuple(h) for h in s["architectures"][arch]]
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train, train_meta = load_dataset(data_dir / f"n{n}" / "train.npz")
    val, val_meta = load_dataset(data_dir / f"n{n}" / "val.npz")
    test, test_meta = load_dataset(Path(test_path) if test_path else data_dir / "test.npz")
    for name, d in (("train", train), ("val", val)):
        if list(d["input_names"]) != list(p.inputs) or list(d["output_names"]) != list(p.outputs):
            raise InvalidInputError(f"{name} set in {data_dir} has columns {list(d['input_names'])} -> "
                                    f"{list(d['output_names'])}, not those of problem {problem!r}")
    device = resolve_device(s.get("device", "auto"))
    Xtr, Ytr, Xv, Yv = train["X"], train["Y"], val["X"], val["Y"]
    if surrogate == "itnn":  # learn the increment of the state over one step
        Ytr = Ytr - Xtr[:, _state_columns(p)]
    model = build_model(p, hidden, Xtr, Ytr, seed).to(device)
    Xv_t = torch.as_tensor(Xv, dtype=torch.float32, device=device)
    Yv_t = torch.as_tensor(Yv, dtype=torch.float32, device=device)
    base = Xv_t[:, _state_columns(p)] if surrogate == "itnn" else 0.0

    def validation(m):
        return {"val_mae": torch.mean(torch.abs(base + m(Xv_t) - Yv_t))}

    total = int(iterations or s["iterations"])
    settings = {k: v for k, v in s.items() if k != "architectures"}
    trainer = Trainer(model, out_dir, validation=validation, monitor="val_mae", val_every=s["val_every"],
                      optimizer=s["optimizer"], lr=s["lr"], lr_schedule=s["lr_schedule"], lr_final=s["lr_final"],
                      patience=s["patience"], lbfgs_iterations=s["lbfgs_iterations"], seed=seed, progress=None,
                      fingerprint={"problem": problem, "surrogate": surrogate, "n": int(n), "seed": int(seed),
                                   "iterations": total, "hidden": hidden, "settings": settings,
                                   "train_sha256": train_meta.get("sha256"), "val_sha256": val_meta.get("sha256")})
    trainer.add_loss(DataLoss(Xtr, Ytr, batch_size=s["batch_size"], metric="mse", seed=seed, name="data"), 1.0)
    phys = s["physics"]
    if surrogate == "pinn" and p.kind == "trajectory":
        trainer.add_loss(ODEResidualLoss(p, phys["collocation_points"], phys["sampler"], seed=seed + 1000), phys["weight"])
        trainer.add_loss(InitialConditionLoss(p, max(256, phys["collocation_points"] // 4), phys["sampler"],
                                              seed=seed + 2000), phys["ic_weight"])
    elif surrogate in ("pinn", "pinn_seed"):
        from .datasets import trace_states

        t_full, S = trace_states(p)
        gate = p.outputs[0]
        variant = "seed" if surrogate == "pinn_seed" else "total"
        trainer.add_loss(GateResidualLoss(p.model, gate, t_full, S, variant), phys["weight"])
    summary = trainer.train(total)
    problems = {p.test_from: problem_from_config(p.test_from, cfg)} if p.kind == "step" else None
    metrics, extras = evaluate(model, p, test, problems)
    result = {
        "problem": problem, "surrogate": surrogate, "n_train": int(n), "seed": int(seed), "arch": arch,
        "hidden": [list(h) for h in hidden], "test": metrics, "mae": metrics["mae"],
        "max_abs_err": metrics["max_abs_err"], "rel_l2": metrics["rel_l2"], "n_params": model.n_params,
        "train_seconds": summary["train_seconds"], "iterations": summary["iterations"],
        "best_iteration": summary["best_iteration"], "val_mae": summary["best_metric"],
        "stopped_early": summary["stopped_early"], "resumed_from_iteration": summary["resumed_from"],
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__, "euler_floor": test_meta.get("euler_floor"), "version": project_version(),
        "settings": settings, **extras,
    }
    write_json(out_dir / "metrics.json", result)
    # done: the resume point goes, so a rerun (new settings, new code) trains afresh instead of resuming
    # a finished run; only a run that was killed leaves its checkpoint.pth behind
    (out_dir / "checkpoint.pth").unlink(missing_ok=True)
    return result


def _cpu_name() -> str:
    from benchmarks.machine import machine_info

    info = machine_info(gpu=False)
    return f"{info['cpu']} ({info['cores']} cores)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m surrogates.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--problem", required=True)
    ap.add_argument("--surrogate", required=True, choices=sorted(KINDS))
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default=None, help="a key of training.architectures (default: training.architecture)")
    ap.add_argument("--data", type=Path, required=True, help="the problem's dataset folder (holding n{n}/ and test.npz)")
    ap.add_argument("--test", type=Path, default=None, help="test set (default: DATA/test.npz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config)
        r = train_surrogate(cfg, a.problem, a.surrogate, a.n, a.seed, a.data, a.out, a.arch, a.test, a.iterations)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{a.problem} {a.surrogate} n={a.n} seed={a.seed}: test MAE {r['mae']:.3e}, max {r['max_abs_err']:.3e}, "
          f"rel L2 {r['rel_l2']:.3e} ({r['train_seconds']:.1f} s, {r['iterations']} iterations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
