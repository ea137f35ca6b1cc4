"""The learning problems of the study, each owning its geometry.

A :class:`Problem` knows what its surrogate maps (inputs -> outputs), how its inputs split into the cell
model's initial states and parameters, its input box, its time grid, and a fingerprint of its whole
definition (model equations included) that every artefact made for it records. Nothing else in the
project re-derives these facts; the datasets, the losses, the speed workloads and the ITNN rollout ask
the problem. Building one from the configuration is :func:`problem_from_config` (the configuration itself
is validated in :mod:`surrogates.config`; its study builds each problem once, ``study.problem(name)``).
Nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import numpy as np

import solvers
from core.errors import InvalidInputError
from core.io import sha256_json
from core.steps import whole_steps

# surrogate kind -> the problem kinds it can learn
SURROGATE_KINDS = {"ddnn": ("trajectory", "trace"), "pinn": ("trajectory", "trace"), "pinn_seed": ("trace",),
                   "itnn": ("step",)}
PROBLEM_KINDS = ("trajectory", "step", "trace")


def _lib(x):
    """The array library of ``x``: torch for tensors, NumPy otherwise (torch is never imported here)."""
    return type(x).__module__.split(".")[0] == "torch"


@dataclass(frozen=True)
class Problem:
    """One learning problem: what the surrogate maps, and how its data are drawn and labelled.

    Kinds: ``trajectory`` (``t`` and sampled initial states ``<state>0`` / parameters -> states at t),
    ``step`` (states and parameters -> states after ``step`` time units; an ITNN's one-step map; for a model
    paced by a stimulus also the time ``t`` at the start of the step), ``trace``
    (one trace under a stimulus ``protocol``; rows are its saved time points).
    """

    name: str
    kind: str
    model: solvers.CellModel
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fixed: Mapping[str, float] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    t_end: float | None = None
    save_interval: float | None = None
    step: float | None = None
    test_fraction: float | None = None
    test_trajectories: int | None = None
    test_from: str | None = None
    protocol: Mapping[str, float] | None = None
    pool_order: str = "permutation"
    sizes: tuple[int, ...] = ()
    dt: float = 0.01
    backend: str = "cpu"
    dtype: str = "float64"

    # ------------------------------------------------------------ what is sampled, and how rows arise
    @property
    def sampled(self) -> tuple[str, ...]:
        """Inputs drawn from a range (everything but ``t`` for trajectory problems)."""
        return tuple(n for n in self.inputs if n != "t") if self.kind != "trace" else ()

    @property
    def uses_pool(self) -> bool:
        """True when the rows come from a finite pool of time points (problem A, hh_m)."""
        return self.kind == "trace" or (self.kind == "trajectory" and not self.sampled)

    # ------------------------------------------------------------ geometry
    def box(self) -> tuple[list[float], list[float]]:
        """Lower and upper bounds of each input (``t`` spans ``[0, t_end]``); trajectory and step problems."""
        lo, hi = [], []
        for name in self.inputs:
            if name == "t" and self.t_end is not None:
                lo.append(0.0), hi.append(float(self.t_end))
            elif name in self.ranges:
                lo.append(self.ranges[name][0]), hi.append(self.ranges[name][1])
            else:
                raise InvalidInputError(f"problem {self.name!r}: input {name!r} has no range")
        return lo, hi

    @property
    def time_range(self) -> str:
        """The time span of the problem's rows as captions give it: ``"t in [0, 20]"`` (with the model's time
        units where it has some, ``"t in [0, 100] ms"``); a step problem's ``"one step of 0.1"``."""
        units = "" if self.model.time_units == "1" else f" {self.model.time_units}"
        if self.t_end is None:
            return f"one step of {self.step:g}{units}"
        return f"t in [0, {self.t_end:g}]{units}"

    def time_grid(self) -> np.ndarray:
        """The saved times ``0, save_interval, ..., t_end`` of a trajectory or trace problem."""
        k = whole_steps(self.t_end, self.save_interval, f"problem {self.name!r} t_end")
        return np.arange(k + 1) * self.save_interval

    def euler_steps(self, span: float, what: str = "span") -> int:
        """Euler steps of ``dt`` in ``span`` (a whole number, else a clear error)."""
        return whole_steps(span, self.dt, f"problem {self.name!r} {what}")

    def state_key(self, state: str) -> str:
        """The input naming a state's value: ``<state>0`` (initial state) for trajectories, ``<state>`` for steps."""
        return state if self.kind == "step" else f"{state}0"

    def columns(self, x) -> dict:
        """The input columns of ``x`` (rows x inputs; NumPy array or torch tensor) by input name."""
        return {n: x[:, i] for i, n in enumerate(self.inputs)}

    def initial_states(self, values: Mapping, n: int | None = None):
        """States (n, n_states) in the model's order from input ``values`` (name -> column or scalar).

        A state comes from its input (``<state>0`` for a trajectory, ``<state>`` for a step problem), else from
        ``fixed``, else the model's default initial value. Columns may be NumPy arrays or torch tensors; the
        result is of the same kind (and on the same device).
        """
        ref = next((v for v in values.values() if _lib(v) or np.ndim(v)), None)
        n = int(n if n is not None else (len(ref) if ref is not None else 1))
        cols = []
        for s, st in self.model.states.items():
            v = values.get(self.state_key(s), self.fixed.get(self.state_key(s), st.initial))
            cols.append(v)
        if ref is not None and _lib(ref):
            import torch

            return torch.stack([c if torch.is_tensor(c) else torch.full((n,), float(c), dtype=ref.dtype, device=ref.device)
                                for c in cols], dim=1)
        return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (n,)) for c in cols], axis=1).copy()

    def parameters(self, values: Mapping) -> dict:
        """Model parameters from input ``values`` and ``fixed`` (inputs win); others keep the model's defaults."""
        out = {k: float(v) for k, v in self.fixed.items() if k in self.model.parameters}
        out.update({k: v for k, v in values.items() if k in self.model.parameters})
        return out

    def split(self, values: Mapping, n: int | None = None):
        """``(initial_states, parameters)`` of :meth:`initial_states` and :meth:`parameters`."""
        return self.initial_states(values, n), self.parameters(values)

    def parameter_matrix(self, values: Mapping, n: int, dtype: str = "float32") -> np.ndarray:
        """All model parameters, one row each in the model's order, for ``n`` cells (solver layout)."""
        return solvers.parameter_matrix(self.model, self.parameters(values), n, dtype)

    # ------------------------------------------------------------ step problems (ITNN)
    @property
    def state_inputs(self) -> list[int]:
        """Columns of a step problem's inputs that hold its outputs' states (the increment's base)."""
        return [self.inputs.index(o) for o in self.outputs]

    @property
    def param_inputs(self) -> tuple[str, ...]:
        """A step problem's inputs after its states: the parameters (fixed along a rollout) and, for a model
        paced by a stimulus, the time ``t`` at the start of the step (advanced by the rollout)."""
        return tuple(n for n in self.inputs if n not in self.outputs)

    @property
    def rollout_clock(self) -> tuple[int, float] | None:
        """``(column, step)``: where a step problem's time ``t`` sits among :attr:`param_inputs` and how much a
        rollout advances it each step; ``None`` for a model that does not depend on time. The time is the
        absolute time since the trajectory's start (not the phase within a pacing period): its box is the
        span of the rollouts it is judged on."""
        return (self.param_inputs.index("t"), float(self.step)) if "t" in self.inputs else None

    def rollout_inputs(self, states: np.ndarray, params: Mapping, n: int, t0=0.0):
        """A step problem's rollout start: states (n, outputs) in its output order, parameters (n, param inputs).

        ``states`` are in the model's state order (from :meth:`initial_states` of the trajectory problem the
        rollout replaces); ``params`` map parameter names to per-cell values or scalars; ``t0`` (scalar or
        per cell) is the start time where the step problem has the input ``t``.
        """
        if self.kind != "step":
            raise InvalidInputError(f"problem {self.name!r} is not a step problem")
        idx = [self.model.state_names.index(o) for o in self.outputs]
        Y = np.asarray(states, dtype=np.float64)[:, idx]
        cols = []
        for name in self.param_inputs:
            v = t0 if name == "t" else params.get(name, self.fixed.get(name, self.model.parameters[name].default))
            cols.append(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)))
        P = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
        return Y.astype(np.float32), P.astype(np.float32)

    # ------------------------------------------------------------ what it is, for provenance
    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "kind", "inputs", "outputs", "t_end", "save_interval", "step",
                                           "test_fraction", "test_trajectories", "test_from", "dt")}
        d.update({"fixed": dict(self.fixed), "ranges": {k: list(v) for k, v in self.ranges.items()},
                  "protocol": dict(self.protocol) if self.protocol else None, "model": self.model.describe()})
        if self.pool_order != "permutation":  # named only when chosen: the default's fingerprints stay as they were
            d["pool_order"] = self.pool_order
        return d

    @cached_property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the problem's definition and its model's equations and defaults, plus the
        labelling solver's settings: two problems with one fingerprint produce the same labels."""
        return sha256_json({**self.describe(), "backend": self.backend, "dtype": self.dtype})[:16]

    def used_parameters(self) -> dict:
        """What each model parameter really was in the data: a fixed value, a sampled range, or a protocol."""
        out = {}
        for name, par in self.model.parameters.items():
            if name in self.ranges and name in self.inputs:
                out[name] = {"sampled": list(self.ranges[name]), "units": par.units}
            elif name in self.fixed:
                out[name] = float(self.fixed[name])
            elif self.protocol and name == "I_stim":
                out[name] = {"protocol": dict(self.protocol), "units": par.units}
            else:
                out[name] = par.default
        return out


