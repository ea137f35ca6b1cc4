"""``Trainer``: :class:`surrogates.trainer.Trainer` under the seed README's import path."""
from surrogates.trainer import Trainer

__all__ = ["Trainer"]
