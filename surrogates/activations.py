"""The hidden-layer activations: one table of each one's definition and of its spelling in every implementation.

Per activation (by the name the configuration uses, ``hidden: [[SiLU, 64], ...]``):

* ``f``, ``df``, ``d2f``: the definition, its first and second derivative, as float64 NumPy functions (the
  reference every implementation is tested against; ReLU's kinks have derivative 0, Softplus is ``z`` above
  torch's threshold 20 and its derivatives there 1 and 0, as torch's);
* ``torch``: the ``torch.nn`` class (default arguments) that :class:`~surrogates.network.MLP` builds;
* ``cpp``: the ``enum Act`` member (and its value, ``code``) of the compiled CPU steps (``cpu_step.cpp``, written
  by hand for speed: tests/test_activations.py checks it against ``f``, ``df`` and ``d2f``);
* ``triton_f``, ``triton_df``, ``triton_d2f``: Triton source in float32, the expression of ``f(z)`` and the
  function bodies of ``f'(z)`` given ``z`` and ``a = f(z)`` and of ``f''(z)`` given ``z``, ``a`` and
  ``d = f'(z)``; the Triton training steps (:mod:`training.triton_step`) and the inference kernels
  (:mod:`inference.kernels.triton_mlp`) are generated from them, with :data:`TRITON_HELPERS`;
* ``triton_half``: where the inference kernel has one, the body of the half-precision form on the hardware
  tanh (its helpers ``_tanh_approx`` and ``_fast_type``), given ``z`` and the type ``DT``.

The training engine (:mod:`training.engine`) computes the same functions with torch operators chosen for
speed (tanh as ``2 sigmoid(2z) - 1``, fused backward kernels); it too is tested against this table.
Nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SOFTPLUS_THRESHOLD = 20.0   # torch.nn.Softplus(): z itself above it
LEAKY_SLOPE = 0.01          # torch.nn.LeakyReLU()

# Triton source the table's Triton spellings call (each generated module decorates its own copy): float32
# activations from exp, without overflow
TRITON_HELPERS = '''
@triton.jit
def _tanh_exact(z):
    e = tl.exp(-2.0 * tl.abs(z))  # in (0, 1]: no overflow
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0.0, -t, t)


@triton.jit
def _sigmoid_exact(z):
    return 1.0 / (1.0 + tl.exp(-z))
'''


@dataclass(frozen=True)
class Activation:
    name: str
    torch: str
    cpp: str
    code: int
    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    d2f: Callable[[np.ndarray], np.ndarray]
    triton_f: str
    triton_df: str
    triton_d2f: str
    triton_half: str | None = None


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _phi(z):
    return np.exp(-0.5 * z * z) * INV_SQRT_2PI


def _cdf(z):
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _softplus(z):
    with np.errstate(over="ignore"):
        return np.where(z > SOFTPLUS_THRESHOLD, z, np.log1p(np.exp(np.minimum(z, SOFTPLUS_THRESHOLD))))


TABLE: dict[str, Activation] = {a.name: a for a in (
    Activation(
        "Sigmoid", "Sigmoid", "SIGMOID", 1,
        f=_sig,
        df=lambda z: _sig(z) * (1.0 - _sig(z)),
        d2f=lambda z: _sig(z) * (1.0 - _sig(z)) * (1.0 - 2.0 * _sig(z)),
        triton_f="_sigmoid_exact(z)",
        triton_df="return a * (1.0 - a)",
        triton_d2f="return d * (1.0 - 2.0 * a)",
        triton_half="return (0.5 * _tanh_approx(0.5 * _fast_type(z, DT)) + 0.5).to(DT)",
    ),
    Activation(
        "Tanh", "Tanh", "TANH", 2,
        f=np.tanh,
        df=lambda z: 1.0 - np.tanh(z) ** 2,
        d2f=lambda z: -2.0 * np.tanh(z) * (1.0 - np.tanh(z) ** 2),
        triton_f="_tanh_exact(z)",
        triton_df="return 1.0 - a * a",
        triton_d2f="return -2.0 * a * d",
        triton_half="return _tanh_approx(_fast_type(z, DT)).to(DT)",
    ),
    Activation(
        "SiLU", "SiLU", "SILU", 3,
        f=lambda z: z * _sig(z),
        df=lambda z: _sig(z) * (1.0 + z * (1.0 - _sig(z))),
        d2f=lambda z: _sig(z) * (1.0 - _sig(z)) * (2.0 + z * (1.0 - 2.0 * _sig(z))),
        triton_f="z * _sigmoid_exact(z)",
        triton_df="s = _sigmoid_exact(z)\nreturn s * (1.0 + z * (1.0 - s))",
        triton_d2f="s = _sigmoid_exact(z)\nreturn s * (1.0 - s) * (2.0 + z - 2.0 * a)",
        triton_half="h = 0.5 * _fast_type(z, DT)\nreturn (h * _tanh_approx(h) + h).to(DT)  # x sigmoid(x) with x = 2h",
    ),
    Activation(
        "ReLU", "ReLU", "RELU", 4,
        f=lambda z: np.maximum(z, 0.0),
        df=lambda z: np.where(z > 0.0, 1.0, 0.0),
        d2f=lambda z: np.zeros_like(z),
        triton_f="tl.maximum(z, 0.0)",
        triton_df="return tl.where(z > 0.0, 1.0, 0.0)",
        triton_d2f="return z * 0.0",
    ),
    Activation(
        "LeakyReLU", "LeakyReLU", "LEAKY_RELU", 5,
        f=lambda z: np.where(z > 0.0, z, LEAKY_SLOPE * z),
        df=lambda z: np.where(z > 0.0, 1.0, LEAKY_SLOPE),
        d2f=lambda z: np.zeros_like(z),
        triton_f="tl.where(z > 0.0, z, 0.01 * z)",
        triton_df="return tl.where(z > 0.0, 1.0, 0.01)",
        triton_d2f="return z * 0.0",
    ),
    Activation(
        "ELU", "ELU", "ELU", 6,
        f=lambda z: np.where(z > 0.0, z, np.expm1(np.minimum(z, 0.0))),
        df=lambda z: np.where(z > 0.0, 1.0, np.exp(np.minimum(z, 0.0))),
        d2f=lambda z: np.where(z > 0.0, 0.0, np.exp(np.minimum(z, 0.0))),
        triton_f="tl.where(z > 0.0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)",
        triton_df="return tl.where(z > 0.0, 1.0, a + 1.0)",
        triton_d2f="return tl.where(z > 0.0, 0.0, a + 1.0)",
    ),
    Activation(
        "GELU", "GELU", "GELU", 7,  # the exact (erf) form, as nn.GELU()
        f=lambda z: z * _cdf(z),
        df=lambda z: _cdf(z) + z * _phi(z),
        d2f=lambda z: _phi(z) * (2.0 - z * z),
        triton_f="0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))",
        triton_df="return 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)",
        triton_d2f="return 0.3989422804014327 * tl.exp(-0.5 * z * z) * (2.0 - z * z)",
    ),
    Activation(
        "Softplus", "Softplus", "SOFTPLUS", 8,  # beta 1, threshold 20, as nn.Softplus()
        f=_softplus,
        df=lambda z: np.where(z > SOFTPLUS_THRESHOLD, 1.0, _sig(z)),
        d2f=lambda z: np.where(z > SOFTPLUS_THRESHOLD, 0.0, _sig(z) * (1.0 - _sig(z))),
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): no overflow
        triton_f="tl.where(z > 20.0, z, tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))))",
        triton_df="return tl.where(z > 20.0, 1.0, _sigmoid_exact(z))",
        triton_d2f="s = _sigmoid_exact(z)\nreturn tl.where(z > 20.0, 0.0, s * (1.0 - s))",
    ),
)}

NAMES = tuple(TABLE)


def get(name: str) -> Activation:
    """The table's row of ``name``; an unknown name lists the valid ones."""
    from core.errors import InvalidInputError

    try:
        return TABLE[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown activation {name!r}; valid: {sorted(TABLE)}") from None


def _body(text: str, indent: str = "    ") -> str:
    return "\n".join(indent + line for line in text.splitlines())


def triton_source() -> str:
    """The Triton functions ``_f_NAME(z)``, ``_d_NAME(z, a)`` and ``_dd_NAME(z, a, d)`` of every
    activation (they call :data:`TRITON_HELPERS`)."""
    out = []
    for a in TABLE.values():
        out += [f"@triton.jit\ndef _f_{a.name}(z):\n    return {a.triton_f}\n",
                f"@triton.jit\ndef _d_{a.name}(z, a):\n{_body(a.triton_df)}\n",
                f"@triton.jit\ndef _dd_{a.name}(z, a, d):\n{_body(a.triton_d2f)}\n"]
    return "\n\n".join(out)
