"""Copy a finished run's tables into a tracked folder, with what the run was and how complete it is.

    python -m benchmarks.reference                      # results/ (config/config.yaml) -> benchmarks/reference/
    python -m benchmarks.reference --config config/quick.yaml --out /tmp/ref
    python -m benchmarks.reference --evaluate benchmarks/reference/model_C/best_model.pth   # a shipped network
    python -m benchmarks.reference --docs [--check]     # the docs' results tables from this folder (benchmarks/docs.py)

Copied: the accuracy and speed tables (CSV and Markdown) and the solver-throughput CSV, where the run made them,
the accuracy per output where the run made it, and the figures named by ``--figure`` (e.g.
``--figure trajectories_LR1991.png``).
Written beside them: ``run.md``, which names the machine, the date, the code versions the models were trained
with, and every job of the configured training grid that has no metrics.json (the copy is then marked
**partial**), with the training time each part of the grid took, and (``--snakemake-log``) the run's wall time and the
seconds of each rule, read from Snakemake's own log (``benchmarks.runlog``).
"""
from __future__ import annotations

import datetime as _dt
import sys
from collections import defaultdict
from pathlib import Path

from core.errors import InvalidInputError
from core.io import read_json, write_bytes, write_text
from core.layout import Layout
from core.machine import describe_machine, machine_info
from core.provenance import project_version

from .cli import parser

TABLES = [("accuracy", "csv"), ("accuracy", "md"), ("speedup", "csv"), ("speedup", "md")]
BENCHMARKS = ["solver_throughput.csv"]
OPTIONAL = [("accuracy_by_output", "csv"), ("accuracy_by_output", "md")]  # copied where the run made them


def grid_state(cfg, layout: Layout) -> dict:
    """Which configured training jobs finished, their code versions, and training seconds per part."""
    from surrogates.config import training_grid

    done, missing, versions = [], [], set()
    seconds = defaultdict(float)
    for job in training_grid(cfg):
        f = layout.run_file("metrics", *job)
        if not f.exists():
            missing.append(job)
            continue
        m = read_json(f, "metrics file")
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


def copy_reference(cfg, out: Path, note: str | None = None, info: dict | None = None, logs=(), figures=()) -> dict:
    """Copy the run's tables (and the named ``figures``, files of its figures folder) under ``out`` and write
    ``out/run.md`` (with the wall time and seconds per rule that the Snakemake ``logs`` record, when given).
    Returns the grid state."""
    from .runlog import markdown, read_logs

    timing = markdown(read_logs(logs)) if logs else None  # a bad log is refused before anything is written
    layout = Layout(cfg["results_dir"])
    state = grid_state(cfg, layout)
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


def evaluate_checkpoint(path, cfg) -> dict:
    """Score a checkpoint on its problem's held-out test set, made afresh from the configuration (the same
    seeds, so the same rows as the run that trained it); the checkpoint's problem fingerprint must match the
    configuration's problem. Returns the test metrics (t = 0 excluded) and the Euler floor."""
    from surrogates.datasets import make_test
    from surrogates.network import load_checkpoint
    from surrogates.problems import problem_from_config
    from surrogates.train import evaluate

    _, meta = load_checkpoint(path)
    prov = (meta or {}).get("provenance") or {}
    if "problem" not in prov:
        raise InvalidInputError(f"{path}: the checkpoint records no problem in its provenance")
    p = problem_from_config(prov["problem"], cfg)
    model, _ = load_checkpoint(path, expect={"problem": p.name, "problem_fingerprint": p.fingerprint})
    problems = {p.test_from: problem_from_config(p.test_from, cfg)} if p.kind == "step" else None
    d = cfg["datasets"]
    test, floor = make_test(p, d["test_seed"], d["seed"], problems, float(cfg["solver"]["floor_rtol"]))
    metrics, _ = evaluate(model, p, test, {**(problems or {}), p.name: p})
    return {"problem": p.name, **{k: metrics[k] for k in ("mae", "max_abs_err", "rel_l2")},
            "euler_floor_mae": floor["mae"], "euler_floor_max_abs_err": floor["max_abs_err"]}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/reference"), help="tracked folder to write")
    ap.add_argument("--note", default=None, help="one line written into run.md (e.g. how long the run took)")
    ap.add_argument("--snakemake-log", type=Path, nargs="+", default=[], metavar="LOG",
                    help="the run's .snakemake/log/*.snakemake.log (several: a resumed run, in order): its wall "
                         "time and the seconds of each rule go into run.md")
    ap.add_argument("--figure", nargs="+", default=[], metavar="FILE",
                    help="also copy these figures of the run (file names in its figures folder, e.g. "
                         "trajectories_LR1991.png)")
    ap.add_argument("--evaluate", type=Path, default=None, metavar="CHECKPOINT",
                    help="instead: score this checkpoint on its problem's held-out test set and print the errors")
    ap.add_argument("--docs", action="store_true",
                    help="instead: rewrite the generated results blocks of README.md and benchmarks/README.md from "
                         "benchmarks/reference/ (benchmarks/docs.py)")
    ap.add_argument("--check", action="store_true", help="with --docs: change nothing, exit 1 where a block is stale")
    a = ap.parse_args(argv)
    if a.docs:
        from . import docs
        return docs.main(check=a.check)
    from surrogates.config import load_config

    cfg = load_config(*a.config)
    if a.evaluate is not None:
        try:
            r = evaluate_checkpoint(a.evaluate, cfg)
        except InvalidInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{a.evaluate}: problem {r['problem']}, held-out test set: MAE {r['mae']:.3g}, max abs err "
              f"{r['max_abs_err']:.3g}, rel L2 {r['rel_l2']:.3g} (Euler floor: MAE {r['euler_floor_mae']:.3g}, "
              f"max {r['euler_floor_max_abs_err']:.3g})")
        return 0
    try:
        state = copy_reference(cfg, a.out, a.note, logs=a.snakemake_log, figures=a.figure)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/run.md: {len(state['done'])} jobs done, {len(state['missing'])} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
