"""Published cell models in the field's own formats: a Myokit ``.mmt`` file or a CellML file as a :class:`CellModel`.

Both are read by Myokit (``myokit.load`` for ``.mmt``, Myokit's CellML importer for ``.cellml``/``.xml``), then
translated variable by variable:

* the states, in Myokit's order, named by their qualified names (``membrane.V``), starting from the file's
  initial state;
* every literal constant (``ina.gNa = 16``) a parameter of the same qualified name, with its value as default;
* every other variable the derivatives need an intermediate (constants computed from others included), in an
  order in which each uses only the ones before it;
* the variable bound to ``time`` is the model's time; the one bound to ``pace`` is the file's regular pacing
  protocol (one periodic pulse: level, start, duration, period, number of pulses) written as a function of
  time, or 0 without a protocol (as in Myokit's simulator); a variable bound to ``diffusion_current`` is 0 (one
  cell, no neighbours).

``if`` and ``piecewise`` become SymPy ``Piecewise``, which every backend prints. What cannot be translated (a
derivative inside an equation, a protocol of several events, another binding the derivatives use, ...) is
refused with an :class:`~core.errors.InvalidInputError` naming the variable and the construct.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from core.errors import InvalidInputError

from .model import CellModel, Parameter, State, identifier

__all__ = ["MYOKIT_PREFIX", "SUFFIXES", "cvodes_trajectories", "from_myokit", "is_model_path", "load", "resolve",
           "simulator_unavailable"]

SUFFIXES = (".mmt", ".cellml", ".xml")

# The forward-Euler step (ms) at which each model that ships in Myokit's wheel (tests/data) was measured
# accurate against Myokit's own simulator (CVODES at tolerance 1e-10): benchmarks/reference/myokit_check.csv,
# made by `python -m benchmarks.myokit_check`. Keyed by the SHA-256 of the file; a file of any other content
# gives its step by a `default_dt: ...` line in its [[model]] header, else has none.
KNOWN_DEFAULT_DT: dict[str, float] = {
    "51096a0b6fc0118aabdfe94e186aefe56d2ffecf53949e3f628caa349b40d728": 0.01,  # lr-1991.mmt (Luo-Rudy 1991)
    "d04bd2733c9a2cd1bf4d6d073215b6951f7b305dca5d5e0e81b8cf69ced31eec": 0.02,  # beeler-1977-model.mmt
    "afc7dde4afa7d9c0737d6443c1496579cc6b5378c70b2863e9cf7b5439a146ad": 0.05,  # noble-1962.mmt
    "5860665e512c34b6c281b59842ff9518b36899a73679e768bfaca10a3aa3c8f3": 0.005,  # decker-2009.mmt
}

_CACHE: dict = {}


def is_model_path(model) -> bool:
    """Whether ``model`` names a model file (a str or Path ending in .mmt, .cellml or .xml, ``myokit:NAME``, or an
    existing file)."""
    if isinstance(model, Path):
        return True
    return isinstance(model, str) and (model.lower().endswith(SUFFIXES) or model.startswith(MYOKIT_PREFIX)
                                       or Path(model).is_file())


MYOKIT_PREFIX = "myokit:"


def resolve(path) -> Path:
    """The file ``path`` names: ``myokit:NAME`` is NAME among the models that ship inside Myokit's package (its
    tests/data folder: ``myokit:lr-1991.mmt``, ``myokit:formats/cellml/br-1977.cellml``), portable across
    installations; anything else is a path as given."""
    if isinstance(path, str) and path.startswith(MYOKIT_PREFIX):
        import myokit

        return Path(myokit.__file__).parent / "tests" / "data" / path[len(MYOKIT_PREFIX):]
    return Path(path)


def load(path) -> CellModel:
    """The :class:`CellModel` of the Myokit (``.mmt``) or CellML (``.cellml``, ``.xml``) file ``path`` (see
    :func:`resolve`), translated once per file content (a second call returns the same object)."""
    path = resolve(path)
    if not path.is_file():
        raise InvalidInputError(f"model file {str(path)!r} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = (str(path.resolve()), digest)
    if key not in _CACHE:
        model, protocol = _read(path)
        _CACHE[key] = from_myokit(model, protocol, name=_model_name(path), source=str(path),
                                  default_dt=KNOWN_DEFAULT_DT.get(digest))
    return _CACHE[key]


def _read(path: Path):
    """(myokit model, protocol or None) from the file."""
    import myokit
    import myokit.formats

    try:
        xml = path.suffix.lower() in (".cellml", ".xml") or (
            path.suffix.lower() != ".mmt" and path.read_bytes().lstrip()[:1] == b"<")  # another name: by content
        if not xml:
            model, protocol, _ = myokit.load(str(path))
            if model is None:
                raise InvalidInputError(f"model file {str(path)!r} has no [[model]] section")
            return model, protocol
        return myokit.formats.importer("cellml").model(str(path)), None
    except InvalidInputError:
        raise
    except Exception as exc:  # myokit.ParseError, myokit.formats.cellml.CellMLImportError, OSError, ...
        msg = " ".join(str(exc).split())
        raise InvalidInputError(f"model file {str(path)!r} cannot be read by Myokit: {type(exc).__name__}: {msg}") from None


def simulator_unavailable() -> str | None:
    """Why Myokit's simulator (CVODES, compiled against SUNDIALS) cannot run here, or ``None``."""
    try:
        import myokit
    except ImportError as exc:
        return f"myokit is not importable ({exc})"
    if myokit.Sundials.version() is None:
        return "Myokit's simulator needs SUNDIALS (Debian: apt-get install libsundials-dev; `make setup` does it as root)"
    if myokit.Compiler.info() is None:
        return "Myokit's simulator needs a C compiler (Debian: apt-get install gcc)"
    return None


