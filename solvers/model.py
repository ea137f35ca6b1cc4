"""One cell-model definition, and every right-hand side derived from it.

A :class:`CellModel` is declared once (state names, parameters with defaults and units, and the
right-hand side as SymPy-parsable text). From that single declaration this module derives

* a NumPy right-hand side (:meth:`CellModel.numpy_rhs`), vectorised over cells;
* a differentiable torch right-hand side (:meth:`CellModel.torch_rhs`), for physics-informed losses;
* the scalar statements that the compiled CPU kernel (Numba) inlines (:meth:`CellModel.python_statements`);
* C statements for the CUDA kernel (:meth:`CellModel.c_statements`), with ``expf``-style functions in
  single precision.

Nobody types a right-hand side twice: every backend prints the same expression tree with the small
printer below, so they evaluate the same operations in the same order.
"""
from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
import sympy as sp
from sympy.core.function import ArgumentIndexError
from sympy.parsing.sympy_parser import parse_expr

from core.errors import InvalidInputError

__all__ = ["CellModel", "Parameter", "State", "vtrap", "DTYPES"]

DTYPES = ("float32", "float64")

# Series branch of vtrap: z / (1 - exp(-z)) = 1 + z/2 + z^2/12 - z^4/720 + ...; for |z| < 1e-4 the
# truncation error (z^4/720 < 1.4e-19) is below float64 resolution.
VTRAP_SERIES_BELOW = 1e-4


class vtrap(sp.Function):
    """``vtrap(x, k) = x / (1 - exp(-x / k))``, the Hodgkin-Huxley rate form with its removable
    singularity at ``x = 0`` (value ``k``) handled: a Taylor series for ``|x/k| < 1e-4``, and
    ``x / -expm1(-x/k)`` elsewhere, which keeps full precision right next to the singularity."""

    nargs = 2

    def _eval_rewrite_as_exp(self, x, k, **kwargs):
        return x / (1 - sp.exp(-x / k))

    def fdiff(self, argindex=1):
        """d/dx (the Jacobian of a right-hand side needs it); the rate's scale ``k`` is a constant."""
        if argindex != 1:
            raise ArgumentIndexError(self, argindex)
        return vtrap_dx(*self.args)


# Below this |x/k| the derivative of vtrap is its series: larger than vtrap's own switch, because the closed
# form's numerator cancels (relative error ~ 2 eps / |x/k|: 2e-14 in float64, 1e-5 in float32 at the switch).
VTRAP_DX_SERIES_BELOW = 1e-2


class vtrap_dx(sp.Function):
    """``d/dx vtrap(x, k) = h'(x/k)`` with ``h(z) = z / (1 - exp(-z))``: ``(1 - exp(-z)(1 + z)) / (1 - exp(-z))^2``,
    its removable singularity at ``z = 0`` (value 1/2) handled by the series ``1/2 + z/6 - z^3/180`` below
    :data:`VTRAP_DX_SERIES_BELOW` (truncation ``z^5/5040``)."""

    nargs = 2


# Functions a model may use, with their names in Python array/scalar code and in C (double, float).
_FUNCTIONS = {
    sp.exp: ("exp", "exp", "expf"),
    sp.log: ("log", "log", "logf"),
    sp.sqrt: ("sqrt", "sqrt", "sqrtf"),
    sp.tanh: ("tanh", "tanh", "tanhf"),
    sp.sin: ("sin", "sin", "sinf"),
    sp.cos: ("cos", "cos", "cosf"),
    sp.tan: ("tan", "tan", "tanf"),
    sp.asin: ("asin", "asin", "asinf"),
    sp.acos: ("acos", "acos", "acosf"),
    sp.atan: ("atan", "atan", "atanf"),
    sp.floor: ("floor", "floor", "floorf"),
    sp.ceiling: ("ceil", "ceil", "ceilf"),
}
_ALLOWED_CALLS = {"exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "tanh": sp.tanh, "vtrap": vtrap}
# Conditionals and the further functions (an imported model's ``if``/``piecewise``, trigonometry, rounding):
# ``Piecewise((value, condition), ..., (otherwise, True))`` with conditions built from ``Lt``, ``Le``, ``Gt``,
# ``Ge``, ``Eq``, ``Ne`` (or ``<``, ``<=``, ...), ``And``, ``Or`` and ``Not``.
_ALLOWED_CALLS.update({
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "asin": sp.asin, "acos": sp.acos, "atan": sp.atan,
    "floor": sp.floor, "ceiling": sp.ceiling, "Abs": sp.Abs, "Piecewise": sp.Piecewise,
})
_CONDITIONS = {"Lt": sp.Lt, "Le": sp.Le, "Gt": sp.Gt, "Ge": sp.Ge, "Eq": sp.Eq, "Ne": sp.Ne,
               "And": sp.And, "Or": sp.Or, "Not": sp.Not, "True": sp.true, "False": sp.false}
_RELATIONS = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">", sp.GreaterThan: ">=",
              sp.Equality: "==", sp.Unequality: "!="}
