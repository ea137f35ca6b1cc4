"""Tables of the paper, from the pipeline's outputs: CSV (the contract), Markdown and LaTeX."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from surrogates.io import atomic_write

ACCURACY_COLUMNS = ["problem", "surrogate", "n_train", "arch", "seeds", "mae_mean", "mae_std", "max_abs_err_mean",
                    "rel_l2_mean", "train_seconds_mean", "n_params"]


def accuracy_table(metrics_files, test_sidecars) -> pd.DataFrame:
    """One row per (problem, surrogate, n_train, arch), means over seeds; plus one ``euler_floor`` row per
    problem (the Euler labels' own error against the high-accuracy solution)."""
    runs = pd.DataFrame([json.loads(Path(f).read_text()) for f in metrics_files])
    if runs.empty:
        raise ValueError("no training results to tabulate")
    g = runs.groupby(["problem", "surrogate", "n_train", "arch"], sort=True)
    table = g.agg(seeds=("seed", "nunique"), mae_mean=("mae", "mean"), mae_std=("mae", "std"),
                  max_abs_err_mean=("max_abs_err", "mean"), rel_l2_mean=("rel_l2", "mean"),
                  train_seconds_mean=("train_seconds", "mean"), n_params=("n_params", "first")).reset_index()
    table["mae_std"] = table["mae_std"].fillna(0.0)
    floors = []
    for f in test_sidecars:
        meta = json.loads(Path(f).read_text())
        fl = meta["euler_floor"]
        floors.append({"problem": meta["problem"]["name"], "surrogate": "euler_floor", "n_train": np.nan, "arch": "",
                       "seeds": 0, "mae_mean": fl["mae"], "mae_std": 0.0, "max_abs_err_mean": fl["max_abs_err"],
                       "rel_l2_mean": fl["rel_l2"], "train_seconds_mean": np.nan, "n_params": np.nan})
    table = pd.concat([table, pd.DataFrame(floors)], ignore_index=True)
    table["n_train"] = table["n_train"].astype("Int64")
    table["n_params"] = table["n_params"].astype("Int64")
    table["_floor_last"] = table["surrogate"] != "euler_floor"  # the floor row first in each problem
    table = table.sort_values(["problem", "_floor_last", "surrogate", "n_train"], kind="stable")
    return table[ACCURACY_COLUMNS].reset_index(drop=True)


def write_table(df: pd.DataFrame, csv_path, md_path, tex_path, caption: str) -> None:
    """Write ``df`` as CSV, Markdown and LaTeX, each atomically."""
    if not np.isfinite(df.select_dtypes("number").astype(float).fillna(0).to_numpy()).all():
        raise ValueError("refusing to write a table holding infinite values")
    atomic_write(Path(csv_path), lambda fh: fh.write(df.to_csv(index=False).encode()))
    md = f"{caption}\n\n" + df.to_markdown(index=False, floatfmt=".3g") + "\n"
    atomic_write(Path(md_path), lambda fh: fh.write(md.encode()))
    tex = df.to_latex(index=False, float_format="%.3g", na_rep="--", caption=caption, escape=True)
    atomic_write(Path(tex_path), lambda fh: fh.write(tex.encode()))


SPEEDUP_COLUMNS = ["workload", "device", "n_cells", "n_outputs", "solver_backend", "solver_seconds", "surrogate", "arch",
                   "backend", "precision", "surrogate_seconds", "speedup", "mae"]


def speedup_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The speedup contract from ``benchmarks.speedup`` output: timed rows only, in a stable order."""
    timed = raw[raw["skipped"].isna()] if "skipped" in raw else raw
    if timed.empty:
        raise ValueError("no timed rows: every inference backend was skipped")
    out = timed[SPEEDUP_COLUMNS].sort_values(["device", "surrogate", "backend", "precision", "n_outputs", "n_cells"],
                                             kind="stable")
    return out.reset_index(drop=True)