def cvodes_simulation(model, protocol=None, tolerance: float = 1e-10):
    """Myokit's ``Simulation`` (CVODES) of a ``myokit.Model`` paced by ``protocol``, relative and absolute
    tolerances ``tolerance``."""
    import myokit

    sim = myokit.Simulation(model, protocol)
    sim.set_tolerance(tolerance, tolerance)
    return sim


def cvodes_trajectories(model: CellModel, y0, params, times, tolerance: float = 1e-10):
    """The states (K, n, n_states) of ``n`` cells at ``times`` (K evenly spaced from 0) by Myokit's CVODES, for a
    :class:`CellModel` imported from a Myokit or CellML file (its ``reference``): cell ``i`` from ``y0[i]`` (model
    state order) with ``params`` (name -> scalar or per-cell array). The file is read again; it must still
    translate to the same states and parameters."""
    import numpy as np

    source = Path(model.reference) if model.reference else None
    if source is None or not source.is_file() or source.suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"model {model.name!r} was not imported from a Myokit or CellML file")
    mm, protocol = _read(source)
    states = [s.qname() for s in mm.states()]
    if states != list(model.state_names) or any(not mm.has_variable(p) for p in params):
        raise InvalidInputError(f"model file {str(source)!r} no longer matches the imported model {model.name!r}")
    times = np.asarray(times, dtype=np.float64)
    interval = float(times[1] - times[0]) if len(times) > 1 else float(times[-1]) or 1.0
    if not np.allclose(times, np.arange(len(times)) * interval, rtol=0, atol=1e-9 * max(1.0, times[-1])):
        raise InvalidInputError("cvodes_trajectories: the times must be evenly spaced from 0")
    y0 = np.asarray(y0, dtype=np.float64)
    sim = cvodes_simulation(mm, protocol, tolerance)
    out = np.empty((len(times), len(y0), len(states)))
    for i, y in enumerate(y0):
        sim.reset()
        sim.set_state(list(y))
        for name, v in params.items():
            sim.set_constant(name, float(np.broadcast_to(v, (len(y0),))[i]))
        d = sim.run(times[-1] + interval / 2, log=states, log_interval=interval)
        out[:, i] = np.stack([np.asarray(d[s], dtype=np.float64)[:len(times)] for s in states], axis=1)
    return out