_PARSER_GLOBALS = {k: getattr(sp, k) for k in ("Integer", "Float", "Rational", "Symbol", "Function", "Mul", "Add", "Pow")}
_C_KEYWORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum", "extern",
    "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return", "short", "signed",
    "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
}
_RESERVED = ({"F", "xp", "math", "np", "torch", "vtrap", "exp", "log", "sqrt", "tanh", "pow", "dt", "abs"}
             | set(_ALLOWED_CALLS) | set(_CONDITIONS))
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# A qualified name (an imported model's ``membrane.V``): identifiers joined by dots; in generated code
# each dot becomes ``__`` (``membrane__V``).
_QUALIFIED = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")


def identifier(name: str) -> str:
    """The identifier that stands for the variable ``name`` in expressions and generated code: the name
    itself, with the dots of a qualified name (``membrane.V``) written ``__`` (``membrane__V``)."""
    return name.replace(".", "__")


@dataclass(frozen=True)
class State:
    """A state variable: its default initial value and its units."""

    initial: float
    units: str
    description: str = ""


@dataclass(frozen=True)
class Parameter:
    """A model parameter: its default value and its units."""

    default: float
    units: str
    description: str = ""


class _Printer:
    """Prints a (possibly unevaluated) SymPy expression as Python or C source.

    target ``"python"``: literals are wrapped as ``F(value)`` and functions called as ``xp.name``; the
    same text runs on NumPy arrays (``xp = numpy``), torch tensors (``xp = torch``) and Numba scalars
    (``xp = math``), with ``F`` the dtype constructor. target ``"c"``: C99 with ``f``-suffixed literals
    and ``expf``-style functions when ``dtype == "float32"``. Everything is fully parenthesised.
    """

    def __init__(self, target: str, dtype: str = "float64"):
        self.target, self.single = target, dtype == "float32"

    def literal(self, value: float) -> str:
        text = repr(float(value))
        if self.target == "python":
            return f"F({text})"
        return f"({text}f)" if self.single else f"({text})"

    def __call__(self, e: sp.Basic) -> str:
        if isinstance(e, sp.Symbol):
            return e.name
        if isinstance(e, sp.Number):
            return self.literal(float(e))
        if isinstance(e, sp.Add):
            return "(" + " + ".join(self(a) for a in e.args) + ")"
        if isinstance(e, sp.Mul):
            return self._mul(e)
        if isinstance(e, sp.Pow):
            return self._pow(e)
        if isinstance(e, sp.Function) and not e.free_symbols and not isinstance(e, sp.Piecewise):
            return self.literal(float(e.evalf(30)))  # log(10): a number (torch has no log of a float)
        if isinstance(e, vtrap):
            x, k = (self(a) for a in e.args)
            if self.target == "python":
                return f"_vtrap({x}, {k})"
            return f"vtrap{'f' if self.single else ''}({x}, {k})"
        if isinstance(e, vtrap_dx) and self.target == "python":  # Jacobians are generated for Python only
            x, k = (self(a) for a in e.args)
            return f"_vtrap_dx({x}, {k})"
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e.args)
        if isinstance(e, (sp.core.relational.Relational, sp.And, sp.Or, sp.Not)):  # a condition shared by cse
            return self.condition(e)
        if isinstance(e, sp.Abs):
            arg = self(e.args[0])
            return f"abs({arg})" if self.target == "python" else f"fabs{'f' if self.single else ''}({arg})"
        for fn, (py, c64, c32) in _FUNCTIONS.items():
            if isinstance(fn, type) and isinstance(e, fn):  # sp.sqrt is no class: a square root is a Pow
                arg = self(e.args[0])
                if self.target == "python":
                    return f"xp.{py}({arg})"
                return f"{c32 if self.single else c64}({arg})"
        raise InvalidInputError(f"cannot generate code for {type(e).__name__} in {e}")

    def _piecewise(self, pieces) -> str:
        """``_where(c, a, b)`` in Python (both branches evaluated, as on arrays), ``(c ? a : b)`` in C."""
        (value, cond), rest = pieces[0], pieces[1:]
        if cond == sp.true or not rest:
            if cond != sp.true:
                raise InvalidInputError(f"cannot generate code for a piecewise without an otherwise branch: {pieces}")
            return self(value)
        c, a, b = self.condition(cond), self(value), self._piecewise(rest)
        return f"_where({c}, {a}, {b})" if self.target == "python" else f"({c} ? {a} : {b})"

    def condition(self, e, negate: bool = False) -> str:
        """A condition (relations joined by and, or, not), its negations pushed onto the relations (no
        ``not`` is printed: ``~`` on a Python bool is not its negation)."""
        if isinstance(e, sp.Not):
            return self.condition(e.args[0], not negate)
        if isinstance(e, (sp.And, sp.Or)):
            is_and = isinstance(e, sp.And) != negate
            op = (" & " if is_and else " | ") if self.target == "python" else (" && " if is_and else " || ")
            return "(" + op.join(self.condition(a, negate) for a in e.args) + ")"
        if isinstance(e, sp.core.relational.Relational) and type(e) in _RELATIONS:
            rel = e.negated if negate else e
            return f"({self(rel.lhs)} {_RELATIONS[type(rel)]} {self(rel.rhs)})"
        if isinstance(e, sp.Symbol):  # a condition shared by cse
            if not negate:
                return e.name
            return f"({e.name} == False)" if self.target == "python" else f"(!{e.name})"
        if e in (sp.true, sp.false):
            value = (e == sp.true) != negate
            return ("True" if value else "False") if self.target == "python" else ("1" if value else "0")
        raise InvalidInputError(f"cannot generate code for the condition {e}")

    def _mul(self, e: sp.Mul) -> str:
        num, den, negate = [], [], False
        for a in e.args:
            if a == -1:
                negate = not negate
            elif isinstance(a, sp.Pow) and a.exp.is_Integer and a.exp < 0:
                den.append(self._power(a.base, -int(a.exp)))
            else:
                num.append(self(a))
        text = "*".join(num) if num else self.literal(1.0)
        if den:
            text = f"{text}/{den[0] if len(den) == 1 else '(' + '*'.join(den) + ')'}"
        return f"(-({text}))" if negate else f"({text})"

    def _power(self, base: sp.Basic, n: int) -> str:
        b = self(base)
        return b if n == 1 else "(" + "*".join([b] * n) + ")"

    def _pow(self, e: sp.Pow) -> str:
        base, ex = e.args
        if ex.is_Integer and ex > 0:
            return self._power(base, int(ex))
        if ex.is_Integer and ex < 0:
            return f"({self.literal(1.0)}/{self._power(base, -int(ex))})"
        if ex == sp.Rational(1, 2):  # sqrt(x) is this Pow
            arg = self(base)
            return f"xp.sqrt({arg})" if self.target == "python" else f"sqrt{'f' if self.single else ''}({arg})"
        if self.target == "python":
            return f"({self(base)}**{self(ex)})"
        return f"pow{'f' if self.single else ''}({self(base)}, {self(ex)})"


