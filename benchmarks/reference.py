"""Copy a finished run's tables into a tracked folder, with what the run was and how complete it is.

    python -m benchmarks.reference                      # results/ (config/config.yaml) -> benchmarks/reference/
    python -m benchmarks.reference --config config/quick.yaml --out /tmp/ref
    python -m benchmarks.reference --evaluate benchmarks/reference/model_C/best_model.pth   # a shipped network
    python -m benchmarks.reference --docs [--check]     # the docs' results tables from this folder (benchmarks/docs.py)
    python -m benchmarks.reference --evaluate benchmarks/reference/model_C/best_model.pth --fresh-seeds 1 2 3

Copied: the accuracy and speed tables (CSV and Markdown) and the solver-throughput CSV, where the run made them,
the accuracy per output where the run made it, and the figures named by ``--figure`` (e.g.
``--figure trajectories_LR1991.png``).
Written beside them: ``run.md``, which names the machine, the date, the code versions the models were trained
with, and every job of the configured training grid that has no metrics.json (the copy is then marked
**partial**), with the training time each part of the grid took, and the run's times and the seconds of each rule,
read from the records of Snakemake's ``benchmark:`` directive where the run has them (``benchmarks.runlog``).

``--evaluate`` scores shipped networks instead: on their problem's held-out test set, made afresh from the
configuration, and (``--fresh-seeds``) on independent sets of fresh trajectories, each as many as the test set,
drawn with a Sobol seed that no dataset uses and labelled by the same Euler solver. An ITNN (a step problem's
network, e.g. ``model_D_itnn``) is rolled out over the sets of its problem's ``test_from`` (C) and of every other
trajectory problem inside its input box (B). The maximum error is a
tail statistic: over more trajectories it can only grow, so each set's maximum is printed on its own.
"""
from __future__ import annotations

import datetime as _dt
import sys
from collections import defaultdict
from pathlib import Path

from core.errors import InvalidInputError
from core.io import read_record, write_bytes, write_text
from core.layout import Layout
from core.machine import describe_machine, machine_info
from core.provenance import project_version

from . import cli
from .cli import parser

TABLES = [("accuracy", "csv"), ("accuracy", "md"), ("speedup", "csv"), ("speedup", "md")]
BENCHMARKS = ["solver_throughput.csv"]
OPTIONAL = [("accuracy_by_output", "csv"), ("accuracy_by_output", "md")]  # copied where the run made them


def grid_state(study, layout: Layout) -> dict:
    """Which configured training jobs finished, their code versions, and training seconds per part."""
    done, missing, versions = [], [], set()
    seconds = defaultdict(float)
    for job in study.training_grid():
        f = layout.run_file("metrics", *job)
        if not f.exists():
            missing.append(job)
            continue
        m = read_record(f, "metrics file")
        done.append(job)
        versions.add(str(m.get("version", "?")))
        seconds[(job[0], job[1])] += float(m.get("train_seconds") or 0.0)
    return {"done": done, "missing": missing, "versions": sorted(versions), "seconds": dict(seconds)}


def summary(state: dict, copied: list[str], absent: list[str], info: dict, note: str | None,
            kept: list[str] = (), timing: str | None = None) -> str:
    n_done, n_missing = len(state["done"]), len(state["missing"])
    total = n_done + n_missing
    lines = [
        "# Reference run" + (" (**partial**)" if n_missing or absent else ""),
        "",
        f"- copied: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, by `python -m benchmarks.reference`"
        f" at {project_version()}",
        f"- machine: {describe_machine(info)}; torch {info.get('torch')}, numba {info.get('numba')},"
        f" onnxruntime {info.get('onnxruntime')}",
        f"- training grid: {n_done} of {total} configured jobs have metrics"
        + (f"; **missing {n_missing}**: " + ", ".join("/".join(map(str, j)) for j in state["missing"])
           if n_missing else " (complete)"),
        f"- models trained by code version(s): {', '.join(state['versions']) or 'none'}",
        f"- files: {', '.join(copied) or 'none'}" + (f"; **not made by the run**: {', '.join(absent)}" if absent else ""),
    ]
    if kept:
        lines += [f"- **kept from an earlier copy** (not made by this run: an earlier run's, of other models and "
                  f"code; its run.md is in this folder's git history): {', '.join(kept)}"]
    if note:
        lines += [f"- note: {note}"]
    if state["seconds"]:
        lines += ["", "Training time per part of the grid (sum over sizes and seeds, one CPU thread per job):", "",
                  "| problem | surrogate | jobs | train seconds |", "|---|---|---:|---:|"]
        count = defaultdict(int)
        for job in state["done"]:
            count[(job[0], job[1])] += 1
        for (p, s), sec in sorted(state["seconds"].items()):
            lines.append(f"| {p} | {s} | {count[(p, s)]} | {sec:.0f} |")
    if timing:
        lines += ["", timing.rstrip("\n")]
    return "\n".join(lines) + "\n"


