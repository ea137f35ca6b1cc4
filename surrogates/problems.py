"""The configuration, validated once, and the problems it declares.

``load_config`` checks ``config/config.yaml`` against ``workflow/schemas/config.schema.yaml`` (types,
unknown keys) and then checks what a schema cannot (ranges, names that must exist in the model). Every
error names the key, e.g. ``problems.B.ranges.u0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

import solvers
from solvers.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
# surrogate kind -> the problem kinds it can learn
SURROGATE_KINDS = {"ddnn": ("trajectory", "trace"), "pinn": ("trajectory", "trace"), "pinn_seed": ("trace",),
                   "itnn": ("step",)}
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(cfg: Mapping) -> dict:
    """Validate a configuration mapping; returns it with schema defaults filled in."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise InvalidInputError(f"config key {_key(e.absolute_path)}: {e.message}")
    cfg = _with_defaults(dict(cfg), schema, schema)
    if cfg["datasets"]["seed"] == cfg["datasets"]["test_seed"]:
        raise InvalidInputError("config key datasets.test_seed: must differ from datasets.seed (held-out test set)")
    for name in cfg["problems"]:
        problem_from_config(name, cfg)
    check_training_config(cfg)
    sp = cfg["speed"]
    if sp["problem"] not in cfg["problems"] or cfg["problems"][sp["problem"]]["kind"] != "trajectory":
        raise InvalidInputError(f"config key speed.problem: {sp['problem']!r} is not a trajectory problem of this config")
    for kind in sp["surrogates"]:
        speed_problem_of(cfg, kind)
    return cfg


def speed_problem_of(cfg: dict, kind: str) -> str:
    """The problem whose `kind` surrogate the speed benchmark times: ``speed.problem`` itself, or for an
    iterative surrogate the step problem judged on it (``test_from``, e.g. D for C)."""
    target = cfg["speed"]["problem"]
    trained = cfg["training"]["surrogates"].get(kind, [])
    if target in trained:
        return target
    for name in trained:
        q = cfg["problems"].get(name, {})
        if q.get("kind") == "step" and q.get("test_from") == target:
            return name
    raise InvalidInputError(f"config key speed.surrogates: no {kind!r} is trained on {target!r} or on a step problem "
                            f"judged on it (see training.surrogates)")


def check_training_config(cfg: dict) -> None:
    """What the schema cannot check in ``training``; errors name the key."""
    t = cfg["training"]
    if t["architecture"] not in t["architectures"]:
        raise InvalidInputError(f"config key training.architecture: {t['architecture']!r} is not in training.architectures "
                                f"{sorted(t['architectures'])}")
    for kind, problems in t["surrogates"].items():
        for p in problems:
            if p not in cfg["problems"]:
                raise InvalidInputError(f"config key training.surrogates.{kind}: unknown problem {p!r}; valid: {sorted(cfg['problems'])}")
            if cfg["problems"][p]["kind"] not in SURROGATE_KINDS[kind]:
                raise InvalidInputError(f"config key training.surrogates.{kind}: {kind} cannot train on {p!r} "
                                        f"(a {cfg['problems'][p]['kind']} problem; {kind} takes {list(SURROGATE_KINDS[kind])})")
    for p, over in t.get("overrides", {}).items():
        if p not in cfg["problems"]:
            raise InvalidInputError(f"config key training.overrides.{p}: unknown problem; valid: {sorted(cfg['problems'])}")
        if "architecture" in over and over["architecture"] not in t["architectures"]:
            raise InvalidInputError(f"config key training.overrides.{p}.architecture: {over['architecture']!r} is not in "
                                    f"training.architectures")


def _with_defaults(obj, node, schema):
    """Fill the schema's ``default`` values into ``obj`` (recursively, for fixed properties)."""
    while "$ref" in node:  # a local JSON pointer such as "#/$defs/train_keys/device"
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    if isinstance(obj, dict):
        out = dict(obj)
        for k, sub in node.get("properties", {}).items():
            if k not in out and "default" in sub:
                out[k] = sub["default"]
            if k in out:
                out[k] = _with_defaults(out[k], sub, schema)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for k in out:
                if k not in node.get("properties", {}):
                    out[k] = _with_defaults(out[k], extra, schema)
        return out
    return obj


def load_config(path=None) -> dict:
    """Read and validate a YAML configuration (default: ``config/config.yaml``)."""
    path = Path(path or DEFAULT_CONFIG)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"config {path} must be a mapping of keys to values")
    return validate_config(cfg)


