"""What a trained model is (its provenance: recorded in its checkpoint and ``metrics.json``, checked by every
consumer) and its score on the held-out test set (t = 0 excluded; an ITNN's by rollout)."""
from __future__ import annotations

import numpy as np
import torch

from core.errors import InvalidInputError
from core.steps import whole_steps

from .itnn import rollout
from .metrics import error_metrics
from .problems import Problem
from .study import Study


def model_provenance(p: Problem, surrogate: str, n: int, seed: int, arch: str, hidden) -> dict:
    """What a trained model is: recorded in its checkpoint and metrics.json, checked by every consumer."""
    return {"problem": p.name, "problem_fingerprint": p.fingerprint, "surrogate": surrogate, "n": int(n),
            "seed": int(seed), "arch": arch, "hidden": [list(h) for h in hidden], "inputs": list(p.inputs),
            "outputs": list(p.outputs)}


def expected_model(study: Study, problem: str, surrogate: str, n: int, seed: int, arch: str | None = None) -> dict:
    """The provenance a consumer requires of the model trained for these settings (see :func:`model_provenance`)."""
    p = study.problem(problem)
    s = study.training(problem)
    arch = arch or s.architecture
    if arch not in s.architectures:
        raise InvalidInputError(f"unknown architecture {arch!r}; valid: {sorted(s.architectures)}")
    return model_provenance(p, surrogate, n, seed, arch, s.architectures[arch])


def evaluate(model, p: Problem, test: dict, problems: dict | None = None) -> tuple[dict, dict]:
    """Test metrics (t = 0 excluded) and extras (ITNN: error over time)."""
    model.eval()
    device = next(model.parameters()).device
    X, Y = test["X"], test["Y"]
    if p.kind != "step":
        with torch.no_grad():
            pred = torch.cat([model(torch.as_tensor(X[i:i + 65536], dtype=torch.float32, device=device)).cpu()
                              for i in range(0, len(X), 65536)]).numpy()
        return error_metrics(pred, Y, X[:, 0], p.outputs), {}
    # ITNN: roll out over the source problem's whole test trajectories
    src = problems[p.test_from]
    traj = test["trajectory"]
    n_traj = int(traj.max()) + 1
    K = len(X) // n_traj
    Xt, Yt = X.reshape(n_traj, K, -1), Y.reshape(n_traj, K, -1)
    states, params = src.split(src.columns(Xt[:, 0]), n_traj)
    y0, params = p.rollout_inputs(states, params, n_traj, t0=Xt[:, 0, 0])  # a trajectory's first input is t
    per = whole_steps(src.save_interval, p.step, f"ITNN step {p.step:g} on the test grid of {src.name!r}")
    R = rollout(model, y0, params, (K - 1) * per, keep_every=per, clock=p.rollout_clock).transpose(1, 0, 2)
    t = Xt[:, :, 0]
    metrics = error_metrics(R.reshape(-1, R.shape[-1]), Yt.reshape(-1, Yt.shape[-1]), t.reshape(-1), p.outputs)
    err_t = np.abs(R - Yt).mean(axis=(0, 2))
    extras = {"rollout_error": {"t": t[0].tolist(), "mae": err_t.tolist()},
              "rollout_bounded": bool(np.isfinite(R).all() and np.abs(R).max() < 10 * np.abs(Yt).max())}
    return metrics, extras