def _model_name(path: Path) -> str:
    """A registry name from the file name, usable in file names and as a C identifier (``lr-1991.mmt`` -> ``lr_1991``)."""
    name = re.sub(r"\W+", "_", path.stem).strip("_") or "model"
    return name if name[0].isalpha() else f"m_{name}"


def from_myokit(model, protocol=None, name: str | None = None, source: str = "", default_dt: float | None = None) -> CellModel:
    """The :class:`CellModel` of a ``myokit.Model`` paced by ``protocol`` (a ``myokit.Protocol`` or ``None``)."""
    import myokit

    what = source or name or "model"
    try:
        model.validate()
    except myokit.IntegrityError as exc:
        raise InvalidInputError(f"model {what!r} is not valid in Myokit: {' '.join(str(exc).split())}") from None
    name = name or _model_name(Path(model.name() or "model"))
    if default_dt is None and "default_dt" in model.meta:
        try:
            default_dt = float(model.meta["default_dt"])
        except ValueError:
            raise InvalidInputError(f"model {what!r}: default_dt {model.meta['default_dt']!r} is not a number") from None
    time = model.time()
    tr = _Translator(model, what, time)

    states = {}
    for v in model.states():
        states[v.qname()] = State(float(v.initial_value(True)), _unit(v.unit()), v.meta.get("desc", ""))
    # what the derivatives need, each variable after the ones it uses
    order, seen = [], set()

    def visit(v):
        if v in seen:
            return
        seen.add(v)
        if v.is_state() or v is time or v.binding() == "pace":
            return
        for ref in _references(v.rhs()):
            visit(ref)
        order.append(v)

    pace = None
    for s in model.states():
        for ref in _references(s.rhs()):
            visit(ref)
    parameters, intermediates = {}, {}
    for v in list(seen):
        if v.binding() == "pace":
            pace = v
    if pace is not None:
        intermediates[pace.qname()] = _pace_text(protocol, tr.time_ident, what)
    for v in order:
        binding = v.binding()
        if binding is not None and binding != "diffusion_current":
            raise InvalidInputError(
                f"model {what!r}: variable {v.qname()!r} is bound to {binding!r}, which a single-cell forward-Euler "
                "solver cannot provide (only time, pace and diffusion_current are)")
        if binding == "diffusion_current":
            intermediates[v.qname()] = "0"  # one cell, no neighbours
        elif v.is_literal():
            parameters[v.qname()] = Parameter(float(v.rhs().eval()), _unit(v.unit()), v.meta.get("desc", ""))
        else:
            intermediates[v.qname()] = tr.text(v.rhs(), v)
    rhs = {s.qname(): tr.text(s.rhs(), s) for s in model.states()}
    description = model.meta.get("name") or model.name() or name
    return CellModel(
        name=name,
        description=" ".join(str(description).split()) + (f" (imported by Myokit from {Path(source).name})" if source else ""),
        states=states,
        parameters=parameters,
        rhs=rhs,
        intermediates=intermediates,
        time_units=_unit(model.time_unit()) or "ms",  # Myokit's convention where the file names no unit
        reference=source,
        time_variable=time.qname(),
        default_dt=default_dt,
    )


def _unit(unit) -> str:
    if unit is None:
        return ""
    return str(unit).strip("[]")


def _references(expr):
    """The variables an expression uses (each once, in order of appearance)."""
    import myokit

    out = []
    for e in expr.walk():
        if isinstance(e, myokit.Name) and e.var() not in out:
            out.append(e.var())
    return out


def _number(x: float) -> str:
    text = repr(float(x))
    return f"({text})" if text.startswith("-") else text


