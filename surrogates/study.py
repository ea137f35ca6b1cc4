"""The study: the validated configuration as one frozen, typed object.

:func:`surrogates.config.load_config` (and ``validate_config``) returns a :class:`Study`; every program, rule
and script receives it and reads typed attributes instead of keys: its problems (built once,
``study.problem("C")``), each problem's training settings with its overrides applied
(``study.training("C").lr``), the ``solver``, ``datasets`` and ``speed`` sections and ``results_dir``. The
grid of the study (its training runs, ensembles, the speed benchmark's networks, the jobs' cohorts and
priorities) is written here once, as its methods. ``study.as_dict()`` is the validated configuration itself,
for what is written back or hashed (provenance, Snakemake's params). Mappings are read-only
(:class:`ReadOnly`), sequences tuples; a study pickles (worker processes). Nothing here imports torch.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from core.errors import InvalidInputError

from .problems import Problem, problem_from_config


class ReadOnly(Mapping):
    """A read-only mapping; unlike ``types.MappingProxyType`` it pickles (a study goes to worker processes)."""

    __slots__ = ("_items",)

    def __init__(self, items=()):
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __reduce__(self):
        return type(self), (self._items,)

    def __repr__(self) -> str:
        return repr(self._items)


def frozen(value):
    """``value`` read-only all the way down: mappings as :class:`ReadOnly`, lists as tuples."""
    if isinstance(value, Mapping):
        return ReadOnly({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Section:
    """A section of the configuration: typed fields, and the section as validated (:meth:`as_dict`)."""

    raw: Mapping = field(repr=False, compare=False)

    @classmethod
    def of(cls, raw: Mapping, **given):
        """The section from its validated mapping; a field the mapping lacks takes the field's default."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name == "raw" or f.name in given:
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            values[f.name] = frozen(raw.get(f.name, default))
        return cls(raw=frozen(raw), **values, **given)

    def as_dict(self) -> dict:
        """The section as validated (a fresh, mutable copy)."""
        return thawed(self.raw)


def thawed(value):
    """A mutable deep copy of a :func:`frozen` value (read-only mappings as dicts, tuples as lists)."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class SolverSettings(Section):
    """``solver``: the labelling solver (forward Euler of ``dt``) and the accuracy floor's tolerance."""

    dt: float = None
    backend: str = None
    dtype: str = None
    floor_rtol: float = 1.0e-10


@dataclass(frozen=True)
class DatasetSettings(Section):
    """``datasets``: the default training sizes, the validation fraction and the design's seeds."""

    sizes: tuple[int, ...] = ()
    val_fraction: float = 0.1
    seed: int = None
    test_seed: int = None


@dataclass(frozen=True)
class SpeedSettings(Section):
    """``speed``: the workload and the backends the speed benchmark times."""

    problem: str = None
    surrogates: tuple[str, ...] = ()
    ensembles: tuple[str, ...] = ()
    device: str = "auto"
    t_end: float = 50.0
    n_cells: tuple[int, ...] = ()
    n_outputs: int = None
    k_sweep: tuple[int, ...] = ()
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    repeats: int = None
    max_repeats: int = 30
    solver_n_cells: tuple[int, ...] = ()
    solver_max_seconds: float = 30.0
    backend_time_limit_s: float = 600.0
    time_budget_s: float | None = None


@dataclass(frozen=True)
class PhysicsSettings(Section):
    """``training.physics`` (with a problem's overrides merged key by key): the physics-informed losses."""

    weight: float = None
    ic_weight: float = None
    collocation_points: int = None
    sampler: str = None
    clamp_states: bool = False
    rhs_dtype: str | None = None