def copy_reference(study, out: Path, note: str | None = None, info: dict | None = None, figures=()) -> dict:
    """Copy the run's tables (and the named ``figures``, files of its figures folder) under ``out`` and write
    ``out/run.md`` (with the run's times and seconds per rule from its jobs' ``benchmark:`` records, where it
    has them). Returns the grid state."""
    from .runlog import markdown, read_records

    layout = Layout(study.results_dir)
    # a bad record is refused before anything is written
    timing = markdown(read_records(layout.job_records)) if layout.job_records.is_dir() else None
    state = grid_state(study, layout)
    sources = [layout.table(name, ext) for name, ext in TABLES] + [layout.benchmark(b) for b in BENCHMARKS]
    if not any(s.exists() for s in sources) and not state["done"]:
        raise InvalidInputError(f"nothing to copy: {layout.root} has no tables and no trained models "
                                f"(run `snakemake --cores all` first)")
    named = [layout.figure(*Path(f).name.rsplit(".", 1)) if "." in Path(f).name else layout.root / "figures" / f
             for f in figures]
    for f in named:
        if not f.is_file():
            raise InvalidInputError(f"--figure {f.name}: the run made no such figure ({f})")
    out.mkdir(parents=True, exist_ok=True)
    copied, absent, kept = [], [], []
    for src in [layout.table(name, ext) for name, ext in OPTIONAL if layout.table(name, ext).exists()] + named:
        write_bytes(out / src.name, src.read_bytes())
        copied.append(src.name)
    for src in sources:
        if src.exists():
            write_bytes(out / src.name, src.read_bytes())
            copied.append(src.name)
        else:
            absent.append(src.name)
            if (out / src.name).exists():  # an earlier copy's file stays, said to be one
                kept.append(src.name)
    info = machine_info() if info is None else info
    write_text(out / "run.md", summary(state, copied, absent, info, note, kept, timing))
    return state


def dataset_seeds(study) -> set[int]:
    """The Sobol seeds the configured datasets draw from: training, validation (``seed + 1``) and test."""
    d = study.datasets
    return {int(d.seed), int(d.seed) + 1, int(d.test_seed)}


