"""Surrogate accuracy on the held-out test sets: a grid of training runs, summarised with the solver floor.

Datasets must exist (``snakemake`` or ``python -m surrogates.datasets``). Each run is
``surrogates.train.train_surrogate``; runs go to worker processes, one torch thread each.

    python -m benchmarks.surrogate_accuracy --runs B:ddnn:1000 B:pinn:1000 --seeds 0 1 2 --iterations 5000
    python -m benchmarks.surrogate_accuracy --preset report      # the runs quoted in benchmarks/README.md

Writes ``results/benchmarks/surrogate_accuracy.csv`` (one row per run) and prints a table of means over
seeds, with the Euler floor of each problem's test set.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

PRESETS = {
    # (problem, surrogate, n, iterations or None for the config's)
    "report": [
        ("A", "ddnn", 1000, 5000), ("A", "pinn", 1000, 5000),
        ("B", "ddnn", 1000, 5000), ("B", "pinn", 1000, 5000),
        ("C", "ddnn", 1000, 5000), ("C", "pinn", 1000, 5000),
        ("hh_m", "ddnn", 7000, None), ("hh_m", "pinn_seed", 7000, None), ("hh_m", "pinn", 7000, None),
        ("D", "itnn", 100000, 30000),
    ],
}


def _one(args):
    cfg_path, problem, surrogate, n, seed, arch, iterations, data_root, out_root = args
    import torch

    torch.set_num_threads(1)
    from surrogates.problems import load_config
    from surrogates.train import train_surrogate

    cfg = load_config(cfg_path)
    out = Path(out_root) / problem / surrogate / f"n{n}" / (arch or "default") / f"seed{seed}"
    r = train_surrogate(cfg, problem, surrogate, n, seed, Path(data_root) / problem, out, arch, iterations=iterations)
    print(f"{problem:5s} {surrogate:9s} n={n:<6d} seed={seed}  MAE {r['mae']:.3e}  max {r['max_abs_err']:.3e}  "
          f"({r['train_seconds']:.0f} s)", flush=True)
    keep = ("problem", "surrogate", "n_train", "seed", "arch", "mae", "max_abs_err", "rel_l2", "n_params",
            "train_seconds", "iterations", "best_iteration", "val_mae", "device", "device_name")
    row = {k: r[k] for k in keep}
    row["floor_mae"], row["floor_max_abs_err"] = r["euler_floor"]["mae"], r["euler_floor"]["max_abs_err"]
    if "rollout_bounded" in r:
        row["rollout_bounded"] = r["rollout_bounded"]
        row["rollout_mae_at_end"] = r["rollout_error"]["mae"][-1]
    return row


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["problem", "surrogate", "n_train", "arch"], sort=False)
    out = g.agg(seeds=("seed", "count"), mae_mean=("mae", "mean"), mae_std=("mae", "std"),
                max_abs_err_mean=("max_abs_err", "mean"), rel_l2_mean=("rel_l2", "mean"),
                train_seconds_mean=("train_seconds", "mean"), iterations=("iterations", "first"),
                floor_mae=("floor_mae", "first"), floor_max_abs_err=("floor_max_abs_err", "first")).reset_index()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--runs", nargs="*", default=[], help="problem:surrogate:n[:iterations]")
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arch", default=None)
    ap.add_argument("--iterations", type=int, default=None, help="override every run's iterations")
    ap.add_argument("--data", type=Path, default=Path("results/datasets"))
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/accuracy_runs"))
    ap.add_argument("--csv", type=Path, default=Path("results/benchmarks/surrogate_accuracy.csv"))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)
    runs = list(PRESETS[a.preset]) if a.preset else []
    for spec in a.runs:
        parts = spec.split(":")
        runs.append((parts[0], parts[1], int(parts[2]), int(parts[3]) if len(parts) > 3 else None))
    if not runs:
        ap.error("give --runs or --preset")
    jobs = [(a.config, p, s, n, seed, a.arch, a.iterations or it, a.data, a.out)
            for p, s, n, it in runs for seed in a.seeds]
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        rows = list(ex.map(_one, jobs))
    df = pd.DataFrame(rows)
    from benchmarks.machine import machine_info

    for k, v in machine_info(gpu=False).items():
        df[k] = v
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(summarise(df).to_markdown(index=False, floatfmt=".3g") if _has_tabulate() else summarise(df).to_string())
    print(f"wrote {a.csv}")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
