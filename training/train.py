"""Train one surrogate for one (problem, kind, n, seed, architecture) and score it on the held-out test set.

    python -m training.train --problem C --surrogate ddnn --n 1000 --seed 0 \\
        --data results/datasets/C --out results/models/C/ddnn/n1000/mlp3x64/seed0

Kinds: ``ddnn`` (data only), ``pinn`` (data + ODE residual + initial condition; for ``hh_m`` the residual
with the total derivative along the trace), ``pinn_seed`` (``hh_m`` only: the seed notebook's residual at
fixed V) and ``itnn`` (one-step map of a ``step`` problem, scored by rollout). Defaults come from the
``training`` section of the config. ``metrics.json`` holds the test errors (t = 0 excluded), the number of
parameters, the training time and iterations, the device, and the Euler solver floor of the test set.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from core.cli import Parser, run_main
from core.errors import InvalidInputError
from core.io import load_dataset, remove_stale_temporaries, write_record
from core.lock import FolderLock
from core.machine import describe_machine, machine_info
from core.provenance import project_version

from surrogates.config import load_config
from surrogates.datasets import expected_provenance
from surrogates.losses import (DataLoss, GateResidualLoss, InitialConditionLoss, ODEResidualLoss, contrast_weights,
                               rate_weights)
from surrogates.network import MLP
from surrogates.problems import SURROGATE_KINDS as KINDS, Problem
from surrogates.study import Study
from surrogates.scoring import evaluate, expected_model

from .trainer import Trainer

SEED_MAX = 2**32 - 1


def check_count(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer setting within bounds, else ``InvalidInputError`` naming it (no silent replacement)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise InvalidInputError(f"{name} must be {bounds}, got {value}")
    return int(value)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def _input_range(p: Problem, X: np.ndarray):
    if p.kind in ("trajectory", "step"):
        return p.box()
    lo, hi = X.min(axis=0), X.max(axis=0)  # trace: t and the recorded states' span
    lo[0], hi[0] = 0.0, p.t_end
    pad = 0.05 * (hi - lo)
    return lo - pad * (np.arange(len(lo)) > 0), hi + pad * (np.arange(len(hi)) > 0)


def _output_scaling(Y: np.ndarray):
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    half = (hi - lo) / 2
    return (hi + lo) / 2, np.where(half > 0, half, 1.0)


def build_model(p: Problem, hidden, X, Y, seed: int, bounds: dict | None = None) -> MLP:
    """A fresh network for ``p``, its inputs and outputs scaled from the training rows; with ``bounds``
    (output -> ``[lo, hi]``, ``training.output_bounds``) the output layer is a Tanh onto them, so no input
    can take an output outside (a gating variable stays in [0, 1])."""
    torch.manual_seed(seed)
    if not bounds:
        center, scale = _output_scaling(Y)
        return MLP(len(p.inputs), len(p.outputs), hidden, input_range=_input_range(p, X), output_center=center,
                   output_scale=scale)
    lo, hi = (np.array([float(bounds[o][i]) for o in p.outputs]) for i in (0, 1))
    outside = (Y < lo) | (Y > hi)
    if outside.any():
        col = int(np.nonzero(outside.any(axis=0))[0][0])
        raise InvalidInputError(f"training.output_bounds of {p.name!r}: the training labels of {p.outputs[col]!r} "
                                f"leave [{lo[col]:g}, {hi[col]:g}] ({int(outside[:, col].sum())} rows)")
    return MLP(len(p.inputs), len(p.outputs), hidden, output_activation="Tanh", input_range=_input_range(p, X),
               output_center=(hi + lo) / 2, output_scale=(hi - lo) / 2)


def train_surrogate(study: Study, problem: str, surrogate: str, n: int, seed: int, data_dir, out_dir,
                    architecture: str | None = None, test_path=None, iterations: int | None = None,
                    train_path=None, val_path=None) -> dict:
    """Train and score one surrogate; writes the Trainer's files and ``metrics.json`` into ``out_dir``.

    The datasets are ``data_dir/n{n}/{train,val}.npz`` and ``data_dir/test.npz`` unless given explicitly;
    each must have been made for this problem (its definition's fingerprint), part and size, which is
    checked before any work. ``iterations`` (>= 0) overrides the configured number, 0 meaning none: the
    untrained network is scored. ``out_dir`` is locked for the run: a second run on it refuses at once.
    """
    return train_surrogates(study, problem, surrogate, n, [seed], data_dir, [out_dir], architecture, test_path,
                            iterations, train_path, val_path)[0]


def train_surrogates(study: Study, problem: str, surrogate: str, n: int, seeds, data_dir, out_dirs,
                     architecture: str | None = None, test_path=None, iterations: int | None = None,
                     train_path=None, val_path=None) -> list[dict]:
    """As :func:`train_surrogate`, for several seeds (one output folder each) trained together as one
    stacked model where :mod:`~training.cohort` allows it (data-only kinds), else one after the other.
    Each seed's files and ``metrics.json`` are those of a lone run; ``train_seconds`` is each seed's share
    of the cohort's wall time (``cohort_seconds``: all of it)."""
    if surrogate not in KINDS:
        raise InvalidInputError(f"unknown surrogate {surrogate!r}; valid: {sorted(KINDS)}")
    p = study.problem(problem)
    if p.kind not in KINDS[surrogate]:
        raise InvalidInputError(f"surrogate {surrogate!r} cannot train on problem {problem!r} (kind {p.kind!r}); "
                                f"it takes {list(KINDS[surrogate])} problems")
    n = check_count(n, "n (training rows)", minimum=1)
    seeds = [check_count(seed, "seed", 0, SEED_MAX) for seed in seeds]
    out_dirs = [Path(o) for o in out_dirs]
    if not seeds or len(seeds) != len(out_dirs) or len(set(seeds)) != len(seeds):
        raise InvalidInputError(f"give one output folder per seed and distinct seeds; got seeds {seeds} and "
                                f"{len(out_dirs)} folders")
    s = study.training(problem)
    arch = architecture or s.architecture
    total = s.iterations if iterations is None else check_count(iterations, "iterations", minimum=0)
    data_dir = Path(data_dir)
    with ExitStack() as locks:
        for out_dir in out_dirs:
            locks.enter_context(FolderLock(out_dir, what="training folder"))
            # held now: a temporary file here is a write that a killed run (SIGKILL) left half done
            for tmp in remove_stale_temporaries(out_dir):
                print(f"removed {tmp.name}, a file a killed run left half written", flush=True)
        train = load_dataset(train_path or data_dir / f"n{n}" / "train.npz", expect=expected_provenance(p, study, "train", n))
        val = load_dataset(val_path or data_dir / f"n{n}" / "val.npz", expect=expected_provenance(p, study, "val", n))
        test = load_dataset(test_path or data_dir / "test.npz", expect=expected_provenance(p, study, "test"))
        runs = [_setup(study, p, surrogate, n, seed, arch, s, total, out_dir, train, val)
                for seed, out_dir in zip(seeds, out_dirs)]
        if len(runs) == 1:
            summaries = [{**runs[0]["trainer"].train(total), "cohort": 1}]
        else:
            from .cohort import train_together

            summaries = train_together([r["trainer"] for r in runs], total,
                                       side_by_side=bool(study.side_by_side))
        return [_score(study, p, r, summary, test) for r, summary in zip(runs, summaries)]


def _setup(study, p, surrogate, n, seed, arch, s, total, out_dir, train, val) -> dict:
    """One seed's network, Trainer and losses (nothing trained yet)."""
    (train, train_meta), (val, val_meta) = train, val
    prov = expected_model(study, p.name, surrogate, n, seed, arch)
    hidden = [tuple(h) for h in prov["hidden"]]
    device = resolve_device(s.device)
    Xtr, Ytr, Xv, Yv = train["X"], train["Y"], val["X"], val["Y"]
    if surrogate == "itnn":  # learn the increment of the state over one step
        Ytr = Ytr - Xtr[:, p.state_inputs]
    model = build_model(p, hidden, Xtr, Ytr, seed, s.output_bounds).to(device)
    Xv_t = torch.as_tensor(Xv, dtype=torch.float32, device=device)
    Yv_t = torch.as_tensor(Yv, dtype=torch.float32, device=device)
    base = Xv_t[:, p.state_inputs] if surrogate == "itnn" else 0.0

    def validation(m):
        err = torch.abs(base + m(Xv_t) - Yv_t)
        return {"val_mae": torch.mean(err), "val_max": torch.max(err)}

    settings = {k: v for k, v in s.as_dict().items() if k != "architectures"}
    # lbfgs_weight_decay weighs the polish's weight penalty against the data loss summed over the training rows:
    # against their mean (the data loss) it is divided by n, a fixed prior whose pull fades as rows are added
    trainer = Trainer(model, out_dir, validation=validation, monitor=s.monitor, val_every=s.val_every,
                      optimizer=s.optimizer, lr=s.lr, lr_schedule=s.lr_schedule, lr_final=s.lr_final,
                      patience=s.patience, lbfgs_iterations=s.lbfgs_iterations,
                      lbfgs_dtype=s.lbfgs_dtype, lbfgs_weight_decay=s.lbfgs_weight_decay / len(Xtr),
                      engine=s.engine, seed=seed,
                      progress=None,
                      fingerprint={**prov, "iterations": total, "settings": settings,
                                   "train_sha256": train_meta.get("sha256"), "val_sha256": val_meta.get("sha256")},
                      checkpoint_meta={"provenance": prov})
    sampling = s.sampling
    weights = None if sampling == "uniform" else \
        (rate_weights if sampling == "rate" else contrast_weights)(p, Xtr, Ytr, s.sampling_strength)
    trainer.add_loss(DataLoss(Xtr, Ytr, batch_size=s.batch_size, metric=s.data_loss, seed=seed,
                              name="data", weights=weights), 1.0)
    phys = s.physics
    if surrogate == "pinn" and p.kind == "trajectory":
        bounds = (Ytr.min(axis=0), Ytr.max(axis=0)) if phys.clamp_states else None
        trainer.add_loss(ODEResidualLoss(p, phys.collocation_points, phys.sampler, seed=seed + 1000,
                                         bounds=bounds, rhs_dtype=phys.rhs_dtype), phys.weight)
        trainer.add_loss(InitialConditionLoss(p, max(256, phys.collocation_points // 4), phys.sampler,
                                              seed=seed + 2000), phys.ic_weight)
    elif surrogate in ("pinn", "pinn_seed"):
        from surrogates.datasets import pool_training_points, trace_states

        t_full, S = trace_states(p)
        gate = p.outputs[0]
        variant = "seed" if surrogate == "pinn_seed" else "total"
        points = pool_training_points(p, study.datasets.test_seed)  # the test split's time points: never
        trainer.add_loss(GateResidualLoss(p.model, gate, t_full, S, variant, points=points), phys.weight)
    return {"trainer": trainer, "model": model, "device": device, "prov": prov, "hidden": hidden, "seed": seed,
            "surrogate": surrogate, "n": n, "arch": arch, "settings": settings, "out_dir": Path(out_dir)}


def _best_validation(trainer, summary) -> dict:
    """The validation errors of the kept checkpoint (``val_mae``, ``val_max``), whichever of them chose it."""
    row = next((row for row in reversed(trainer.rows) if row["iteration"] == summary["best_iteration"]), {})
    out = {"val_mae": row.get("val_mae", summary["best_metric"])}
    if "val_max" in row:
        out["val_max"] = row["val_max"]
    return out


def _score(study, p, r, summary, test) -> dict:
    """Score a trained seed on the held-out test set; write its ``metrics.json``."""
    test, test_meta = test
    model, device, hidden, out_dir = r["model"], r["device"], r["hidden"], r["out_dir"]
    problems = study.rollout_sources(p)
    metrics, extras = evaluate(model, p, test, problems)
    cohort = int(summary.get("cohort", 1))
    result = {
        "provenance": r["prov"], "problem": p.name, "surrogate": r["surrogate"], "n_train": int(r["n"]),
        "seed": int(r["seed"]), "arch": r["arch"], "hidden": [list(h) for h in hidden], "test": metrics,
        "mae": metrics["mae"], "max_abs_err": metrics["max_abs_err"], "rel_l2": metrics["rel_l2"],
        "n_params": model.n_params, "train_seconds": summary["train_seconds"] / cohort,
        "iterations": summary["iterations"], "best_iteration": summary["best_iteration"],
        **_best_validation(r["trainer"], summary), "stopped_early": summary["stopped_early"],
        "resumed_from_iteration": summary["resumed_from"], "cohort": cohort,
        "cohort_seconds": summary["train_seconds"] if cohort > 1 else None,
        "device": str(device), "training_path": summary.get("path"),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else describe_machine(machine_info(gpu=False)),
        "torch": torch.__version__, "euler_floor": test_meta.get("euler_floor"),
        "test_set": {"problem": test_meta.get("provenance", {}).get("problem"), "sha256": test_meta.get("sha256")},
        "version": project_version(), "settings": r["settings"], **extras,
    }
    result = write_record(out_dir / "metrics.json", result)
    # done: the resume point goes, so a rerun (new settings, new code) trains afresh instead of resuming
    # a finished run; only a run that was killed leaves its checkpoint.pth behind
    (out_dir / "checkpoint.pth").unlink(missing_ok=True)
    return result


def _int_arg(name: str, minimum: int, maximum: int | None = None):
    """An argparse type: an integer within bounds, with a message naming the option (never a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes an integer, got {text!r}") from None
        try:
            return check_count(value, name, minimum, maximum)
        except InvalidInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def main(argv=None) -> int:
    ap = Parser(prog="python -m training.train", description=__doc__)
    ap.add_argument("--config", type=Path, nargs="*", default=[],
                    help="config files merged over config/config.yaml (e.g. config/quick.yaml)")
    ap.add_argument("--problem", required=True)
    ap.add_argument("--surrogate", required=True, choices=sorted(KINDS))
    ap.add_argument("--n", type=_int_arg("--n", 1), required=True)
    ap.add_argument("--seed", type=_int_arg("--seed", 0, SEED_MAX), nargs="+", default=[0],
                    help="one seed, or several trained together as one stacked model (data-only kinds; "
                         "--out then holds {seed})")
    ap.add_argument("--arch", default=None, help="a key of training.architectures (default: training.architecture)")
    ap.add_argument("--data", type=Path, required=True, help="the problem's dataset folder (holding n{n}/ and test.npz)")
    ap.add_argument("--test", type=Path, default=None, help="test set (default: DATA/test.npz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iterations", type=_int_arg("--iterations", 0), default=None,
                    help="first-order steps (>= 0; 0 scores the untrained network); default: the config's")
    ap.add_argument("--threads", type=_int_arg("--threads", 1), default=None,
                    help="CPU threads (torch.set_num_threads, as the workflow's rule sets its job's threads); "
                         "default: torch's (every core)")
    a = ap.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    return run_main(lambda: _main(a))  # a project error or the OS's (a read-only folder): one line, status 2


def _main(a) -> int:
    study = load_config(*a.config)
    if len(a.seed) > 1 and "{seed}" not in str(a.out):
        raise InvalidInputError(f"with several seeds --out must hold {{seed}} (one folder each), got {a.out}")
    outs = [Path(str(a.out).replace("{seed}", str(seed))) for seed in a.seed]
    results = train_surrogates(study, a.problem, a.surrogate, a.n, a.seed, a.data, outs, a.arch, a.test, a.iterations)
    for r in results:
        print(f"{a.problem} {a.surrogate} n={a.n} seed={r['seed']}: test MAE {r['mae']:.3e}, max "
              f"{r['max_abs_err']:.3e}, rel L2 {r['rel_l2']:.3e} ({r['train_seconds']:.1f} s, {r['iterations']} "
              f"iterations{', trained with ' + str(r['cohort'] - 1) + ' other(s)' if r['cohort'] > 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
