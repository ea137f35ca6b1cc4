"""The study's configuration, validated once, completely, when it is loaded.

``load_config`` reads ``config/config.yaml`` (with presets such as ``config/quick.yaml`` merged over it),
checks it against the schema shipped in :mod:`core` (types, unknown keys, defaults) and then checks what
a schema cannot: ranges, names that must exist in the models, time grids that must be whole numbers of
steps, training sizes a design can provide, kept-state counts the speed workload can produce. Every error
names the key, e.g. ``config key speed.n_outputs: ...``, so a bad setting fails at load and not after hours
of training. Nothing here imports torch (the workflow calls it while it parses).
"""
from __future__ import annotations

import copy
from typing import Mapping

from core.config import read_config, validate_schema
from core.errors import InvalidInputError
from core.steps import keep_every, whole_steps

from .problems import SURROGATE_KINDS, max_rows, problem_from_config


def validate_config(cfg: Mapping) -> dict:
    """Validate a configuration mapping; returns it with the schema's defaults filled in."""
    cfg = validate_schema(cfg)
    if cfg["datasets"]["seed"] == cfg["datasets"]["test_seed"]:
        raise InvalidInputError("config key datasets.test_seed: must differ from datasets.seed (held-out test set)")
    problems = {name: problem_from_config(name, cfg) for name in cfg["problems"]}
    _check_sizes(cfg, problems)
    check_training_config(cfg)
    _check_speed(cfg, problems)
    return cfg


def load_config(*paths) -> dict:
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


def _check_speed(cfg: dict, problems: dict) -> None:
    sp = cfg["speed"]
    if sp["problem"] not in problems or problems[sp["problem"]].kind != "trajectory" or not problems[sp["problem"]].sampled:
        raise InvalidInputError(f"config key speed.problem: {sp['problem']!r} is not a trajectory problem with sampled "
                                "inputs of this config")
    for kind in sp["surrogates"]:
        speed_problem_of(cfg, kind)
    for i, kind in enumerate(sp.get("ensembles", [])):
        if kind not in sp["surrogates"]:
            raise InvalidInputError(f"config key speed.ensembles.{i}: {kind!r} is not one of speed.surrogates "
                                    f"{list(sp['surrogates'])}; an ensemble is timed beside its own kind's network")
    n_steps = whole_steps(sp["t_end"], cfg["solver"]["dt"], "config key speed.t_end (in steps of solver.dt)")
    for key, values in (("n_outputs", [sp["n_outputs"]]), ("k_sweep", sp["k_sweep"])):
        for i, K in enumerate(values):
            where = f"speed.{key}" + (f".{i}" if key == "k_sweep" else "")
            keep_every(n_steps, K, f"config key {where} (the Euler steps of speed.t_end = {sp['t_end']:g} at "
                                   f"solver.dt = {cfg['solver']['dt']:g})")


def speed_problem_of(cfg: dict, kind: str) -> str:
    """The problem whose ``kind`` surrogate the speed benchmark times: ``speed.problem`` itself, or for an
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


def speed_ensembles(cfg: Mapping) -> list[tuple[str, str, int, str, tuple[int, ...]]]:
    """The seed ensembles the speed benchmark times: ``(kind, problem, n, arch, seeds)`` for each kind of
    ``speed.ensembles``, the same network as its kind's timed one (largest n) averaged over every seed; none
    where the grid has no ensembles (``training.ensemble`` off, or fewer than two seeds), as in the accuracy
    table."""
    seeds = tuple(int(s) for s in cfg["training"]["seeds"])
    if not cfg["training"].get("ensemble", True) or len(seeds) < 2:
        return []
    out = []
    for kind in cfg["speed"].get("ensembles", []):
        p = speed_problem_of(cfg, kind)
        out.append((kind, p, max(problem_from_config(p, cfg).sizes), training_settings(cfg, p)["architecture"], seeds))
    return out


def training_settings(cfg: Mapping, problem: str) -> dict:
    """The ``training`` section with the problem's ``overrides`` applied (``physics`` merged key by key)."""
    t = copy.deepcopy(dict(cfg["training"]))
    t.pop("ensemble", None)  # a setting of the grid (surrogates.ensemble), not of a run: runs' records stay as they were
    t.pop("cohort", None)  # how the grid's jobs are cut (training/cohort.py), not what a run computes
    t.pop("side_by_side", None)  # likewise (training/side_by_side.py)
    over = copy.deepcopy(t.pop("overrides", {}).get(problem, {}))
    phys = over.pop("physics", {})
    t.update(over)
    t["physics"] = {**t.get("physics", {}), **phys}
    return t


COHORT_KINDS = ("ddnn", "itnn")  # data-only kinds: their seeds can train as one stacked model


def cohort_kinds(cfg: Mapping) -> list[str]:
    """The surrogate kinds whose seeds train together, one job per (problem, kind, n, arch)
    (``training.cohort``, with at least two seeds; with ``training.side_by_side`` every kind, those that
    cannot be stacked trained side by side in the job, :mod:`~training.side_by_side`); the others train one
    job per seed."""
    if not cfg["training"].get("cohort", False) or len(cfg["training"]["seeds"]) < 2:
        return []
    if cfg["training"].get("side_by_side", False):  # the other kinds' seeds share the GPU in one process
        return list(cfg["training"]["surrogates"])
    return [k for k in COHORT_KINDS if k in cfg["training"]["surrogates"]]


PHYSICS_KINDS = ("pinn", "pinn_seed")  # kinds whose steps carry a physics residual


def training_priority(cfg: Mapping, problem: str, kind: str) -> int:
    """Snakemake priority of a training job (rules train, train_cohort): the longest first, so that jobs
    running side by side end together instead of one long job running alone at the end (longest processing
    time first). 2: a run with an L-BFGS polish (hh_m's: ~60% of the grid's training time on an H100, ~40% on
    the 2-core CPU); 1: a physics-informed kind (a PINN step costs 3-5x a data-only one); 0: a data-only kind."""
    if int(training_settings(cfg, problem).get("lbfgs_iterations") or 0) > 0:
        return 2
    return 1 if kind in PHYSICS_KINDS else 0


def ensemble_grid(cfg: Mapping) -> list[tuple[str, str, int, str, tuple[int, ...]]]:
    """The ensembles of the configuration (``training.ensemble``, with at least two seeds): one per
    ``(problem, surrogate, n, arch)`` of :func:`training_grid`, over its seeds, in the same order."""
    seeds = tuple(int(s) for s in cfg["training"]["seeds"])
    if not cfg["training"].get("ensemble", True) or len(seeds) < 2:
        return []
    out = []
    for p, kind, n, arch, _ in training_grid(cfg):
        if (p, kind, n, arch, seeds) not in out:
            out.append((p, kind, n, arch, seeds))
    return out


def training_grid(cfg: Mapping) -> list[tuple[str, str, int, str, int]]:
    """Every training run of the configuration: ``(problem, surrogate, n, arch, seed)``, in a fixed order
    (the workflow's targets, the accuracy table's rows and the runners of programs all take this list)."""
    out = []
    for kind, problems in cfg["training"]["surrogates"].items():
        for p in problems:
            arch = training_settings(cfg, p)["architecture"]
            for n in problem_from_config(p, cfg).sizes:
                for seed in cfg["training"]["seeds"]:
                    out.append((p, kind, int(n), arch, int(seed)))
    return out
