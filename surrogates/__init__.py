"""Neural-network surrogates of cell models: data-driven (DDNN), physics-informed (PINN) and iterative
(ITNN) MLPs, their datasets and their training. Nothing here needs a GPU.

>>> from surrogates import MLP, Trainer, DataLoss
>>> net = MLP(4, 2, [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)])
"""
from .itnn import rollout
from .losses import DATA_METRICS, DataLoss, GateResidualLoss, InitialConditionLoss, Loss, ODEResidualLoss, ResidualLoss
from .metrics import error_metrics
from .network import ACTIVATIONS, MLP, load_checkpoint, save_checkpoint
from .problems import Problem, load_config, problem_from_config
from .trainer import Trainer, TrainingDivergedError

__all__ = [
    "ACTIVATIONS", "DATA_METRICS", "DataLoss", "GateResidualLoss", "InitialConditionLoss", "Loss", "MLP",
    "ODEResidualLoss", "Problem", "ResidualLoss", "Trainer", "TrainingDivergedError", "error_metrics",
    "load_checkpoint", "load_config", "problem_from_config", "rollout", "save_checkpoint",
]