def _pace_text(protocol, t: str, what: str) -> str:
    """The pacing protocol as an expression in time: ``level`` while a pulse is on, else 0."""
    if protocol is None:
        return "0"
    events = protocol.events()
    if not events:
        return "0"
    if len(events) > 1:
        raise InvalidInputError(
            f"model {what!r}: its pacing protocol has {len(events)} events; only a regular protocol (one periodic "
            "pulse bound to pace) can be translated")
    e = events[0]
    level, start, duration, period, multiplier = (float(e.level()), float(e.start()), float(e.duration()),
                                                  float(e.period()), int(e.multiplier()))
    since = f"({t} - {_number(start)})"
    if period > 0:
        phase = f"({since} - {_number(period)}*floor({since}/{_number(period)}))"
        on = [f"Ge({since}, 0)", f"Lt({phase}, {_number(duration)})"]
        if multiplier > 0:
            on.append(f"Lt({since}, {_number(multiplier * period)})")
    else:
        on = [f"Ge({since}, 0)", f"Lt({since}, {_number(duration)})"]
    return f"Piecewise(({_number(level)}, And({', '.join(on)})), (0, True))"


class _Translator:
    """Myokit expressions as CellModel expression text (identifiers for qualified names, exact numbers)."""

    def __init__(self, model, what: str, time):
        self.model, self.what, self.time = model, what, time
        self.time_ident = identifier(time.qname())

    def text(self, expr, var) -> str:
        self.var = var
        return self._t(expr)

    def refuse(self, construct: str):
        raise InvalidInputError(
            f"model {self.what!r}: variable {self.var.qname()!r} uses {construct}, which cannot be translated")

    def _t(self, e) -> str:
        import myokit as m

        t = self._t
        if isinstance(e, m.Number):
            return _number(e.eval())
        if isinstance(e, m.Name):
            v = e.var()
            if v is self.time:
                return self.time_ident
            return identifier(v.qname())
        if isinstance(e, m.Derivative):
            self.refuse(f"the derivative {e.code()} inside an equation")
        ops = list(e)
        binary = {m.Plus: "+", m.Minus: "-", m.Multiply: "*", m.Divide: "/", m.Power: "**"}
        if type(e) in binary:
            return f"({t(ops[0])} {binary[type(e)]} {t(ops[1])})"
        if isinstance(e, m.PrefixMinus):
            return f"(-{t(ops[0])})"
        if isinstance(e, m.PrefixPlus):
            return t(ops[0])
        if isinstance(e, m.Quotient):
            return f"floor({t(ops[0])} / {t(ops[1])})"
        if isinstance(e, m.Remainder):  # Myokit's a % b: a - b * floor(a / b)
            a, b = t(ops[0]), t(ops[1])
            return f"({a} - {b}*floor({a} / {b}))"
        functions = {m.Sqrt: "sqrt", m.Exp: "exp", m.Sin: "sin", m.Cos: "cos", m.Tan: "tan", m.ASin: "asin",
                     m.ACos: "acos", m.ATan: "atan", m.Floor: "floor", m.Ceil: "ceiling", m.Abs: "Abs"}
        if type(e) in functions:
            return f"{functions[type(e)]}({t(ops[0])})"
        if isinstance(e, m.Log):
            return f"log({t(ops[0])})" if len(ops) == 1 else f"(log({t(ops[0])})/log({t(ops[1])}))"
        if isinstance(e, m.Log10):
            return f"(log({t(ops[0])})/log(10))"
        relations = {m.Equal: "Eq", m.NotEqual: "Ne", m.More: "Gt", m.Less: "Lt", m.MoreEqual: "Ge", m.LessEqual: "Le"}
        if type(e) in relations:
            return f"{relations[type(e)]}({t(ops[0])}, {t(ops[1])})"
        if isinstance(e, (m.And, m.Or)):
            return f"{'And' if isinstance(e, m.And) else 'Or'}({t(ops[0])}, {t(ops[1])})"
        if isinstance(e, m.Not):
            return f"Not({t(ops[0])})"
        if isinstance(e, m.If):  # if(condition, then, else)
            return f"Piecewise(({t(ops[1])}, {t(ops[0])}), ({t(ops[2])}, True))"
        if isinstance(e, m.Piecewise):  # piecewise(c1, v1, c2, v2, ..., otherwise)
            pieces = [f"({t(ops[i + 1])}, {t(ops[i])})" for i in range(0, len(ops) - 1, 2)]
            return f"Piecewise({', '.join(pieces)}, ({t(ops[-1])}, True))"
        self.refuse(f"{type(e).__name__} ({e.code()})")
