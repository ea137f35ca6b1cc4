"""Registry of cell models: one file per model, each defining ``MODEL``."""
from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInputError

from ..model import CellModel
from ..myokit_import import is_model_path, load
from . import fhn, fhn_classic, hh

_REGISTRY: dict[str, CellModel] = {m.name: m for m in (fhn.MODEL, fhn_classic.MODEL, hh.MODEL)}


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def get_model(model: str | Path | CellModel) -> CellModel:
    """The model called ``model`` (a :class:`CellModel` is returned as is). A path (a str or Path ending in .mmt,
    .cellml or .xml, or an existing file) is a Myokit or CellML file, imported by :func:`solvers.myokit_import.load`."""
    if isinstance(model, CellModel):
        return model
    if is_model_path(model) and not (isinstance(model, str) and model in _REGISTRY):  # a registered name wins
        return load(model)
    try:
        return _REGISTRY[model]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown model {model!r}; valid: {list_models()}, or the path of a Myokit (.mmt) or "
                                "CellML (.cellml, .xml) file") from None


def register_model(model: CellModel) -> None:
    """Add a model to the registry (its name must be new)."""
    if model.name in _REGISTRY:
        raise InvalidInputError(f"a model named {model.name!r} is already registered")
    _REGISTRY[model.name] = model