@dataclass(frozen=True)
class Problem:
    """One learning problem: what the surrogate maps, and how its data are drawn and labelled."""

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
    sizes: tuple[int, ...] = ()
    dt: float = 0.01
    backend: str = "cpu"
    dtype: str = "float64"

    @property
    def sampled(self) -> tuple[str, ...]:
        """Inputs drawn from a range (everything but ``t`` for trajectory problems)."""
        return tuple(n for n in self.inputs if n != "t") if self.kind != "trace" else ()

    @property
    def uses_pool(self) -> bool:
        """True when the rows come from a finite pool of time points (problem A, hh_m)."""
        return self.kind == "trace" or (self.kind == "trajectory" and not self.sampled)

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "kind", "inputs", "outputs", "t_end", "save_interval", "step",
                                           "test_fraction", "test_trajectories", "test_from", "dt")}
        d.update({"fixed": dict(self.fixed), "ranges": {k: list(v) for k, v in self.ranges.items()},
                  "protocol": dict(self.protocol) if self.protocol else None, "model": self.model.describe()})
        return d


def _whole_steps(value: float, unit: float, key: str) -> int:
    n = round(value / unit)
    if n < 1 or abs(n * unit - value) > 1e-9 * max(1.0, value):
        raise InvalidInputError(f"config key {key}: {value} is not a whole number of {unit:g}")
    return n


def problem_from_config(name: str, cfg: Mapping) -> Problem:
    """The problem called ``name`` in a (schema-valid) configuration."""
    problems = cfg["problems"]
    if name not in problems:
        raise InvalidInputError(f"unknown problem {name!r}; valid: {sorted(problems)}")
    spec, k = problems[name], f"problems.{name}"
    try:
        model = solvers.get_model(spec["model"])
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
                  backend=cfg["solver"]["backend"], dtype=cfg["solver"]["dtype"])

    def need(*keys):
        for key in keys:
            if key not in spec:
                raise InvalidInputError(f"config key {k}.{key}: required for kind {kind!r}")

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
        if inputs[1:]:
            need("test_trajectories")
        else:
            need("test_fraction")
        _whole_steps(spec["save_interval"], dt, f"{k}.save_interval")
        _whole_steps(spec["t_end"], spec["save_interval"], f"{k}.t_end")
        return Problem(**common, fixed=fixed, ranges=ranges, t_end=float(spec["t_end"]),
                       save_interval=float(spec["save_interval"]), test_fraction=spec.get("test_fraction"),
                       test_trajectories=spec.get("test_trajectories"))
    if kind == "step":
        need("step", "test_from")
        for n in inputs:
            if n not in states | params:
                raise InvalidInputError(f"config key {k}.inputs: {n!r} is neither a state nor a parameter of {model.name!r}")
            if n not in ranges:
                raise InvalidInputError(f"config key {k}.ranges: input {n!r} needs a range")
        if [n for n in inputs if n in states] != list(outputs):
            raise InvalidInputError(f"config key {k}.outputs: a step problem maps its state inputs to the same states")
        _whole_steps(spec["step"], dt, f"{k}.step")
        src = spec["test_from"]
        if src not in cfg["problems"] or cfg["problems"][src].get("kind") != "trajectory" or src == name:
            raise InvalidInputError(f"config key {k}.test_from: {src!r} is not a trajectory problem of this config")
        return Problem(**common, ranges=ranges, step=float(spec["step"]), test_from=src)
    # trace
    need("t_end", "save_interval", "protocol", "test_fraction")
    if inputs[0] != "t" or any(n not in states for n in inputs[1:]):
        raise InvalidInputError(f"config key {k}.inputs: a trace problem's inputs are 't' and states of {model.name!r}")
    if "I_stim" not in params:
        raise InvalidInputError(f"config key {k}.protocol: model {model.name!r} has no I_stim parameter")
    _whole_steps(spec["save_interval"], dt, f"{k}.save_interval")
    _whole_steps(spec["t_end"], spec["save_interval"], f"{k}.t_end")
    proto = {p: float(v) for p, v in spec["protocol"].items()}
    for p in ("start", "period", "duration"):
        if proto[p] > 0:
            _whole_steps(proto[p], spec["save_interval"], f"{k}.protocol.{p}")
    if proto["duration"] >= proto["period"]:
        raise InvalidInputError(f"config key {k}.protocol.duration: must be shorter than the period")
    return Problem(**common, t_end=float(spec["t_end"]), save_interval=float(spec["save_interval"]),
                   protocol=proto, test_fraction=float(spec["test_fraction"]))
