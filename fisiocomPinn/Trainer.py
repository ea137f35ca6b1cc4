"""``Trainer``: :class:`training.trainer.Trainer` under the seed README's import path."""
from training.trainer import Trainer

__all__ = ["Trainer"]
