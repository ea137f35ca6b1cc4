"""An ITNN rolled out over other trajectory problems' held-out test sets ("transfer").

An ITNN learns a step problem's one-step map (D: the FHN state over 0.1 time units, over a box of states and
currents). The accuracy table scores it over the test trajectories of its ``test_from`` problem (C). The same
map answers every trajectory problem of the same model whose initial states and parameters lie inside the step
problem's box (B: I fixed at 0.08), so the pipeline also rolls it out over those problems' test sets: each
seed's network and, with two seeds or more, their mean (the ensemble). Nothing of those test sets is seen
before scoring: the networks are trained and selected on the step problem's own rows.

Nothing at module level imports torch: the workflow calls :func:`transfer_grid` while it parses.
"""
from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInputError

from .problems import Problem
from .study import Study


def _span(p: Problem, name: str) -> tuple[float, float]:
    """The values a trajectory problem gives ``name`` (an initial state ``<state>0`` or a parameter): its sampled
    range, its fixed value, or the model's default."""
    if name in p.ranges:
        lo, hi = p.ranges[name]
        return float(lo), float(hi)
    if name in p.fixed:
        return float(p.fixed[name]), float(p.fixed[name])
    m = p.model
    if name.endswith("0") and name[:-1] in m.states:
        v = m.states[name[:-1]].initial
    else:
        v = m.parameters[name].default
    return float(v), float(v)


def uncovered(step: Problem, src: Problem) -> str | None:
    """Why the ITNN of ``step`` cannot be rolled out over ``src``'s trajectories, or ``None`` when it can (same
    model; every initial state and parameter value of ``src`` inside ``step``'s input box)."""
    if step.kind != "step":
        return f"problem {step.name!r} is not a step problem (kind {step.kind!r}): no ITNN learnt it"
    if src.kind != "trajectory":
        return f"an ITNN rolls out over trajectory problems; {src.name!r} is {src.kind!r}"
    if src.model.name != step.model.name:
        return f"problem {src.name!r} uses model {src.model.name!r}, the ITNN of {step.name!r} learnt {step.model.name!r}"
    lo, hi = step.box()
    for i, name in enumerate(step.inputs):
        key = f"{name}0" if name in step.model.states else name
        a, b = (0.0, src.t_end - step.step) if name == "t" else _span(src, key)  # the rollout's step start times
        if a < lo[i] or b > hi[i]:
            return (f"problem {src.name!r} gives {key} in [{a:g}, {b:g}], outside the ITNN's training range of {name} "
                    f"[{lo[i]:g}, {hi[i]:g}] (problem {step.name!r})")
    return None


def covered(step: Problem, problems: Mapping[str, Problem]) -> list[str]:
    """The trajectory problems among ``problems`` that the ITNN of ``step`` can be rolled out over, other than
    its own ``test_from`` (which the accuracy table scores already), in the configuration's order."""
    return [name for name, src in problems.items()
            if name != step.test_from and src.kind == "trajectory" and uncovered(step, src) is None]


def transfer_grid(study: Study) -> list[tuple[str, str, int, str, str]]:
    """``(step problem, "itnn", n, arch, target)`` for every ITNN configuration of the training grid and every
    trajectory problem it covers other than its own ``test_from`` (:func:`covered`)."""
    out = []
    problems = {name: study.problem(name) for name in study.problems}
    for p, kind, n, arch, _ in study.training_grid():
        if kind != "itnn":
            continue
        for name in covered(problems[p], problems):
            if (p, kind, n, arch, name) not in out:
                out.append((p, kind, n, arch, name))
    return out


def expected_transfer(study: Study, problem: str, n: int, arch: str, target: str, seeds) -> dict:
    """What a transfer's metrics file must record: its networks' runs and the test set it was scored on."""
    from .datasets import expected_provenance
    from .scoring import expected_model

    return {"problem": problem, "surrogate": "itnn", "n_train": int(n), "arch": arch, "target": target,
            "members": [expected_model(study, problem, "itnn", n, int(s), arch) for s in sorted(seeds)],
            "target_test": expected_provenance(study.problem(target), study, "test")}


def score_transfer(study: Study, problem: str, n: int, arch: str, checkpoints, target: str, test_path,
                   out_path=None) -> dict:
    """Roll each checkpoint (and, with two or more, their mean) out over ``target``'s test trajectories.
    Every checkpoint is checked to be the run it stands for and the test set to be ``target``'s; writes the
    result to ``out_path`` (JSON, atomically) when given."""
    import dataclasses

    import numpy as np

    from core.io import load_dataset, write_record

    from .datasets import expected_provenance
    from .ensemble import Ensemble, load_members
    from .scoring import evaluate

    step, src = study.problem(problem), study.problem(target)
    why = uncovered(step, src)
    if why:
        raise InvalidInputError(why)
    members, seeds = load_members(study, problem, "itnn", n, arch, checkpoints)
    test, meta = load_dataset(test_path, expect=expected_provenance(src, study, "test"))
    p = dataclasses.replace(step, test_from=target)
    keys = ("mae", "max_abs_err", "rel_l2")
    runs = []
    for seed, m in zip(seeds, members):
        met, extras = evaluate(m, p, test, {target: src})
        runs.append({"seed": seed, **{k: float(met[k]) for k in keys}, "rollout_bounded": extras["rollout_bounded"]})
    ensemble = None
    if len(members) > 1:
        met, extras = evaluate(Ensemble(members), p, test, {target: src})
        ensemble = {**{k: float(met[k]) for k in keys}, "rollout_bounded": extras["rollout_bounded"]}
    result = {"problem": problem, "surrogate": "itnn", "n_train": int(n), "arch": arch, "target": target,
              "seeds": sorted(seeds), "runs": runs, "ensemble": ensemble,
              "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
              "std": {k: float(np.std([r[k] for r in runs])) for k in keys},
              "euler_floor": meta.get("euler_floor"),
              "provenance": expected_transfer(study, problem, n, arch, target, seeds)}
    if out_path is not None:
        result = write_record(Path(out_path), result)
    return result