def check_fresh_seed(study, seed) -> int:
    """``seed`` when it can draw fresh trajectories: an integer >= 0 that none of the datasets uses."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"a fresh seed must be an integer >= 0, got {seed!r}")
    if seed in dataset_seeds(study):
        raise InvalidInputError(f"fresh seed {seed} is one the datasets use ({sorted(dataset_seeds(study))}); take another")
    return seed


def _checkpoint_problem(path, study):
    """The network of a checkpoint and its configured problem (the provenance's fingerprint must match)."""
    from surrogates.network import load_checkpoint

    _, meta = load_checkpoint(path)
    prov = (meta or {}).get("provenance") or {}
    if "problem" not in prov:
        raise InvalidInputError(f"{path}: the checkpoint records no problem in its provenance")
    p = study.problem(prov["problem"])
    model, _ = load_checkpoint(path, expect={"problem": p.name, "problem_fingerprint": p.fingerprint})
    return model, p


def rollout_problems(path, study) -> list[str]:
    """The trajectory problems whose sets ``--evaluate`` scores a checkpoint on: its own problem, or for an
    ITNN (a step problem's network) its ``test_from`` and every other trajectory problem inside its input box
    (:func:`surrogates.transfer.covered`; FitzHugh-Nagumo's D: C, then B)."""
    from surrogates.transfer import covered

    _, p = _checkpoint_problem(path, study)
    if p.kind != "step":
        return [p.name]
    return [p.test_from] + covered(p, dict(study.problems))


def evaluate_checkpoint(path, study, fresh_seed: int | None = None, on: str | None = None) -> dict:
    """Score a checkpoint on its problem's held-out test set, made afresh from the configuration (the same
    seeds, so the same rows as the run that trained it); the checkpoint's problem fingerprint must match the
    configuration's problem. Returns the test metrics (t = 0 excluded) and the Euler floor.

    An ITNN (a step problem's network) is rolled out over the test trajectories of ``on``: its problem's
    ``test_from`` by default, or another trajectory problem inside its input box (as
    :func:`surrogates.transfer.score_transfer` does).

    ``fresh_seed``: instead, on a set of fresh trajectories (as many as the test set) whose initial states
    and parameters are drawn with this Sobol seed, which must be none of the datasets' (trajectory problems,
    and step problems through the problem their rollouts are judged on)."""
    import dataclasses

    from surrogates.datasets import make_test
    from surrogates.scoring import evaluate
    from surrogates.transfer import uncovered

    model, p = _checkpoint_problem(path, study)
    problems = None
    if p.kind == "step":
        target = on or p.test_from
        src = study.problem(target)
        why = uncovered(p, src) if target != p.test_from else None
        if why:
            raise InvalidInputError(f"{path}: {why}")
        p = dataclasses.replace(p, test_from=target)
        problems = {target: src}
    elif on is not None and on != p.name:
        raise InvalidInputError(f"{path}: a network of {p.kind} problem {p.name!r} is scored on {p.name!r}'s sets "
                                f"only, not on {on!r} (other problems take a step problem's network)")
    d = study.datasets
    seed = d.test_seed
    if fresh_seed is not None:
        source = problems[p.test_from] if p.kind == "step" else p
        if source.uses_pool:
            raise InvalidInputError(f"problem {source.name!r} has one trace, whose every point is in its datasets: "
                                    f"there are no fresh trajectories to draw")
        seed = check_fresh_seed(study, fresh_seed)
    test, floor = make_test(p, seed, d.seed, problems, float(study.solver.floor_rtol))
    metrics, _ = evaluate(model, p, test, {**(problems or {}), p.name: p})
    return {"problem": p.name, "on": p.test_from if p.kind == "step" else p.name,
            "set": "held-out test set" if fresh_seed is None else f"fresh seed {fresh_seed}",
            "rows": int(len(test["X"])), **{k: metrics[k] for k in ("mae", "max_abs_err", "rel_l2")},
            "euler_floor_mae": floor["mae"], "euler_floor_max_abs_err": floor["max_abs_err"]}


def _evaluate(paths, study, fresh_seeds) -> int:
    """``--evaluate``: one line per checkpoint and set (an ITNN: per problem it is rolled out over); the range
    of the maxima over the fresh sets at the end of each."""
    try:
        for s in fresh_seeds:  # before any work
            check_fresh_seed(study, s)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        try:
            targets = rollout_problems(path, study)
        except InvalidInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for on in targets:
            try:
                results = [evaluate_checkpoint(path, study, on=on)]
                for s in fresh_seeds:
                    results.append(evaluate_checkpoint(path, study, s, on=on))
            except InvalidInputError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            r0 = results[0]
            what = f"problem {r0['problem']}" + (f" rolled out over {on}" if on != r0["problem"] else "")
            for r in results:
                print(f"{path}: {what}, {r['set']} ({r['rows']} rows, t = 0 not scored): MAE "
                      f"{r['mae']:.3g}, max abs err {r['max_abs_err']:.3g}, rel L2 {r['rel_l2']:.3g} (Euler floor: "
                      f"MAE {r['euler_floor_mae']:.3g}, max {r['euler_floor_max_abs_err']:.3g})", flush=True)
            if len(results) > 2:
                fresh = [r["max_abs_err"] for r in results[1:]]
                print(f"{path}: {what}: max abs err over the {len(fresh)} fresh sets: {min(fresh):.3g} to "
                      f"{max(fresh):.3g} (held-out test set: {r0['max_abs_err']:.3g})")
    return 0


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/reference"), help="tracked folder to write")
    ap.add_argument("--note", default=None, help="one line written into run.md (e.g. how long the run took)")
    ap.add_argument("--figure", nargs="+", default=[], metavar="FILE",
                    help="also copy these figures of the run (file names in its figures folder, e.g. "
                         "trajectories_LR1991.png)")
    ap.add_argument("--evaluate", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                    help="instead: score these checkpoints on their problem's held-out test set (an ITNN: rolled out over "
                         "the test sets of its test_from and of every other trajectory problem in its box) and print "
                         "the errors")
    ap.add_argument("--fresh-seeds", type=int, nargs="+", default=[], metavar="SEED",
                    help="with --evaluate: also on a set of fresh trajectories per seed (as many as the test set, "
                         "drawn with this Sobol seed, which no dataset may use)")
    ap.add_argument("--docs", action="store_true",
                    help="instead: rewrite the generated results blocks of README.md and benchmarks/README.md from "
                         "benchmarks/reference/ (benchmarks/docs.py)")
    ap.add_argument("--check", action="store_true", help="with --docs: change nothing, exit 1 where a block is stale")
    a = ap.parse_args(argv)
    if a.docs:
        from . import docs
        return docs.main(check=a.check)
    from surrogates.config import load_config

    study = load_config(*a.config)
    if a.evaluate is not None:
        return _evaluate(a.evaluate, study, a.fresh_seeds)
    if a.fresh_seeds:
        ap.error("--fresh-seeds goes with --evaluate")
    try:
        state = copy_reference(study, a.out, a.note, figures=a.figure)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/run.md: {len(state['done'])} jobs done, {len(state['missing'])} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