def problem_from_config(name: str, cfg: Mapping) -> Problem:
    """The problem called ``name`` in a (schema-valid) configuration; errors name the config key."""
    problems = cfg["problems"]
    if name not in problems:
        raise InvalidInputError(f"unknown problem {name!r}; valid: {sorted(problems)}")
    spec, k = problems[name], f"problems.{name}"
    paths = cfg.get("model_paths") or ()  # the folders of model files the configuration names, besides solvers/models
    if paths:
        try:
            solvers.list_models(paths)
        except InvalidInputError as exc:
            raise InvalidInputError(f"config key model_paths: {exc}") from None
    try:
        model = solvers.get_model(spec["model"], paths)
    except InvalidInputError as exc:
        raise InvalidInputError(f"config key {k}.model: {exc}") from None
    states, params = set(model.state_names), set(model.param_names)
    kind, inputs, outputs = spec["kind"], tuple(spec["inputs"]), tuple(spec["outputs"])
    for o in outputs:
        if o not in states:
            raise InvalidInputError(f"config key {k}.outputs: {o!r} is not a state of {model.name!r} {sorted(states)}")
    ranges = {}
    for r, (lo, hi) in spec.get("ranges", {}).items():
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InvalidInputError(f"config key {k}.ranges.{r}: empty or invalid range [{lo}, {hi}] (need lo < hi)")
        ranges[r] = (float(lo), float(hi))
    dt = float(cfg["solver"]["dt"])
    sizes = tuple(spec.get("sizes", cfg["datasets"]["sizes"]))
    common = dict(name=name, kind=kind, model=model, inputs=inputs, outputs=outputs, sizes=sizes, dt=dt,
                  backend=cfg["solver"]["backend"], dtype=cfg["solver"]["dtype"],
                  pool_order=spec.get("pool_order", "permutation"))
    if "pool_order" in spec and not (kind == "trace" or (kind == "trajectory" and inputs == ("t",))):
        raise InvalidInputError(f"config key {k}.pool_order: only a problem whose rows come from a pool of time "
                                f"points (a trace, or a trajectory with the input t alone) has a pool to order")

    def need(*keys):
        for key in keys:
            if key not in spec:
                raise InvalidInputError(f"config key {k}.{key}: required for kind {kind!r}")

    def grid():
        whole_steps(spec["save_interval"], dt, f"config key {k}.save_interval")
        whole_steps(spec["t_end"], spec["save_interval"], f"config key {k}.t_end")

    if kind == "trajectory":
        need("t_end", "save_interval")
        if inputs[0] != "t":
            raise InvalidInputError(f"config key {k}.inputs: a trajectory problem's first input must be 't'")
        allowed = {f"{s}0" for s in states} | params
        fixed = {n: float(v) for n, v in spec.get("fixed", {}).items()}
        for n in [*inputs[1:], *fixed]:
            if n not in allowed:
                raise InvalidInputError(
                    f"config key {k}: {n!r} is neither an initial state (<state>0) nor a parameter of "
                    f"{model.name!r}; valid: {sorted(allowed)}")
        for n in inputs[1:]:
            if n not in ranges:
                raise InvalidInputError(f"config key {k}.ranges: sampled input {n!r} needs a range")
        need("test_trajectories" if inputs[1:] else "test_fraction")
        grid()
        return Problem(**common, fixed=fixed, ranges=ranges, t_end=float(spec["t_end"]),
                       save_interval=float(spec["save_interval"]), test_fraction=spec.get("test_fraction"),
                       test_trajectories=spec.get("test_trajectories"))
    if kind == "step":
        need("step", "test_from")
        timed = model.time_ident is not None
        if timed and "t" not in inputs:
            raise InvalidInputError(
                f"config key {k}.inputs: {model.name!r} depends on time (through {model.time_variable!r}: its "
                "stimulus), so its one-step map needs the input 't' (the time at the start of the step)")
        for n in inputs:
            if n not in states | params and not (timed and n == "t"):
                raise InvalidInputError(f"config key {k}.inputs: {n!r} is neither a state nor a parameter of {model.name!r}"
                                        + ("" if n != "t" else " (and the model does not depend on time)"))
            if n not in ranges:
                raise InvalidInputError(f"config key {k}.ranges: input {n!r} needs a range")
        if [n for n in inputs if n in states] != list(outputs):
            raise InvalidInputError(f"config key {k}.outputs: a step problem maps its state inputs to the same states")
        whole_steps(spec["step"], dt, f"config key {k}.step")
        src = spec["test_from"]
        if src not in problems or problems[src].get("kind") != "trajectory" or src == name:
            raise InvalidInputError(f"config key {k}.test_from: {src!r} is not a trajectory problem of this config")
        src_outputs = list(problems[src].get("outputs", ()))
        if list(outputs) != src_outputs:
            raise InvalidInputError(
                f"config key {k}.outputs: {list(outputs)} must be {src}'s outputs {src_outputs} "
                f"in their order: the rollout is scored against {src}'s test labels column by column (test_from)")
        whole_steps(problems[src]["save_interval"], spec["step"],
                    f"config key {k}.step: the rollout over {src}'s test grid (save_interval)")
        if timed:  # the rollout over the source's trajectories starts steps at t = 0, step, ..., t_end - step
            (lo, hi), last = ranges["t"], float(problems[src]["t_end"]) - float(spec["step"])
            if lo > 0 or hi < last:
                raise InvalidInputError(
                    f"config key {k}.ranges.t: [{lo:g}, {hi:g}] does not cover the steps of the rollout over {src}'s "
                    f"test trajectories, which start at t in [0, {last:g}]")
        return Problem(**common, ranges=ranges, step=float(spec["step"]), test_from=src)
    # trace
    need("t_end", "save_interval", "protocol", "test_fraction")
    if inputs[0] != "t" or any(n not in states for n in inputs[1:]):
        raise InvalidInputError(f"config key {k}.inputs: a trace problem's inputs are 't' and states of {model.name!r}")
    if "I_stim" not in params:
        raise InvalidInputError(f"config key {k}.protocol: model {model.name!r} has no I_stim parameter")
    grid()
    proto = {p: float(v) for p, v in spec["protocol"].items()}
    for p in ("start", "period", "duration"):
        if proto[p] > 0:
            whole_steps(proto[p], spec["save_interval"], f"config key {k}.protocol.{p}")
    if proto["duration"] >= proto["period"]:
        raise InvalidInputError(f"config key {k}.protocol.duration: must be shorter than the period")
    return Problem(**common, t_end=float(spec["t_end"]), save_interval=float(spec["save_interval"]),
                   protocol=proto, test_fraction=float(spec["test_fraction"]))


# ---------------------------------------------------------------- the design's sizes
MAX_SOBOL_POINTS = 2**30


def n_val(n: int, val_fraction: float) -> int:
    return max(1, math.ceil(val_fraction * n))


def pool_size(p: Problem) -> int:
    return len(p.time_grid())


def n_test_pool(p: Problem) -> int:
    return max(1, round(p.test_fraction * pool_size(p)))


def max_rows(p: Problem, val_fraction: float) -> int:
    """The largest training size the problem's design allows."""
    if not p.uses_pool:
        return MAX_SOBOL_POINTS
    free = pool_size(p) - n_test_pool(p)
    n = free
    while n > 0 and n + n_val(n, val_fraction) > free:
        n -= 1
    return n