def _vtrap_array(xp, F):
    """vtrap for NumPy arrays or torch tensors (both branches are computed; gradients stay finite)."""

    def _vtrap(x, k):
        z = x / k
        small = xp.abs(z) < F(VTRAP_SERIES_BELOW)
        z_safe = xp.where(small, F(1.0), z)
        series = k * (F(1.0) + z * (F(0.5) + z * F(1.0 / 12.0)))
        return xp.where(small, series, x / -xp.expm1(-z_safe))

    return _vtrap


def _vtrap_dx_array(xp, F):
    """d/dx vtrap for NumPy arrays or torch tensors (series near the singularity; see :class:`vtrap_dx`)."""

    def _vtrap_dx(x, k):
        z = x / k
        small = xp.abs(z) < F(VTRAP_DX_SERIES_BELOW)
        z_safe = xp.where(small, F(1.0), z)
        e = -xp.expm1(-z_safe)  # 1 - exp(-z), without cancellation
        series = F(0.5) + z * (F(1.0 / 6.0) - z * z * F(1.0 / 180.0))
        return xp.where(small, series, (e - z_safe * (F(1.0) - e)) / (e * e))

    return _vtrap_dx


def _vtrap_scalar(F):
    """vtrap for scalars (Numba compiles it with the kernel)."""

    def _vtrap(x, k):
        z = x / k
        if abs(z) < F(VTRAP_SERIES_BELOW):
            return k * (F(1.0) + z * (F(0.5) + z * F(1.0 / 12.0)))
        return x / -math.expm1(-z)

    return _vtrap


def _where_array(xp, dtype=None):
    """``_where(condition, a, b)`` for NumPy arrays or torch tensors (of ``dtype``: where both branches are
    plain floats, torch would otherwise give its default dtype)."""
    if xp is np:
        return np.where

    def _where(c, a, b):
        c = xp.as_tensor(c)  # a condition on parameters alone may be a plain bool
        if not (xp.is_tensor(a) or xp.is_tensor(b)):
            a = xp.tensor(a, dtype=dtype, device=c.device)
        return xp.where(c, a, b)

    return _where


