"""Training the surrogates: the :class:`Trainer` and its paths (the hand-written engine, the compiled CPU
steps, the Triton steps, the steps captured in a CUDA graph, the L-BFGS polish), seeds trained together
(stacked, or side by side in threads) and the training entry point (``python -m training.train``).

>>> from training import Trainer

The public names are loaded on first use, so ``import training`` does not import torch.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "Trainer": "trainer", "TrainingDivergedError": "trainer",
    "train_surrogate": "train", "train_surrogates": "train",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'training' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
