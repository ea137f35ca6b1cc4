"""The study's configuration, validated once, completely, when it is loaded.

``load_config`` reads ``config/config.yaml`` (with presets such as ``config/quick.yaml`` merged over it),
checks it against the schema shipped in :mod:`core` (types, unknown keys, defaults) and then checks what
a schema cannot: ranges, names that must exist in the models, time grids that must be whole numbers of
steps, training sizes a design can provide, kept-state counts the speed workload can produce. Every error
names the key, e.g. ``config key speed.n_outputs: ...``, so a bad setting fails at load and not after hours
of training. What it returns is the study (:class:`~surrogates.study.Study`): the validated configuration as a
frozen, typed object that every program, rule and script reads. Nothing here imports torch (the workflow
calls it while it parses).
"""
from __future__ import annotations

from typing import Mapping

from core.config import read_config, validate_schema
from core.errors import InvalidInputError
from core.steps import keep_every, whole_steps

from .problems import SURROGATE_KINDS, max_rows, problem_from_config
from .study import Study


def validate_config(cfg: Mapping) -> Study:
    """Validate a configuration mapping; returns its :class:`~surrogates.study.Study` (``as_dict()``: the
    mapping with the schema's defaults filled in)."""
    cfg = validate_schema(cfg)
    if cfg["datasets"]["seed"] == cfg["datasets"]["test_seed"]:
        raise InvalidInputError("config key datasets.test_seed: must differ from datasets.seed (held-out test set)")
    problems = {name: problem_from_config(name, cfg) for name in cfg["problems"]}
    _check_sizes(cfg, problems)
    check_training_config(cfg)
    study = Study.of(cfg, problems)
    _check_speed(study)
    return study


def load_config(*paths) -> Study:
    """Read and validate the configuration: ``config/config.yaml`` with each of ``paths`` merged over it
    (``load_config()`` is the default; ``load_config("config/quick.yaml")`` the quick preset)."""
    return validate_config(read_config(*paths))


def _check_sizes(cfg: dict, problems: dict) -> None:
    vf = cfg["datasets"]["val_fraction"]
    for name, p in problems.items():
        if p.kind == "step" or not p.uses_pool:
            continue
        limit = max_rows(p, vf)
        for n in p.sizes:
            if n > limit:
                key = f"problems.{name}.sizes" if "sizes" in cfg["problems"][name] else "datasets.sizes"
                raise InvalidInputError(f"config key {key}: n = {n} is larger than problem {name}'s design allows "
                                        f"({limit} distinct training rows besides its test and validation rows)")


def check_training_config(cfg: dict) -> None:
    """What the schema cannot check in ``training``; errors name the key."""
    t = cfg["training"]
    if t["architecture"] not in t["architectures"]:
        raise InvalidInputError(f"config key training.architecture: {t['architecture']!r} is not in training.architectures "
                                f"{sorted(t['architectures'])}")
    if len(set(t["seeds"])) != len(t["seeds"]):
        raise InvalidInputError(f"config key training.seeds: {t['seeds']} repeats a seed")
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
        if "output_bounds" in over:
            _check_bounds(cfg, p, over["output_bounds"])
        if "architecture" in over and over["architecture"] not in t["architectures"]:
            raise InvalidInputError(f"config key training.overrides.{p}.architecture: {over['architecture']!r} is not in "
                                    f"training.architectures")


def _check_bounds(cfg: dict, problem: str, bounds: Mapping) -> None:
    """``training.overrides.<problem>.output_bounds``: every output of the problem once, each ``lo < hi`` (one
    squashing output layer serves them all); not for ITNNs, whose outputs are increments, not states."""
    key = f"config key training.overrides.{problem}.output_bounds"
    outputs = list(cfg["problems"][problem].get("outputs", []))
    if sorted(bounds) != sorted(outputs):
        raise InvalidInputError(f"{key}: give bounds for each output of {problem!r} ({outputs}), got {sorted(bounds)}")
    for name, (lo, hi) in bounds.items():
        if not lo < hi:
            raise InvalidInputError(f"{key}.{name}: the lower bound must be below the upper, got [{lo}, {hi}]")
    if cfg["problems"][problem]["kind"] == "step":
        raise InvalidInputError(f"{key}: {problem!r} is a step problem, whose networks learn increments, not states")


def _check_speed(study: Study) -> None:
    sp, problems = study.speed, study.problems
    if sp.problem not in problems or problems[sp.problem].kind != "trajectory" or not problems[sp.problem].sampled:
        raise InvalidInputError(f"config key speed.problem: {sp.problem!r} is not a trajectory problem with sampled "
                                "inputs of this config")
    for kind in sp.surrogates:
        study.speed_problem_of(kind)
    for i, kind in enumerate(sp.ensembles):
        if kind not in sp.surrogates:
            raise InvalidInputError(f"config key speed.ensembles.{i}: {kind!r} is not one of speed.surrogates "
                                    f"{list(sp.surrogates)}; an ensemble is timed beside its own kind's network")
    dt = study.solver.dt
    n_steps = whole_steps(sp.t_end, dt, "config key speed.t_end (in steps of solver.dt)")
    for key, values in (("n_outputs", [sp.n_outputs]), ("k_sweep", sp.k_sweep)):
        for i, K in enumerate(values):
            where = f"speed.{key}" + (f".{i}" if key == "k_sweep" else "")
            keep_every(n_steps, K, f"config key {where} (the Euler steps of speed.t_end = {sp.t_end:g} at "
                                   f"solver.dt = {dt:g})")