NUMBA_WHERE_SOURCE = (
    "@njit(cache=True, inline='always')\n"
    "def _where(c, a, b):\n"
    "    return a if c else b"
)


def numba_vtrap_source(derivative: bool = False) -> str:
    """Numba source of the scalar vtrap helper ``_vtrap`` (and, with ``derivative``, of ``_vtrap_dx``, its
    derivative in x, with the series of :class:`vtrap_dx` near the singularity), for generated kernels that
    import ``math`` and ``njit`` and define ``F``, their float type."""
    src = (
        "@njit(cache=True, inline='always')\n"
        "def _vtrap(x, k):\n"
        "    z = x / k\n"
        f"    if abs(z) < F({VTRAP_SERIES_BELOW!r}):\n"
        "        return k * (F(1.0) + z * (F(0.5) + z * F(1.0 / 12.0)))\n"
        "    return x / -math.expm1(-z)"
    )
    if derivative:
        src += (
            "\n\n\n@njit(cache=True, inline='always')\n"
            "def _vtrap_dx(x, k):\n"
            "    z = x / k\n"
            f"    if abs(z) < F({VTRAP_DX_SERIES_BELOW!r}):\n"
            "        return F(0.5) + z * (F(1.0 / 6.0) - z * z * F(1.0 / 180.0))\n"
            "    e = -math.expm1(-z)\n"
            "    return (e - z * (F(1.0) - e)) / (e * e)"
        )
    return src


def c_vtrap_source(dtype: str, qualifier: str = "static inline") -> str:
    """C source of the vtrap helper for ``dtype`` (``vtrapf`` in single precision)."""
    p = _Printer("c", dtype)
    t, s = ("float", "f") if dtype == "float32" else ("double", "")
    return (
        f"{qualifier} {t} vtrap{s}(const {t} x, const {t} k) {{\n"
        f"    const {t} z = x / k;\n"
        f"    return fabs{s}(z) < {p.literal(VTRAP_SERIES_BELOW)}\n"
        f"        ? k * ({p.literal(1.0)} + z * ({p.literal(0.5)} + z * {p.literal(1.0 / 12.0)}))\n"
        f"        : x / -expm1{s}(-z);\n"
        "}\n"
    )


