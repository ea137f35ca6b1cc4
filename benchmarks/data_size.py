"""Is a data-only surrogate's error at large n limited by the data or by the training budget?

The configuration trains every size n with the same number of optimiser steps (``training.iterations``), so
n = 100000 sees a tenth of the passes over its rows that n = 10000 does. This program trains the ``ddnn`` of
each problem at each size under two budgets and tabulates the test errors side by side:

* ``steps``: the configuration's fixed step count for every n (``--steps``, default ``training.iterations``);
* ``passes``: the same number of passes over the training rows for every n (``--passes``), i.e.
  ``passes x steps_per_pass(n)`` steps, a pass being ``floor(n / batch_size)`` minibatches (the data loss
  starts a new shuffled pass when the rest of one is shorter than a batch), or one full-batch step when
  the batch holds every row;
* ``long`` (asked for by ``--budgets``): for every n the steps that the problem's largest configured size
  gets at equal passes. It separates the data from the compute: at equal passes a larger n also gets
  more steps, and this budget gives the smaller n those steps too.

Everything else is the configuration's (architecture, optimiser, learning-rate schedule over the run's
steps, seeds). Runs of one step count share a folder, ``results_dir/data_size/steps<S>/`` (the layout of
:mod:`core.layout`, datasets shared in ``results_dir/data_size/datasets``), so a run that both budgets ask
for trains once, and a run whose ``metrics.json`` exists is read, not trained again (the study resumes).

    python -m benchmarks.data_size --workers 2                 # B and C at 1k, 10k, 100k, both budgets
    python -m benchmarks.data_size --problems C --sizes 1000 10000 --passes 512 --seeds 0 1
    python -m benchmarks.data_size --collect                   # only tabulate the runs that have finished

Writes one row per (problem, n, budget) to ``--out`` (CSV, with the machine) and beside it the same table
in Markdown under a header naming the machine and versions, ending with what the numbers say; the rows of
every run go to ``results_dir/benchmarks/data_size_runs.csv``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from benchmarks import cli
from core.errors import InvalidInputError, PipelineError
from core.io import write_text
from core.layout import Layout

BUDGETS = ("steps", "passes", "long")
DEFAULT_BUDGETS = ("steps", "passes")
SURROGATE = "ddnn"
DEFAULT_OUT = Path("benchmarks/reference/data_size.csv")


def steps_per_pass(n: int, batch_size: int | None) -> int:
    """Optimiser steps in one pass over ``n`` training rows: ``floor(n / batch_size)`` minibatches, or one
    step when the batch holds every row (``None``: full batch)."""
    if n < 1:
        raise InvalidInputError(f"n (training rows) must be at least 1, got {n}")
    if batch_size is None or batch_size >= n:
        return 1
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    return n // batch_size


def budget_steps(budget: str, n: int, batch_size: int | None, steps: int, passes: int, n_max: int | None = None) -> int:
    """The step count of ``budget`` at size ``n``: ``steps`` for every n, ``passes`` passes over n rows, or
    (``long``) ``passes`` passes over ``n_max`` rows for every n."""
    if budget == "steps":
        return steps
    if budget == "passes":
        return passes * steps_per_pass(n, batch_size)
    if budget == "long":
        if n_max is None:
            raise InvalidInputError("the long budget needs the largest size n_max")
        return passes * steps_per_pass(n_max, batch_size)
    raise InvalidInputError(f"unknown budget {budget!r}; valid: {list(BUDGETS)}")


def passes_of(steps: int, n: int, batch_size: int | None) -> float:
    """Passes over ``n`` rows that ``steps`` optimiser steps make."""
    return steps / steps_per_pass(n, batch_size)


def plan(study, problems, sizes, budgets, steps: int, passes: int) -> list[dict]:
    """One entry per (problem, n, budget, seed): the run ``(problem, "ddnn", n, arch, seed)`` of the
    configuration, its step count and passes. A problem without a ddnn in ``training.surrogates`` or a size
    the problem does not have is an error naming it."""
    from benchmarks.surrogate_accuracy import select_runs

    if not problems or not sizes or not budgets:
        raise InvalidInputError("give at least one problem, one size and one budget")
    out = []
    for p in problems:
        if p not in study.surrogates.get(SURROGATE, ()):
            raise InvalidInputError(f"problem {p!r} has no {SURROGATE} in training.surrogates "
                                    f"(it has: {list(study.surrogates.get(SURROGATE, ()))})")
        s = study.training(p)
        if s.patience is not None:
            raise InvalidInputError(f"training.patience must be null for problem {p!r}: a budget is a step count "
                                    f"and early stopping would cut it")
        n_max = max(int(m) for m in study.problem(p).sizes)
        for n in sizes:
            runs = select_runs(study, [f"{p}:{SURROGATE}:{n}"])
            for budget in budgets:
                k = budget_steps(budget, n, s.batch_size, steps, passes, n_max)
                for run in runs:
                    out.append({"problem": p, "n_train": int(n), "budget": budget, "steps": k,
                                "passes": passes_of(k, n, s.batch_size), "run": run})
    return out


def _results_at(study, root):
    """``study`` with its ``results_dir`` at ``root``."""
    from surrogates.config import validate_config

    return validate_config({**study.as_dict(), "results_dir": str(root)})


def base_config(study):
    """``study`` with ``results_dir`` at ``results_dir/data_size``, where the shared datasets are."""
    return _results_at(study, Layout(study.results_dir).root / "data_size")


def budget_config(study, steps: int):
    """``study`` with its results below ``results_dir/data_size/steps<steps>`` (datasets shared by a link to
    ``results_dir/data_size/datasets``)."""
    base = Layout(study.results_dir).root / "data_size"
    root = base / f"steps{steps}"
    (base / "datasets").mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    link = root / "datasets"
    if not link.exists():
        if link.is_symlink():  # a dangling link
            link.unlink()
        link.symlink_to(Path("..") / "datasets", target_is_directory=True)
    return _results_at(study, root)


def metrics_path(study, entry: dict) -> Path:
    """Where the run of ``entry`` writes its metrics (a lookup: nothing is made or validated)."""
    p, kind, n, arch, seed = entry["run"]
    root = Layout(study.results_dir).root / "data_size" / f"steps{entry['steps']}"
    return Layout(root).run_file("metrics", p, kind, n, arch, seed)


def train(study, entries, workers: int = 1, threads: int = 1) -> None:
    """Train the entries' runs that have no metrics yet, the longest first, ``workers`` at a time."""
    from benchmarks.surrogate_accuracy import ensure_datasets, execute

    todo, seen = [], set()
    for e in sorted(entries, key=lambda e: -e["steps"]):
        key = (e["steps"], e["run"])
        if key in seen or metrics_path(study, e).exists():
            continue
        seen.add(key)
        todo.append((budget_config(study, e["steps"]), e["run"], e["steps"], threads))
    ensure_datasets(base_config(study), [j[1] for j in todo])  # into the shared folder, before the workers start
    execute(todo, workers)


