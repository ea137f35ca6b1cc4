"""Registry of forward-Euler backends. GPU backends import their libraries lazily."""
from __future__ import annotations

from core.errors import BackendUnavailableError, InvalidInputError
from .base import Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .numpy_backend import NumpyBackend

_REGISTRY: dict[str, Backend] = {b.name: b for b in (NumpyBackend(), CpuBackend(), CudaBackend())}
# "auto" tries these in order and takes the first that can run here.
_PREFERENCE = ("cuda", "cpu", "numpy")


def list_backends() -> list[str]:
    """Names of the registered backends (plus ``"auto"``)."""
    return [*_REGISTRY, "auto"]


def available_backends() -> dict[str, str | None]:
    """Each backend's name with ``None`` if it can run here, else the reason it cannot."""
    return {n: b.unavailable_reason() for n, b in _REGISTRY.items()}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ``"auto"`` picks the fastest that can run here.

    Raises ``InvalidInputError`` for an unknown name and ``BackendUnavailableError`` when the named backend
    cannot run on this machine (the message says what is missing).
    """
    if name == "auto":
        for n in _PREFERENCE:
            if _REGISTRY[n].unavailable_reason() is None:
                return _REGISTRY[n]
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown backend {name!r}; valid: {list_backends()}")
    backend = _REGISTRY[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
    return backend


__all__ = ["Backend", "available_backends", "get_backend", "list_backends"]