class CellModel:
    """A single-cell ODE model ``dy/dt = f(y, params)``, declared once.

    Parameters
    ----------
    name, description
        Registry name and one line of text.
    states
        Ordered mapping of state name to :class:`State`; the order is the column order of every array.
    parameters
        Ordered mapping of parameter name to :class:`Parameter`.
    rhs
        For each state, its time derivative as text (SymPy syntax; functions ``exp``, ``log``, ``sqrt``,
        ``tanh`` and ``vtrap``). May use states, parameters and intermediates.
    intermediates
        Ordered named sub-expressions (rate functions, currents), each may use the ones before it.
    time_units
        Units of time (``"ms"``; ``"1"`` for dimensionless).
    typical_box
        ``name -> (lo, hi)`` for every state and for the parameters that vary: a box of typical states (and
        parameter values) the model's own tests draw from (:meth:`sample_typical`), so that a new model is
        tested by every backend and derivative check with no edit to the tests.
    time_variable
        The name that stands for time in the expressions (a model paced by a stimulus protocol depends on
        time); ``None`` (the default) for a model whose right-hand side does not depend on time.
    default_dt
        The forward-Euler step at which the model's solution was checked to be accurate (``None``: not known).

    Names are identifiers (letters, digits and ``_``) or qualified names (``membrane.V``, as an imported
    model's); in the expression text and in generated code a qualified name is written with ``__`` for
    each dot (``membrane__V``, see :func:`identifier`), everywhere else (arrays' columns, parameters,
    configurations) by its name.
    """

    def __init__(
        self,
        name: str,
        description: str,
        states: Mapping[str, State],
        parameters: Mapping[str, Parameter],
        rhs: Mapping[str, str],
        intermediates: Mapping[str, str] | None = None,
        time_units: str = "1",
        reference: str = "",
        typical_box: Mapping[str, tuple[float, float]] | None = None,
        time_variable: str | None = None,
        default_dt: float | None = None,
    ):
        intermediates = dict(intermediates or {})
        self.name, self.description, self.time_units, self.reference = name, description, time_units, reference
        self.time_variable, self.default_dt = time_variable, default_dt
        names = [*states, *parameters, *intermediates, *([time_variable] if time_variable is not None else [])]
        for n in names:
            i = identifier(n) if isinstance(n, str) else ""
            if (not (_NAME.match(n) or _QUALIFIED.match(n)) or i.startswith("d_") or keyword.iskeyword(i)
                    or i in _C_KEYWORDS | _RESERVED):
                raise InvalidInputError(
                    f"model {name!r}: {n!r} cannot be a variable name (use letters, digits and '_', starting with a "
                    f"letter, or such names joined by dots, not 'd_...', not a Python or C keyword, not one of "
                    f"{sorted(_RESERVED)})"
                )
        idents = [identifier(n) for n in names]
        dup = {n for n, i in zip(names, idents) if idents.count(i) > 1}
        if dup:
            raise InvalidInputError(f"model {name!r}: names used twice (a dot counting as '__'): {sorted(dup)}")
        self.identifiers = MappingProxyType(dict(zip(names, idents)))
        if list(rhs) != list(states):
            raise InvalidInputError(
                f"model {name!r}: rhs must give one expression per state, in state order {list(states)}; got {list(rhs)}"
            )
        self.states = MappingProxyType(dict(states))
        self.parameters = MappingProxyType(dict(parameters))
        symbols = {i: sp.Symbol(i, real=True) for i in idents}
        known = {identifier(n) for n in [*states, *parameters, *([time_variable] if time_variable else [])]}
        self.intermediates: dict[str, sp.Expr] = {}
        for n, text in intermediates.items():
            self.intermediates[n] = self._parse(n, text, symbols, known)
            known.add(identifier(n))
        self.rhs: dict[str, sp.Expr] = {s: self._parse(f"d{s}/dt", rhs[s], symbols, known) for s in states}
        self.typical_box = None if typical_box is None else self._check_box(typical_box)
        self._cache: dict = {}

    def _check_box(self, box: Mapping) -> MappingProxyType:
        unknown = sorted(set(box) - set(self.states) - set(self.parameters))
        missing = [s for s in self.states if s not in box]
        if unknown or missing:
            raise InvalidInputError(f"model {self.name!r}: typical_box needs every state {list(self.states)} and "
                                    f"may add parameters {list(self.parameters)}; "
                                    + (f"unknown: {unknown}" if unknown else f"missing: {missing}"))
        out = {}
        for n, r in box.items():
            lo, hi = (float(v) for v in r)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise InvalidInputError(f"model {self.name!r}: typical_box[{n!r}] = {tuple(r)} is not a range lo <= hi")
            out[n] = (lo, hi)
        return MappingProxyType(out)

    def _parse(self, what: str, text: str, symbols: dict, known: set) -> sp.Expr:
        local = {n: symbols[n] for n in symbols} | _ALLOWED_CALLS | _CONDITIONS
        try:
            expr = parse_expr(text, local_dict=local, global_dict=dict(_PARSER_GLOBALS), evaluate=False)
        except Exception as exc:  # SymPy raises SyntaxError, TokenError, TypeError, ...
            raise InvalidInputError(f"model {self.name!r}: cannot parse {what} = {text!r}: {exc}") from exc
        unknown = {s.name for s in expr.free_symbols} - known
        calls = {type(f).__name__ for f in expr.atoms(sp.Function)} - set(_ALLOWED_CALLS)
        if unknown or calls:
            raise InvalidInputError(
                f"model {self.name!r}: {what} uses unknown names {sorted(unknown | calls)}; known: {sorted(known)}, "
                f"functions: {sorted(_ALLOWED_CALLS)}"
            )
        return expr

    # ------------------------------------------------------------------ metadata
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.states)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.parameters)

    @property
    def n_states(self) -> int:
        return len(self.states)

    def ident(self, name: str) -> str:
        """The identifier of the variable ``name`` in expressions and generated code (see :func:`identifier`)."""
        return self.identifiers[name]

    @property
    def time_ident(self) -> str | None:
        """The identifier of time in the generated code when the right-hand side depends on time, else ``None``."""
        if self.time_variable is None:
            return None
        key = "time_ident"
        if key not in self._cache:
            t = self.ident(self.time_variable)
            used = any(t in {s.name for s in e.free_symbols} for e in [*self.intermediates.values(), *self.rhs.values()])
            self._cache[key] = t if used else None
        return self._cache[key]

    def uses_where(self) -> bool:
        """Whether the right-hand side has a conditional (the generated code then needs ``_where``)."""
        return any(e.has(sp.Piecewise) for e in [*self.intermediates.values(), *self.rhs.values()])

    @property
    def defaults(self) -> dict[str, float]:
        """Default parameter values."""
        return {n: p.default for n, p in self.parameters.items()}

    def initial_state(self, n_cells: int = 1, dtype: str = "float64") -> np.ndarray:
        """The default initial state, repeated for ``n_cells`` cells: shape ``(n_cells, n_states)``."""
        return np.tile(np.array([s.initial for s in self.states.values()], dtype=dtype), (n_cells, 1))

    def _typical(self) -> Mapping[str, tuple[float, float]]:
        if self.typical_box is None:
            raise InvalidInputError(f"model {self.name!r} declares no typical_box (CellModel(..., typical_box=...)): "
                                    "its tests need a box of typical states")
        return self.typical_box

    def sample_typical(self, n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """``n_cells`` initial states and per-cell parameters drawn uniformly from :attr:`typical_box`
        (parameters not in it keep their defaults): ``(y0 (n_cells, n_states), {parameter: (n_cells,)})``."""
        box = self._typical()
        lo, hi = (np.array([box[s][i] for s in self.states]) for i in (0, 1))
        y0 = rng.uniform(lo, hi, size=(n_cells, self.n_states))
        return y0, {p: rng.uniform(*box[p], size=n_cells) for p in self.parameters if p in box}

    def typical_point(self) -> tuple[np.ndarray, dict]:
        """The middle of :attr:`typical_box`: one initial state ``(1, n_states)`` and its parameters."""
        mid = {n: (lo + hi) / 2 for n, (lo, hi) in self._typical().items()}
        return np.array([[mid[s] for s in self.states]]), {p: mid[p] for p in self.parameters if p in mid}

    def describe(self) -> dict:
        """A JSON-serialisable description (written next to every output the model produced)."""
        return {
            "name": self.name,
            "description": self.description,
            "time_units": self.time_units,
            **({"time_variable": self.time_variable} if self.time_variable is not None else {}),
            **({"default_dt": self.default_dt} if self.default_dt is not None else {}),
            "states": {n: {"initial": s.initial, "units": s.units} for n, s in self.states.items()},
            "parameters": {n: {"default": p.default, "units": p.units} for n, p in self.parameters.items()},
            "rhs": {n: str(e) for n, e in self.rhs.items()},
            "intermediates": {n: str(e) for n, e in self.intermediates.items()},
        }

    def __repr__(self) -> str:
        return f"CellModel({self.name!r}, states={list(self.states)}, parameters={list(self.parameters)})"

    # ------------------------------------------------------------------ code generation
    def uses_vtrap(self) -> bool:
        return any(e.has(vtrap) for e in [*self.intermediates.values(), *self.rhs.values()])

    def python_statements(self) -> list[str]:
        """Assignments computing ``d_<state>`` from states and parameters (Python syntax, see _Printer)."""
        p, i = _Printer("python"), self.identifiers
        out = [f"{i[n]} = {p(e)}" for n, e in self.intermediates.items()]
        return out + [f"d_{i[s]} = {p(e)}" for s, e in self.rhs.items()]

    def c_statements(self, dtype: str) -> list[str]:
        """C declarations computing ``d_<state>`` in ``dtype`` (``float`` with ``expf``-style calls for float32)."""
        _check_dtype(dtype)
        p, t, i = _Printer("c", dtype), "float" if dtype == "float32" else "double", self.identifiers
        out = [f"const {t} {i[n]} = {p(e)};" for n, e in self.intermediates.items()]
        return out + [f"const {t} d_{i[s]} = {p(e)};" for s, e in self.rhs.items()]

    def _arguments(self) -> list[str]:
        """The generated functions' arguments: states, parameters, and time where the model depends on it."""
        return [self.ident(n) for n in [*self.states, *self.parameters]] + ([self.time_ident] if self.time_ident else [])

    def python_rhs_source(self) -> str:
        """Source of ``rhs(<states>, <params>[, <time>]) -> tuple of derivatives``, for NumPy and torch
        namespaces (arguments by :meth:`ident`; the time only where the right-hand side depends on it)."""
        args = ", ".join(self._arguments())
        body = "".join(f"    {line}\n" for line in self.python_statements())
        ret = ", ".join(f"d_{self.ident(s)}" for s in self.states)
        return f"def rhs({args}):\n{body}    return ({ret},)\n"

    def _array_rhs(self, xp, F, dtype=None):
        key = ("array_rhs", xp.__name__, F, dtype)
        if key not in self._cache:
            ns = {"xp": xp, "F": F, "_vtrap": _vtrap_array(xp, F), "_where": _where_array(xp, dtype)}
            exec(compile(self.python_rhs_source(), f"<{self.name} rhs>", "exec"), ns)
            self._cache[key] = ns["rhs"]
        return self._cache[key]

    def _param_values(self, params: Mapping | None) -> dict:
        params = dict(params or {})
        unknown = set(params) - set(self.parameters)
        if unknown:
            raise InvalidInputError(
                f"model {self.name!r} has no parameter(s) {sorted(unknown)}; valid: {list(self.parameters)}"
            )
        return {n: params.get(n, p.default) for n, p in self.parameters.items()}

    def _functions_of_parameters(self) -> bool:
        """Whether a function (``exp``, ``log``, ...) is applied to parameters alone (``log(Na_o / Na_i)``): torch
        then needs the parameters as tensors."""
        key = "functions_of_parameters"
        if key not in self._cache:
            params = {sp.Symbol(self.ident(n), real=True) for n in self.parameters}
            self._cache[key] = any(
                isinstance(x, sp.Function) and not isinstance(x, (sp.Piecewise, sp.Abs)) and x.free_symbols <= params
                for e in [*self.intermediates.values(), *self.rhs.values()] for x in sp.preorder_traversal(e))
        return self._cache[key]

    def _torch_keywords(self, params: Mapping | None, t, y) -> dict:
        """:meth:`_keywords` for torch: the time (and, where a function takes parameters alone, the parameters)
        as tensors like ``y``."""
        import torch

        values = self._param_values(params)
        if self._functions_of_parameters():
            values = {n: v if torch.is_tensor(v) else torch.tensor(v, dtype=y.dtype, device=y.device)
                      for n, v in values.items()}
        if t is not None and not torch.is_tensor(t):
            t = torch.tensor(t, dtype=y.dtype, device=y.device)
        return self._keywords(values, t)

    def _keywords(self, values: Mapping, t) -> dict:
        """The generated functions' keyword arguments: parameter values by identifier, and the time where the
        right-hand side depends on it (then ``t`` must be given)."""
        out = {self.ident(n): v for n, v in values.items()}
        if self.time_ident is not None:
            if t is None:
                raise InvalidInputError(f"model {self.name!r} depends on time (through {self.time_variable!r}, its "
                                        "stimulus): give the time as the keyword t")
            out[self.time_ident] = t
        return out

    def numpy_rhs(self, y: np.ndarray, params: Mapping | None = None, t=None) -> np.ndarray:
        """``dy/dt`` for NumPy states ``y`` of shape ``(..., n_states)``; parameters are scalars or arrays
        broadcastable to ``y.shape[:-1]``, and so is the time ``t`` (needed only by a model that depends on
        time). Computed in ``y``'s floating dtype."""
        y = np.asarray(y)
        if y.dtype not in (np.float32, np.float64):
            y = y.astype(np.float64)
        F = y.dtype.type
        vals = {n: F(v) if np.isscalar(v) else np.asarray(v, dtype=y.dtype) for n, v in self._param_values(params).items()}
        if t is not None:
            t = F(t) if np.isscalar(t) else np.asarray(t, dtype=y.dtype)
        kw = self._keywords(vals, t)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d = self._array_rhs(np, F)(*(y[..., i] for i in range(self.n_states)), **kw)
        return np.stack(np.broadcast_arrays(*d), axis=-1)

    def torch_rhs(self, y, params: Mapping | None = None, t=None):
        """Differentiable ``dy/dt`` for a torch tensor ``y`` of shape ``(..., n_states)``. Parameters (and the
        time ``t``, needed only by a model that depends on time) are floats or tensors broadcastable to
        ``y.shape[:-1]``. Output on ``y``'s device, in its dtype."""
        import torch

        rhs = self._array_rhs(torch, float, y.dtype if self.uses_where() else None)
        d = rhs(*y.unbind(-1), **self._torch_keywords(params, t, y))
        return torch.stack(torch.broadcast_tensors(*d), dim=-1)


    # ------------------------------------------------------------------ the Jacobian, in closed form
    def jacobian_source(self) -> str | None:
        """Source of ``rhs_jac(<states>, <params>) -> (derivatives, Jacobian rows)``: the right-hand side as
        :meth:`python_rhs_source` computes it, and ``J[j][k] = d(dy_j/dt)/dy_k`` differentiated by SymPy
        (intermediates substituted, common subexpressions shared). ``None`` when SymPy cannot differentiate
        the right-hand side into code this module prints (then callers fall back to autograd)."""
        key = "jacobian_source"
        if key not in self._cache:
            self._cache[key] = self._make_jacobian_source()
        return self._cache[key]

    def _substituted(self):
        """``(rhs with the intermediates substituted, the state symbols)``: expressions in states and
        parameters only."""
        key = "substituted"
        if key not in self._cache:
            symbol = {s.name: s for e in [*self.intermediates.values(), *self.rhs.values()] for s in e.free_symbols}
            full = {}
            for s, e in self.rhs.items():
                for n in reversed(list(self.intermediates)):  # later intermediates may use earlier ones
                    if self.ident(n) in symbol:
                        e = e.subs(symbol[self.ident(n)], self.intermediates[n])
                full[s] = e
            self._cache[key] = full, [symbol.get(self.ident(s), sp.Symbol(self.ident(s), real=True)) for s in self.states]
        return self._cache[key]

    def affine_in(self, state: str) -> bool:
        """Whether ``d<state>/dt`` is affine in ``state`` itself (as a Hodgkin-Huxley gate's is:
        ``alpha(V) (1 - m) - beta(V) m``): with the other states held, it is then ``c0 + c1 * state``."""
        if state not in self.states:
            raise InvalidInputError(f"model {self.name!r} has no state {state!r}; states: {list(self.states)}")
        key = ("affine", state)
        if key not in self._cache:
            full, states = self._substituted()
            y = states[list(self.states).index(state)]
            d2 = sp.diff(full[state], y, 2)
            self._cache[key] = not d2.has(sp.Derivative, sp.Subs) and sp.simplify(d2) == 0
        return self._cache[key]

    def jacobian_statements(self) -> tuple[list[str], list[list[str]]] | None:
        """``(statements, J)``: Python assignments (see :class:`_Printer`) computing ``d_<state>`` and the
        Jacobian's entries from states and parameters, and ``J[j][k]``, the name of ``d(dy_j/dt)/dy_k``
        (SymPy's derivative, intermediates substituted, common subexpressions shared). ``None`` when SymPy
        cannot differentiate the right-hand side into code this module prints."""
        key = "jacobian_statements"
        if key not in self._cache:
            self._cache[key] = self._make_jacobian_statements()
        return self._cache[key]

    def _make_jacobian_statements(self):
        full, states = self._substituted()
        entries = [sp.diff(full[s], y) for s in self.states for y in states]
        if any(e.has(sp.Derivative, sp.Subs) for e in entries):
            return None  # e.g. a rate function differentiated in an argument it has no derivative for
        shared, reduced = sp.cse(entries, symbols=sp.numbered_symbols("_j"))
        p = _Printer("python")
        try:
            lines = [f"{x.name} = {p(e)}" for x, e in shared]
            lines += [f"_J{i} = {p(e)}" for i, e in enumerate(reduced)]
        except InvalidInputError:
            return None
        n = self.n_states
        return self.python_statements() + lines, [[f"_J{j * n + k}" for k in range(n)] for j in range(n)]

    def _make_jacobian_source(self) -> str | None:
        made = self.jacobian_statements()
        if made is None:
            return None
        lines, J = made
        args = ", ".join(self._arguments())
        body = "".join(f"    {line}\n" for line in lines)
        rows = ", ".join("(" + ", ".join(row) + ",)" for row in J)
        ret = ", ".join(f"d_{self.ident(s)}" for s in self.states)
        return f"def rhs_jac({args}):\n{body}    return ({ret},), ({rows},)\n"

    def has_jacobian(self) -> bool:
        return self.jacobian_source() is not None

    def torch_rhs_jacobian(self, y, params: Mapping | None = None, t=None):
        """``(f, J)`` for a torch tensor ``y`` of shape ``(..., n_states)`` (and the time ``t`` where the model
        depends on it): ``f`` exactly as :meth:`torch_rhs`
        and ``J[..., j, k] = df_j/dy_k`` in closed form (no autograd graph: a few elementwise operations, where
        autograd through the right-hand side costs tens of small operations and their bookkeeping)."""
        import torch

        src = self.jacobian_source()
        if src is None:
            raise InvalidInputError(f"model {self.name!r}: no closed-form Jacobian (SymPy cannot differentiate its "
                                    "right-hand side into printable code); use autograd on torch_rhs")
        key = ("jacobian", "torch", y.dtype)
        if key not in self._cache:
            ns = {"xp": torch, "F": float, "_vtrap": _vtrap_array(torch, float), "_vtrap_dx": _vtrap_dx_array(torch, float),
                  "_where": _where_array(torch, y.dtype)}
            exec(compile(src, f"<{self.name} jacobian>", "exec"), ns)
            self._cache[key] = ns["rhs_jac"]
        d, J = self._cache[key](*y.unbind(-1), **self._torch_keywords(params, t, y))
        shape = y.shape[:-1]

        def full(v):  # constant entries (plain floats) and parameter-only ones broadcast to the rows
            return v.expand(shape) if torch.is_tensor(v) else torch.full(shape, v, dtype=y.dtype, device=y.device)

        f = torch.stack(torch.broadcast_tensors(*d), dim=-1)
        jac = torch.stack([torch.stack([full(v) for v in row], dim=-1) for row in J], dim=-2)
        return f, jac


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; valid: {list(DTYPES)}")
