"""Training the surrogates: the :class:`Trainer` and its paths (the hand-written engine, the compiled CPU
steps, the Triton steps, the steps captured in a CUDA graph, the L-BFGS polish), seeds trained together
(stacked, or side by side in threads) and the training entry point (``python -m training.train``).

>>> from training import Trainer
"""
from .trainer import Trainer, TrainingDivergedError

__all__ = ["Trainer", "TrainingDivergedError"]