@dataclass(frozen=True)
class TrainingSettings(Section):
    """The ``training`` settings of one problem's runs, its ``training.overrides`` applied. ``as_dict()`` is
    what a run records as its settings (the grid's own keys, ``ensemble``, ``cohort``, ``side_by_side`` and
    ``overrides``, left out)."""

    problem: str = None
    architecture: str = None
    hidden: tuple[tuple[str, int], ...] = ()
    architectures: Mapping[str, tuple] = None
    seeds: tuple[int, ...] = ()
    iterations: int = None
    batch_size: int | None = None
    optimizer: str = None
    lr: float = None
    lr_schedule: str = None
    lr_final: float = None
    val_every: int = None
    patience: int | None = None
    lbfgs_iterations: int = 0
    lbfgs_dtype: str = "float32"
    lbfgs_weight_decay: float = 0.0
    monitor: str = "val_mae"
    engine: str = "auto"
    device: str = "auto"
    data_loss: str = "mse"
    sampling: str = "uniform"
    sampling_strength: float = 4.0
    output_bounds: Mapping[str, tuple[float, float]] | None = None
    physics: PhysicsSettings = None

    @classmethod
    def for_problem(cls, training: Mapping, problem: str) -> "TrainingSettings":
        """The ``training`` section with ``problem``'s ``overrides`` applied (``physics`` merged key by key)."""
        t = copy.deepcopy(dict(training))
        t.pop("ensemble", None)  # a setting of the grid, not of a run: runs' records stay as they were
        t.pop("cohort", None)  # how the grid's jobs are cut (training/cohort.py), not what a run computes
        t.pop("side_by_side", None)  # likewise (training/side_by_side.py)
        over = copy.deepcopy(t.pop("overrides", {}).get(problem, {}))
        phys = over.pop("physics", {})
        t.update(over)
        t["physics"] = {**t.get("physics", {}), **phys}
        hidden = t["architectures"].get(t["architecture"], ())
        return cls.of(t, problem=problem, hidden=frozen(hidden), physics=PhysicsSettings.of(t["physics"]))