def collect(study, entries) -> tuple[pd.DataFrame, list[dict]]:
    """The rows of the entries whose runs have finished, and the entries still missing."""
    from benchmarks.surrogate_accuracy import result_row
    from core.io import read_record

    rows, missing = [], []
    for e in entries:
        path = metrics_path(study, e)
        if not path.exists():
            missing.append(e)
            continue
        r = read_record(path)
        if r["iterations"] != e["steps"]:
            raise PipelineError(f"{path} is a run of {r['iterations']} steps, not {e['steps']}: remove its folder")
        rows.append({"budget": e["budget"], "steps": e["steps"], "passes": e["passes"], **result_row(r)})
    return pd.DataFrame(rows), missing


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (problem, n, budget): steps, passes, seeds, test MAE mean and std over the seeds, the
    max abs error's mean and range, mean training seconds."""
    cols = ["problem", "n_train", "budget", "steps", "passes", "seeds", "mae_mean", "mae_std", "max_abs_err_mean",
            "max_abs_err_min", "max_abs_err_max", "train_seconds_mean"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    g = runs.groupby(["problem", "n_train", "budget"], sort=False)
    out = g.agg(steps=("steps", "first"), passes=("passes", "first"), seeds=("seed", "count"),
                mae_mean=("mae", "mean"), mae_std=("mae", "std"), max_abs_err_mean=("max_abs_err", "mean"),
                max_abs_err_min=("max_abs_err", "min"), max_abs_err_max=("max_abs_err", "max"),
                train_seconds_mean=("train_seconds", "mean")).reset_index()
    return out[cols]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def verdict(table: pd.DataFrame) -> list[str]:
    """What the table says, one line per (problem, budget) with more than one size, then the answer for the
    largest two sizes: does the test MAE keep falling with n at equal passes, beyond the seeds' spread
    (the drop larger than the two stds together)?"""
    lines, falls, long_falls = [], {}, {}
    for (p, budget), t in table.groupby(["problem", "budget"], sort=False):
        t = t.sort_values("n_train")
        if len(t) < 2:
            continue
        chain = " -> ".join(f"{_fmt(m)} (n={n})" for m, n in zip(t["mae_mean"], t["n_train"]))
        a, b = t.iloc[-2], t.iloc[-1]
        drop = 1 - b["mae_mean"] / a["mae_mean"]
        spread = (a["mae_std"] if pd.notna(a["mae_std"]) else 0.0) + (b["mae_std"] if pd.notna(b["mae_std"]) else 0.0)
        real = a["mae_mean"] - b["mae_mean"] > spread
        word = "falls" if drop > 0 else "rises"
        lines.append(f"- {p}, {budget} budget: test MAE {chain}; from n={a['n_train']} to n={b['n_train']} it {word} "
                     f"by {abs(drop):.0%}, {'beyond' if real else 'within'} the seeds' spread (std sum {_fmt(spread)}); "
                     f"max abs error {' -> '.join(_fmt(x) for x in t['max_abs_err_mean'])}.")
        if budget == "passes":
            falls[p] = bool(real and drop > 0)
        if budget == "long":
            long_falls[p] = bool(real and drop > 0)
    if falls:
        yes = [p for p, f in falls.items() if f]
        no = [p for p, f in falls.items() if not f]
        if yes and not no:
            lines.append(f"\nAt equal passes the MAE keeps falling with n on {', '.join(yes)}: the flattening under the "
                         "fixed step budget is the budget's, not the data's.")
        elif no and not yes:
            lines.append(f"\nAt equal passes the MAE does not fall beyond the seeds' spread on {', '.join(no)}: more "
                         "passes do not lift the plateau, which is the data's (or the network's), not the budget's.")
        else:
            lines.append(f"\nAt equal passes the MAE keeps falling with n on {', '.join(yes)} (the budget limited them) "
                         f"but not beyond the seeds' spread on {', '.join(no)}.")
    if long_falls:
        yes = [p for p, f in long_falls.items() if f]
        no = [p for p, f in long_falls.items() if not f]
        if yes:
            lines.append(f"With the largest size's steps for every n (`long`), the larger n is still more accurate on "
                         f"{', '.join(yes)}: there the data, not only the extra steps, lowers the error.")
        if no:
            lines.append(f"With the largest size's steps for every n (`long`), the smaller n does as well on "
                         f"{', '.join(no)}: there the gain at equal passes was the extra steps, not the extra data.")
    return lines


def markdown(table: pd.DataFrame, info: dict, missing, steps: int, passes: int, batch: dict) -> str:
    """The table in Markdown under a header naming the machine and versions, then what it says and the
    configuration's default budget."""
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "torch") if k in info)
    batches = ", ".join(f"{p}: {b if b is not None else 'full'}" for p, b in batch.items())
    head = (f"Data-only surrogates ({SURROGATE}) at each training size n under different budgets: `steps`, the "
            f"configuration's {steps} optimiser steps for every n; `passes`, {passes} passes over the training rows for "
            f"every n (a pass: floor(n / batch) steps; batch {batches}); `long` (where present), for every n the steps "
            f"that the problem's largest size gets at {passes} passes. `python -m benchmarks.data_size`.\n\n"
            f"Machine: {info.get('cpu')} ({info.get('cores')} cores), {info.get('os')}; {versions}; "
            f"commit {cli.git_commit()}. One torch thread per run; train_seconds_mean is wall time on this machine "
            "while it ran other work too.\n"
            "mae_*: test MAE over the problem's held-out trajectories, mean and std over seeds; max_abs_err_*: the "
            "largest absolute test error, mean and range over seeds.\n\n")
    shown = table.assign(passes=[f"{x:.0f}" if x >= 100 else f"{x:.1f}" for x in table["passes"]])
    body = shown.to_markdown(index=False, floatfmt=".4g") + "\n" if not table.empty else "(no run has finished)\n"
    if missing:
        gone: dict = {}
        for e in missing:
            gone.setdefault((e["problem"], e["n_train"], e["budget"]), []).append(e["run"][4])
        body += "\nMissing (not run or not finished): " + "; ".join(
            f"{p} n={n} {b} (seed{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))})"
            for (p, n, b), v in sorted(gone.items())) + ".\n"
    lines = verdict(table)
    tail = "\n## What it says\n\n" + ("\n".join(lines) + "\n" if lines else "Too few sizes to compare.\n")
    tail += (
        "\n## The configuration's default\n\n"
        f"`training.iterations` is one fixed step budget ({steps} steps) for every n. It is the paper's protocol, and it "
        "gives every job of the grid the same cost, so the rows of one table are bought with equal compute and the "
        "workflow's jobs are the same size. Its price is that a larger n gets fewer passes over its rows; where the "
        "`passes` rows above fall further, the large-n rows of the accuracy table measure the budget, and a study "
        "of the data's limit should raise `training.iterations` for those sizes (e.g. "
        "`python -m benchmarks.surrogate_accuracy --only C:ddnn:100000 --iterations 200000`).\n")
    return head + body + tail


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    from benchmarks.surrogate_accuracy import overrides

    ap = cli.parser(__doc__)
    ap.add_argument("--problems", nargs="+", default=["B", "C"], help="problems with a ddnn (default: B C)")
    ap.add_argument("--sizes", type=cli.integer(1), nargs="+", help="training sizes n (default: each problem's sizes)")
    ap.add_argument("--budgets", nargs="+", choices=BUDGETS, default=list(DEFAULT_BUDGETS),
                    help="which budgets (default: steps passes)")
    ap.add_argument("--steps", type=cli.integer(1), help="steps of the fixed budget (default: training.iterations)")
    ap.add_argument("--passes", type=cli.integer(1), default=2048, help="passes of the equal-passes budget (default 2048)")
    ap.add_argument("--seeds", type=cli.integer(0), nargs="+", help="default: training.seeds")
    ap.add_argument("--workers", type=cli.integer(1), default=1, help="trainings at a time (processes)")
    ap.add_argument("--threads", type=cli.integer(1), default=1, help="torch threads per training (default 1)")
    ap.add_argument("--collect", action="store_true", help="train nothing: tabulate the runs that have finished")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the table (CSV; Markdown beside it), default {DEFAULT_OUT}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one configuration key (dotted path, YAML value)")
    a = ap.parse_args(argv)
    if a.out.suffix != ".csv":
        raise InvalidInputError(f"argument --out: give a .csv path (the Markdown goes beside it), got {a.out}")
    from core.config import merge, read_config
    from core.machine import machine_info
    from surrogates.config import validate_config

    study = cli.narrow(validate_config(merge(read_config(*a.config), overrides(a.set))),
                       {"--seeds": ("training.seeds", None if a.seeds is None else list(a.seeds))})
    for p in a.problems:
        if p not in study.problems:
            raise InvalidInputError(f"argument --problems: unknown problem {p!r}; valid: {sorted(study.problems)}")
    steps = a.steps or study.training(a.problems[0]).iterations
    sizes = a.sizes or sorted({int(n) for p in a.problems for n in study.problem(p).sizes})
    entries = plan(study, a.problems, sizes, a.budgets, steps, a.passes)
    if not a.collect:
        train(study, entries, a.workers, a.threads)
    runs, missing = collect(study, entries)
    table = summarise(runs)
    info = machine_info(gpu=False)
    write_text(Layout(study.results_dir).benchmark("data_size_runs.csv"), runs.to_csv(index=False))
    write_text(a.out, cli.table_with_machine(table.to_dict("records"), info).to_csv(index=False))
    batch = {p: study.training(p).batch_size for p in a.problems}
    write_text(a.out.with_suffix(".md"), markdown(table, info, missing, steps, a.passes, batch))
    print(table.to_markdown(index=False, floatfmt=".3g"))
    if missing:
        print(f"{len(missing)} runs missing (not finished)")
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
