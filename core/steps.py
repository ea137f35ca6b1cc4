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


def keep_every(n_steps: int, n_kept: int, what: str) -> int:
    """Steps between kept states when ``n_kept`` states (t = 0 and the end among them; one state: the end
    alone) are kept over ``n_steps`` steps: ``n_steps // (K - 1)``, or ``n_steps`` for K = 1. Where K - 1 does
    not divide the steps, ``InvalidInputError`` naming ``what``, with the K that would do."""
    if n_kept < 1:
        raise InvalidInputError(f"{what}: K = {n_kept} kept states; at least 1")
    if n_kept == 1:
        return n_steps
    if n_steps % (n_kept - 1):
        raise InvalidInputError(f"{what}: K = {n_kept} kept states need K - 1 = {n_kept - 1} to divide the {n_steps} "
                                f"steps; valid K are 1 and d + 1 for each divisor d of {n_steps}")
    return n_steps // (n_kept - 1)