@dataclass(frozen=True, eq=False)
class Study:
    """The validated configuration of a study (see the module's docstring); build it with
    :func:`surrogates.config.validate_config` or :func:`~surrogates.config.load_config`."""

    results_dir: str
    model_paths: tuple[str, ...]
    solver: SolverSettings
    datasets: DatasetSettings
    speed: SpeedSettings
    problems: Mapping[str, Problem] = field(repr=False)
    seeds: tuple[int, ...]
    architecture: str
    architectures: Mapping[str, tuple[tuple[str, int], ...]]
    surrogates: Mapping[str, tuple[str, ...]]
    ensemble: bool
    cohort: bool
    side_by_side: bool
    settings: Mapping[str, TrainingSettings] = field(repr=False)
    raw: Mapping = field(repr=False)

    @classmethod
    def of(cls, cfg: Mapping, problems: Mapping[str, Problem] | None = None) -> "Study":
        """The study of a validated configuration (``problems``: those already built from it)."""
        problems = problems if problems is not None else {n: problem_from_config(n, cfg) for n in cfg["problems"]}
        t = cfg["training"]
        return cls(
            results_dir=cfg["results_dir"], model_paths=frozen(cfg.get("model_paths") or ()),
            solver=SolverSettings.of(cfg["solver"]), datasets=DatasetSettings.of(cfg["datasets"]),
            speed=SpeedSettings.of(cfg["speed"]), problems=ReadOnly(problems),
            seeds=tuple(int(s) for s in t["seeds"]), architecture=t["architecture"],
            architectures=frozen(t["architectures"]), surrogates=frozen(t["surrogates"]),
            ensemble=bool(t.get("ensemble", True)), cohort=bool(t.get("cohort", False)),
            side_by_side=bool(t.get("side_by_side", False)),
            settings=ReadOnly({n: TrainingSettings.for_problem(t, n) for n in cfg["problems"]}),
            raw=frozen(cfg))

    def as_dict(self) -> dict:
        """The validated configuration (a fresh, mutable copy): what is written back or hashed."""
        return thawed(self.raw)

    def __reduce__(self):
        """Pickled as its configuration (a cell model does not pickle): unpickling builds the problems again."""
        return Study.of, (self.as_dict(),)

    def problem_spec(self, name: str) -> dict:
        """Problem ``name``'s section of the configuration as validated (``problems.<name>``), or ``{}``."""
        return thawed(self.raw["problems"].get(name, {}))

    # ------------------------------------------------------------ problems and their settings
    def problem(self, name: str) -> Problem:
        """The problem called ``name``."""
        if name not in self.problems:
            raise InvalidInputError(f"unknown problem {name!r}; valid: {sorted(self.problems)}")
        return self.problems[name]

    def rollout_sources(self, p: Problem) -> dict | None:
        """The trajectory problem a step problem's ITNN is rolled out over (``{name: Problem}``); None for others."""
        return {p.test_from: self.problem(p.test_from)} if p.kind == "step" else None

    def training(self, problem: str) -> TrainingSettings:
        """The training settings of ``problem``'s runs (``training`` with its overrides; the same for every
        surrogate kind: overrides are per problem)."""
        self.problem(problem)
        return self.settings[problem]

    # ------------------------------------------------------------ the grid
    def training_grid(self) -> list[tuple[str, str, int, str, int]]:
        """Every training run of the study: ``(problem, surrogate, n, arch, seed)``, in a fixed order (the
        workflow's targets, the accuracy table's rows and the runners of programs all take this list)."""
        out = []
        for kind, problems in self.surrogates.items():
            for p in problems:
                arch = self.training(p).architecture
                for n in self.problem(p).sizes:
                    for seed in self.seeds:
                        out.append((p, kind, int(n), arch, int(seed)))
        return out

    @property
    def ensembles_on(self) -> bool:
        """Whether the grid has seed ensembles (``training.ensemble``, with at least two seeds)."""
        return self.ensemble and len(self.seeds) >= 2

    def ensemble_grid(self) -> list[tuple[str, str, int, str, tuple[int, ...]]]:
        """The ensembles of the study: one per ``(problem, surrogate, n, arch)`` of :meth:`training_grid`,
        over its seeds, in the same order; none without :attr:`ensembles_on`."""
        if not self.ensembles_on:
            return []
        out = []
        for p, kind, n, arch, _ in self.training_grid():
            if (p, kind, n, arch, self.seeds) not in out:
                out.append((p, kind, n, arch, self.seeds))
        return out

    def speed_problem_of(self, kind: str) -> str:
        """The problem whose ``kind`` surrogate the speed benchmark times: ``speed.problem`` itself, or for an
        iterative surrogate the step problem judged on it (``test_from``, e.g. D for C)."""
        target = self.speed.problem
        trained = self.surrogates.get(kind, ())
        if target in trained:
            return target
        for name in trained:
            q = self.problems.get(name)
            if q is not None and q.kind == "step" and q.test_from == target:
                return name
        raise InvalidInputError(f"config key speed.surrogates: no {kind!r} is trained on {target!r} or on a step "
                                f"problem judged on it (see training.surrogates)")

    def speed_model(self, kind: str) -> tuple[str, int, int, str]:
        """``(problem, n, seed, arch)`` of the ``kind`` network the speed benchmark times: largest n, first seed."""
        p = self.speed_problem_of(kind)
        return p, max(self.problem(p).sizes), self.seeds[0], self.training(p).architecture

    def speed_ensembles(self) -> list[tuple[str, str, int, str, tuple[int, ...]]]:
        """The seed ensembles the speed benchmark times: ``(kind, problem, n, arch, seeds)`` for each kind of
        ``speed.ensembles``, the same network as its kind's timed one (largest n) averaged over every seed;
        none where the grid has no ensembles, as in the accuracy table."""
        if not self.ensembles_on:
            return []
        out = []
        for kind in self.speed.ensembles:
            p, n, _, arch = self.speed_model(kind)
            out.append((kind, p, n, arch, self.seeds))
        return out

    def cohort_kinds(self) -> list[str]:
        """The surrogate kinds whose seeds train together, one job per (problem, kind, n, arch)
        (``training.cohort``, with at least two seeds; with ``training.side_by_side`` every kind, those that
        cannot be stacked trained side by side in the job, :mod:`~training.side_by_side`); the others train
        one job per seed."""
        if not self.cohort or len(self.seeds) < 2:
            return []
        if self.side_by_side:  # the other kinds' seeds share the GPU in one process
            return list(self.surrogates)
        return [k for k in COHORT_KINDS if k in self.surrogates]

    def training_priority(self, problem: str, kind: str) -> int:
        """Snakemake priority of a training job (rules train, train_cohort): the longest first, so that jobs
        running side by side end together instead of one long job running alone at the end (longest
        processing time first). 2: a run with an L-BFGS polish (hh_m's: ~60% of the grid's training time on
        an H100, ~40% on the 2-core CPU); 1: a physics-informed kind (a PINN step costs 3-5x a data-only
        one); 0: a data-only kind."""
        if int(self.training(problem).lbfgs_iterations or 0) > 0:
            return 2
        return 1 if kind in PHYSICS_KINDS else 0


COHORT_KINDS = ("ddnn", "itnn")  # data-only kinds: their seeds can train as one stacked model
PHYSICS_KINDS = ("pinn", "pinn_seed")  # kinds whose steps carry a physics residual
