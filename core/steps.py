"""Time grids made of whole steps: the one check that a span is a whole number of a step."""
from __future__ import annotations

import math

from .errors import InvalidInputError


def whole_steps(value: float, unit: float, what: str, minimum: int = 1) -> int:
    """``value / unit`` when it is a whole number (to 1e-9 relative) of at least ``minimum``, else
    ``InvalidInputError`` naming ``what`` (e.g. ``"config key problems.C.t_end"``)."""
    for name, v in (("value", value), ("step", unit)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise InvalidInputError(f"{what}: {name} must be a number, got {v!r}")
    value, unit = float(value), float(unit)
    if not (math.isfinite(value) and math.isfinite(unit)) or unit <= 0:
        raise InvalidInputError(f"{what}: need a finite span and a positive step, got {value} and {unit}")
    n = round(value / unit)
    if n < minimum or abs(n * unit - value) > 1e-9 * max(1.0, abs(value)):
        raise InvalidInputError(f"{what}: {value:g} is not a whole number of steps of {unit:g}"
                                f"{'' if minimum <= 1 else f' (at least {minimum})'}")
    return int(n)


def divides(n_steps: int, parts: int, what: str) -> int:
    """``n_steps // parts`` when ``parts`` divides ``n_steps``, else ``InvalidInputError`` naming ``what``."""
    if parts < 1 or n_steps % parts:
        raise InvalidInputError(f"{what}: {n_steps} steps do not split into {parts} equal parts")
    return n_steps // parts
