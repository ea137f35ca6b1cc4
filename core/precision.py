"""One precision vocabulary for the whole project, and its only conversion to dtypes.

Canonical names are ``fp64``, ``fp32``, ``fp16`` and ``bf16``; the NumPy spellings (``float32`` ...) are
accepted everywhere as aliases, so the solver's ``dtype="float32"`` and the inference side's ``"fp32"``
mean the same thing. Every conversion goes through a :class:`Precision` from here: to NumPy and C types in
this module, to torch types in :func:`inference.export.torch_dtype` (this layer never imports torch).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError


@dataclass(frozen=True)
class Precision:
    name: str          # canonical: fp64, fp32, fp16, bf16
    numpy: str | None  # NumPy dtype name (None: NumPy has no bfloat16)
    torch: str         # attribute of the torch module
    c: str             # C/CUDA type
    bits: int


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp64", "float64", "float64", "double", 64),
    Precision("fp32", "float32", "float32", "float", 32),
    Precision("fp16", "float16", "float16", "__half", 16),
    Precision("bf16", None, "bfloat16", "__nv_bfloat16", 16),
)}
_ALIASES = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "double": "fp64",
            "float": "fp32", "half": "fp16"}


def precision(name, allowed=None) -> Precision:
    """The :class:`Precision` called ``name`` (canonical or NumPy spelling); ``allowed`` restricts the choice.

    An unknown or disallowed name raises ``InvalidInputError`` listing the valid ones.
    """
    if isinstance(name, Precision):
        p = name
    else:
        key = _ALIASES.get(str(name), str(name))
        if key not in PRECISIONS:
            raise InvalidInputError(f"unknown precision {name!r}; valid: {list(allowed or PRECISIONS)}")
        p = PRECISIONS[key]
    if allowed is not None and p.name not in [precision(a).name for a in allowed]:
        raise InvalidInputError(f"precision {name!r} is not available here; valid: {list(allowed)}")
    return p


def canonical(name) -> str:
    """``"float32"`` -> ``"fp32"``; canonical names are returned unchanged."""
    return precision(name).name


def numpy_dtype(name):
    """The NumPy dtype of a precision (bf16 has none: InvalidInputError)."""
    import numpy as np

    p = precision(name)
    if p.numpy is None:
        raise InvalidInputError(f"precision {p.name!r} has no NumPy dtype")
    return np.dtype(p.numpy)


def numpy_name(name) -> str:
    """The NumPy spelling of a precision (``fp32`` -> ``float32``)."""
    return numpy_dtype(name).name
