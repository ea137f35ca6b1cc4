"""Neural-network surrogates of cell models: data-driven (DDNN), physics-informed (PINN) and iterative
(ITNN) MLPs, their problems, datasets, losses and scores (training them: :mod:`training`). Nothing here
needs a GPU.

>>> from surrogates import MLP, DataLoss
>>> net = MLP(4, 2, [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)])

The public names are loaded on first use, so ``import surrogates.config`` or ``surrogates.problems`` (what
the workflow needs while it parses) does not import torch.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "rollout": "itnn",
    "DATA_METRICS": "losses", "DataLoss": "losses", "GateResidualLoss": "losses", "InitialConditionLoss": "losses",
    "Loss": "losses", "ODEResidualLoss": "losses", "ResidualLoss": "losses",
    "error_metrics": "metrics",
    "ACTIVATIONS": "network", "MLP": "network", "load_checkpoint": "network", "save_checkpoint": "network",
    "Problem": "problems", "problem_from_config": "problems",
    "load_config": "config", "validate_config": "config", "Study": "study",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'surrogates' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
