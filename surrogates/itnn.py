"""Iterative surrogates (ITNN): a network that advances the state by one fixed step, rolled out.

The network maps (state, parameters) to the state's increment over one step (problem D: 0.1 time units,
i.e. 10 Euler steps); learning the increment rather than the next state keeps the identity part exact. On a
model paced by a stimulus the map also takes the time at the start of the step, which the rollout advances
(``clock``, from the step problem's ``rollout_clock``).
Evaluation always rolls it out: errors accumulate as they would in use.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def rollout(model, y0, params, n_steps: int, keep_every: int = 1, clock: tuple[int, float] | None = None) -> np.ndarray:
    """Advance many cells at once for ``n_steps`` steps; returns (n_steps // keep_every + 1, n, n_states).

    ``y0``: (n, n_states) initial states; ``params``: (n, n_params) per-cell parameters (the inputs that
    follow the states). The model takes ``[state, params]`` and returns the increment of the state.
    ``clock``: ``(column, step)`` where ``params[:, column]`` is the time at the start of the step, set to
    ``t0 + k * step`` before step ``k + 1`` (``t0`` its initial value); ``None``: every column stays fixed.
    """
    device = next(model.parameters()).device
    y = torch.as_tensor(np.asarray(y0), dtype=torch.float32, device=device)
    p = torch.as_tensor(np.array(params, dtype=np.float32), device=device).reshape(y.shape[0], -1)
    t0 = None if clock is None else p[:, clock[0]].double()
    out = [y.cpu().numpy()]
    for step in range(1, n_steps + 1):
        y = y + model(torch.cat([y, p], dim=1))
        if clock is not None:
            p[:, clock[0]] = (t0 + step * clock[1]).float()
        if step % keep_every == 0:
            out.append(y.cpu().numpy())
    return np.stack(out)
