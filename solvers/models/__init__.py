"""Registry of cell models: found, not listed.

Every module of this package that defines ``MODEL`` (a :class:`~solvers.model.CellModel`) is a registered
model, found by :mod:`pkgutil` on first use: adding a model is adding its file here. Models kept elsewhere
(a project of one's own, a test's temporary folder) are found in the folders a configuration names
(``model_paths``): :func:`get_model` and :func:`list_models` take them as ``paths``. A file of such a
folder is read by the loader of its suffix (:data:`LOADERS`: ``.py``, a Python file defining ``MODEL`` that
imports from ``solvers``; ``.mmt`` and ``.cellml``, read by Myokit: :mod:`solvers.myokit_import`); another model
format becomes one more entry there.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

from core.errors import InvalidInputError
from ..model import CellModel
from ..myokit_import import is_model_path, load

_lock = threading.RLock()
_BUILTIN: dict[str, CellModel] | None = None  # this package's models, found on first use
_ADDED: dict[str, CellModel] = {}  # register_model
_FOLDERS: dict[Path, dict[str, CellModel]] = {}  # the models of each folder of `paths`, read once


def _model_of(module, where: str) -> CellModel | None:
    model = getattr(module, "MODEL", None)
    if model is not None and not isinstance(model, CellModel):
        raise InvalidInputError(f"{where}: MODEL is a {type(model).__name__}, not a solvers.CellModel")
    return model


def _add(found: dict[str, CellModel], origin: dict[str, str], model: CellModel, where: str) -> None:
    if model.name in found:
        raise InvalidInputError(f"two models are named {model.name!r}: {origin[model.name]} and {where}")
    found[model.name], origin[model.name] = model, where


def _builtin() -> dict[str, CellModel]:
    """The modules of this package that define ``MODEL``, by model name."""
    global _BUILTIN
    with _lock:
        if _BUILTIN is None:
            found, origin = {}, {}
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
                if info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{__name__}.{info.name}")
                model = _model_of(module, f"solvers/models/{info.name}.py")
                if model is not None:
                    _add(found, origin, model, f"solvers/models/{info.name}.py")
            _BUILTIN = found
        return _BUILTIN


def _python_model(path: Path) -> CellModel | None:
    """The ``MODEL`` of a Python file outside the package (``None`` where it defines none)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"_cell_model_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except InvalidInputError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InvalidInputError(f"model file {path}: {type(exc).__name__}: {exc}") from exc
    return _model_of(module, f"model file {path}")


# suffix -> loader of one model file (None where the file holds no model)
LOADERS: dict[str, Callable[[Path], CellModel | None]] = {".py": _python_model, ".mmt": load, ".cellml": load}


def load_model_file(path) -> CellModel | None:
    """The model that the file ``path`` defines, read by the loader of its suffix (:data:`LOADERS`)."""
    path = Path(path)
    loader = LOADERS.get(path.suffix)
    if loader is None:
        raise InvalidInputError(f"model file {path}: no loader for {path.suffix!r} files; known: {sorted(LOADERS)}")
    return loader(path)


def _folder(folder) -> dict[str, CellModel]:
    """The models of the files in ``folder`` whose suffix has a loader (names starting with ``_`` skipped)."""
    path = Path(folder).expanduser().resolve()
    with _lock:
        if path not in _FOLDERS:
            if not path.is_dir():
                raise InvalidInputError(f"model folder {folder}: not a folder")
            found, origin = {}, {}
            for f in sorted(path.iterdir()):
                if f.suffix in LOADERS and not f.name.startswith(("_", ".")) and f.is_file():
                    model = load_model_file(f)
                    if model is not None:
                        _add(found, origin, model, str(f))
            _FOLDERS[path] = found
        return _FOLDERS[path]


def _registry(paths: Iterable = ()) -> dict[str, CellModel]:
    found = dict(_builtin())
    origin = {name: "a model of solvers/models" for name in found}
    for name, model in _ADDED.items():
        _add(found, origin, model, "register_model")
    for folder in paths or ():
        for name, model in _folder(folder).items():
            _add(found, origin, model, f"model folder {folder}")
    return found


def list_models(paths: Iterable = ()) -> list[str]:
    """Names of the registered models (with those of the folders ``paths``)."""
    return sorted(_registry(paths))


def get_model(model: str | CellModel, paths: Iterable = ()) -> CellModel:
    """The model called ``model``, among the registered ones and those of the folders ``paths`` (a
    :class:`CellModel` is returned as is). A path (a str or Path ending in .mmt, .cellml or .xml, ``myokit:NAME``,
    or an existing file) is a Myokit or CellML file, imported by :func:`solvers.myokit_import.load`."""
    if isinstance(model, CellModel):
        return model
    registry = _registry(paths)
    if is_model_path(model) and not (isinstance(model, str) and model in registry):  # a registered name wins
        return load(model)
    try:
        return registry[model]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown model {model!r}; valid: {sorted(registry)}, or the path of a Myokit (.mmt) "
                                "or CellML (.cellml, .xml) file") from None


def register_model(model: CellModel) -> None:
    """Add a model to the registry (its name must be new)."""
    with _lock:
        if model.name in _builtin() or model.name in _ADDED:
            raise InvalidInputError(f"a model named {model.name!r} is already registered")
        _ADDED[model.name] = model
