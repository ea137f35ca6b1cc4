"""Surrogate accuracy on the held-out test sets: the configuration's training grid without Snakemake.

The runs are those of the configuration (``training.surrogates`` x sizes x ``training.seeds``, the same
list the workflow builds), optionally narrowed with ``--only PROBLEM:KIND[:N]``; datasets and models go
where the workflow puts them (``results_dir``, :mod:`core.layout`), so the two can be mixed. Missing
datasets are made first; a run whose ``metrics.json`` already exists is kept. Runs go to worker processes,
one torch thread each (or one after the other on a GPU).

    python -m benchmarks.surrogate_accuracy --config config/quick.yaml
    python -m benchmarks.surrogate_accuracy --config config/config.yaml --only C:ddnn:100000 --seeds 0 1 2
    python -m benchmarks.surrogate_accuracy --only A:pinn:1000 --set training.physics.collocation_points=1024 \
        --set results_dir=results/ablation/coll1024          # one setting changed, into its own folder

Prints a table of means over seeds with the Euler floor of each problem's test set, and writes it with
one row per run to ``results_dir/benchmarks/surrogate_accuracy.csv``.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from benchmarks import cli
from core.errors import InvalidInputError, PipelineError
from core.io import write_text
from core.layout import Layout
from core.machine import machine_info
from surrogates.study import Study


def select_runs(study: Study, only=()) -> list[tuple]:
    """The configuration's runs ``(problem, surrogate, n, arch, seed)``, narrowed by ``only`` filters
    (``"C"``, ``"C:ddnn"``, ``"C:ddnn:1000"``)."""
    runs = study.training_grid()
    if only:
        keep = []
        for spec in only:
            parts = spec.split(":")
            if not 1 <= len(parts) <= 3:
                raise InvalidInputError(f"--only takes PROBLEM[:KIND[:N]], got {spec!r}")
            match = [r for r in runs if r[0] == parts[0] and (len(parts) < 2 or r[1] == parts[1])
                     and (len(parts) < 3 or r[2] == int(parts[2]))]
            if not match:
                raise InvalidInputError(f"--only {spec}: no run of this configuration matches")
            keep += [r for r in match if r not in keep]
        runs = keep
    return runs


def ensure_datasets(study: Study, runs) -> None:
    """Write the training, validation and test sets the runs need, where they are missing."""
    from surrogates.datasets import write_split, write_test

    layout = Layout(study.results_dir)
    for p, _, n, _, _ in runs:
        tr, va = layout.split(p, n, "train"), layout.split(p, n, "val")
        if not (tr.exists() and va.exists()):
            write_split(study, p, n, tr, va)
        if not layout.test(p).exists():
            write_test(study, p, layout.test(p))
        src = study.problem(p).test_from
        if src and not layout.test(src).exists():
            write_test(study, src, layout.test(src))


def train_one(args):
    """Train one run ``(study, (problem, surrogate, n, arch, seed), iterations, threads)`` in this process and
    return its metrics; a run whose ``metrics.json`` exists is read, not trained again."""
    study, (problem, surrogate, n, arch, seed), iterations, threads = args
    import torch

    torch.set_num_threads(threads)
    from training.train import train_surrogate

    layout = Layout(study.results_dir)
    out = layout.model_dir(problem, surrogate, n, arch, seed)
    if (out / "metrics.json").exists():
        from core.io import read_record

        return read_record(out / "metrics.json")
    r = train_surrogate(study, problem, surrogate, n, seed, layout.dataset_dir(problem), out, arch,
                        test_path=layout.test(problem), iterations=iterations)
    print(f"{problem:5s} {surrogate:9s} n={n:<6d} seed={seed}  MAE {r['mae']:.3e}  max {r['max_abs_err']:.3e}  "
          f"({r['train_seconds']:.0f} s, {r['device']})", flush=True)
    return r


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["problem", "surrogate", "n_train", "arch"], sort=False)
    return g.agg(seeds=("seed", "count"), mae_mean=("mae", "mean"), mae_std=("mae", "std"),
                 max_abs_err_mean=("max_abs_err", "mean"), max_abs_err_std=("max_abs_err", "std"),
                 rel_l2_mean=("rel_l2", "mean"), train_seconds_mean=("train_seconds", "mean"),
                 iterations=("iterations", "first"), floor_mae=("floor_mae", "first"),
                 floor_max_abs_err=("floor_max_abs_err", "first")).reset_index()


def execute(jobs, workers: int = 1) -> list[dict]:
    """The metrics of :func:`train_one` for each job, in the jobs' order, in ``workers`` processes."""
    if workers > 1 and len(jobs) > 1:
        # spawned, not forked: the parent has used OpenMP (datasets, torch) and a forked child of such a
        # process is killed by libgomp ("fork() called from a process already using GNU OpenMP")
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(train_one, jobs))
    return [train_one(j) for j in jobs]


def result_row(r: dict) -> dict:
    """One run's row of the table (its metrics, flattened)."""
    keep = ("problem", "surrogate", "n_train", "seed", "arch", "mae", "max_abs_err", "rel_l2", "n_params",
            "train_seconds", "iterations", "best_iteration", "val_mae", "device", "device_name")
    row = {k: r[k] for k in keep}
    row["floor_mae"], row["floor_max_abs_err"] = r["euler_floor"]["mae"], r["euler_floor"]["max_abs_err"]
    if "rollout_bounded" in r:
        row["rollout_bounded"] = r["rollout_bounded"]
    return row


def run(study: Study, runs, iterations=None, workers: int = 1, threads: int | None = None) -> pd.DataFrame:
    """Train (or read) the runs; ``threads`` torch threads each (default: one per worker when there are
    several, else every core)."""
    ensure_datasets(study, runs)
    threads = threads or (1 if workers > 1 else max(1, os.cpu_count() or 1))
    df = pd.DataFrame([result_row(r) for r in execute([(study, r, iterations, threads) for r in runs], workers)])
    for k, v in machine_info(gpu=False).items():
        df[k] = v
    return df


def overrides(items) -> dict:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values read as YAML)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--set takes KEY=VALUE, got {item!r}")
        node = out
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--only", nargs="*", default=[], help="PROBLEM[:KIND[:N]] filters of the configured runs")
    ap.add_argument("--seeds", type=cli.integer(0), nargs="+", help="default: training.seeds")
    ap.add_argument("--iterations", type=cli.integer(0), help="override every run's iterations (default: the config's)")
    ap.add_argument("--workers", type=cli.integer(1), default=os.cpu_count(), help="parallel training processes (CPU)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one configuration key (dotted path, YAML value), e.g. training.iterations=5000")
    a = ap.parse_args(argv)
    from core.config import merge, read_config
    from surrogates.config import validate_config

    try:
        study = cli.narrow(validate_config(merge(read_config(*a.config), overrides(a.set))),
                         {"--seeds": ("training.seeds", None if a.seeds is None else list(a.seeds))})
        runs = select_runs(study, a.only)
        df = run(study, runs, a.iterations, a.workers)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Layout(study.results_dir).benchmark("surrogate_accuracy.csv")
    write_text(out, df.to_csv(index=False))
    print(summarise(df).to_markdown(index=False, floatfmt=".3g"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
