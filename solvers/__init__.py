"""Reference forward-Euler solvers for single-cell models, all generated from one model definition.

>>> import solvers
>>> t, Y = solvers.simulate("fhn", [[0.5, 0.0]], t_end=20.0, save_every=10)
>>> Y.shape
(201, 1, 2)

Nothing here needs a GPU: the ``cuda`` backend imports CuPy only when it is used.
"""
from .backends import available_backends, get_backend, list_backends
from core.errors import BackendUnavailableError, InvalidInputError, NonFiniteStateError, PipelineError
from .model import DTYPES, CellModel, Parameter, State
from .models import get_model, list_models, register_model
from .simulate import parameter_matrix, simulate

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "CellModel", "DTYPES", "InvalidInputError", "NonFiniteStateError", "Parameter",
    "PipelineError", "State", "available_backends", "get_backend", "get_model", "list_backends", "list_models",
    "parameter_matrix", "register_model", "simulate",
]
