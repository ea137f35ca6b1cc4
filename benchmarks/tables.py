"""Tables of the paper, from the pipeline's outputs: CSV (the contract), Markdown and LaTeX.

Rows are built from the fields each ``metrics.json`` records (never from where a file lies); given the
configuration, every metrics file and test sidecar is first checked against what it stands for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InvalidInputError
from core.io import read_record, read_sidecar, write_text
from core.layout import Layout
from core.provenance import check_provenance

ACCURACY_COLUMNS = ["problem", "surrogate", "n_train", "arch", "seeds", "mae_mean", "mae_std", "max_abs_err_mean",
                    "max_abs_err_min", "max_abs_err_max", "rel_l2_mean", "train_seconds_mean", "n_params"]
# max_abs_err_min/_max: the spread over seeds of each seed's maximum error (a tail statistic that varies far
# more between seeds than the MAE does); an ensemble is one network, the floor one solver: min = max = mean


def _expected_runs(study) -> dict:
    """metrics.json path -> the provenance its model must have, for every run of the configuration."""
    from surrogates.scoring import expected_model

    from surrogates.ensemble import expected_ensemble

    layout = Layout(study.results_dir)
    runs = {layout.run_file("metrics", p, s, n, a, seed): expected_model(study, p, s, n, seed, a)
            for p, s, n, a, seed in study.training_grid()}
    runs.update({layout.ensemble_file(p, s, n, a): expected_ensemble(study, p, s, n, a, seeds)
                 for p, s, n, a, seeds in study.ensemble_grid()})
    return runs


def read_runs(metrics_files, study=None) -> pd.DataFrame:
    """One row per metrics file (its recorded fields); with ``study``, each file is checked to be the run its
    place in the layout stands for (a copied or stale file is refused, naming it and the differing key)."""
    expected = _expected_runs(study) if study is not None else {}
    rows = []
    for f in metrics_files:
        m = read_record(f, "metrics file")
        want = expected.get(Path(f).resolve())
        if study is not None and want is None:
            raise InvalidInputError(f"metrics file {f} is not a run of this configuration")
        if want is not None:
            check_provenance(m.get("provenance", {}), want, f"metrics file {f}")
        rows.append(m)
    return pd.DataFrame(rows)


TRANSFER_COLUMNS = ["test_on", "problem", "surrogate", "n_train", "arch", "network", "seeds", "mae", "mae_std",
                    "max_abs_err", "max_std", "rel_l2", "floor_mae", "floor_max"]


def transfer_table(files, study=None) -> pd.DataFrame:
    """One row per network (each seed, the mean over seeds, the ensemble) of every ITNN rolled out over another
    problem's test set (:mod:`surrogates.transfer`); with ``study`` each file is checked to be the configured
    transfer its place stands for."""
    expected = {}
    if study is not None:
        from surrogates.transfer import expected_transfer, transfer_grid

        layout = Layout(study.results_dir)
        seeds = study.seeds
        expected = {layout.transfer_file(p, s, n, a, t): expected_transfer(study, p, n, a, t, seeds)
                    for p, s, n, a, t in transfer_grid(study)}
    rows = []
    for f in files:
        r = read_record(f, "transfer metrics file")
        if study is not None:
            want = expected.get(Path(f).resolve())
            if want is None:
                raise InvalidInputError(f"transfer metrics file {f} is not a transfer of this configuration")
            check_provenance(r.get("provenance", {}), want, f"transfer metrics file {f}")
        floor = r.get("euler_floor") or {}
        base = {"test_on": r["target"], "problem": r["problem"], "surrogate": r["surrogate"], "n_train": r["n_train"],
                "arch": r["arch"], "floor_mae": floor.get("mae", np.nan), "floor_max": floor.get("max_abs_err", np.nan)}
        for run in r["runs"]:
            rows.append({**base, "network": f"seed {run['seed']}", "seeds": 1, "mae": run["mae"], "mae_std": np.nan,
                         "max_abs_err": run["max_abs_err"], "max_std": np.nan, "rel_l2": run["rel_l2"]})
        rows.append({**base, "network": "mean over seeds", "seeds": len(r["runs"]), "mae": r["mean"]["mae"],
                     "mae_std": r["std"]["mae"], "max_abs_err": r["mean"]["max_abs_err"],
                     "max_std": r["std"]["max_abs_err"], "rel_l2": r["mean"]["rel_l2"]})
        if r.get("ensemble"):
            e = r["ensemble"]
            rows.append({**base, "network": "ensemble", "seeds": len(r["runs"]), "mae": e["mae"], "mae_std": np.nan,
                         "max_abs_err": e["max_abs_err"], "max_std": np.nan, "rel_l2": e["rel_l2"]})
    if not rows:
        raise InvalidInputError("no transfer results to tabulate")
    return pd.DataFrame(rows)[TRANSFER_COLUMNS]


def read_floors(test_sidecars, study=None) -> pd.DataFrame:
    """One ``euler_floor`` row per test sidecar; each sidecar's own checksum is verified, and with ``study`` its
    problem must be the one its place names."""
    from surrogates.datasets import expected_provenance

    layout = Layout(study.results_dir) if study is not None else None
    by_path = {layout.sidecar(layout.test(p)): p for p in study.problems} if study is not None else {}
    floors = []
    for f in test_sidecars:
        meta = read_sidecar(Path(f).with_suffix(".npz"))
        name = meta.get("provenance", {}).get("problem")
        if study is not None:
            want = by_path.get(Path(f).resolve())
            if want is None:
                raise InvalidInputError(f"test sidecar {f} is not a test set of this configuration")
            check_provenance(meta.get("provenance", {}), expected_provenance(study.problem(want), study, "test"),
                             f"test sidecar {f}")
            name = want
        fl = meta["euler_floor"]
        floors.append({"problem": name, "surrogate": "euler_floor", "n_train": np.nan, "arch": "", "seeds": 0,
                       "mae_mean": fl["mae"], "mae_std": 0.0, "max_abs_err_mean": fl["max_abs_err"],
                       "max_abs_err_min": fl["max_abs_err"], "max_abs_err_max": fl["max_abs_err"], "rel_l2_mean": fl["rel_l2"], "train_seconds_mean": np.nan, "n_params": np.nan})
    return pd.DataFrame(floors)


def floor_references(test_sidecars) -> list[str]:
    """The high-accuracy solutions the test sidecars' Euler floors were measured against (each distinct one once,
    e.g. ``myokit CVODES rtol=1e-10 atol=1e-10``), for a caption."""
    refs = (read_sidecar(Path(f).with_suffix(".npz"))["euler_floor"].get("reference") for f in test_sidecars)
    return sorted({r for r in refs if r})


def accuracy_table(metrics_files, test_sidecars, study=None) -> pd.DataFrame:
    """One row per (problem, surrogate, n_train, arch), means over seeds (the maximum error also with its
    smallest and largest seed's); plus one ``euler_floor`` row per
    problem (the Euler labels' own error against the high-accuracy solution). An ensemble
    (``<kind>_ensemble``, :mod:`surrogates.ensemble`) is one row of its own; its ``seeds`` are its members."""
    runs = read_runs(metrics_files, study)
    if runs.empty:
        raise InvalidInputError("no training results to tabulate")
    g = runs.groupby(["problem", "surrogate", "n_train", "arch"], sort=True)
    table = g.agg(seeds=("seed", "nunique"), mae_mean=("mae", "mean"), mae_std=("mae", "std"),
                  max_abs_err_mean=("max_abs_err", "mean"), max_abs_err_min=("max_abs_err", "min"),
                  max_abs_err_max=("max_abs_err", "max"), rel_l2_mean=("rel_l2", "mean"),
                  train_seconds_mean=("train_seconds", "mean"), n_params=("n_params", "first")).reset_index()
    table["mae_std"] = table["mae_std"].fillna(0.0)
    if "members" in runs:  # an ensemble is one surrogate made of its members: the seeds column counts those
        keys = ["problem", "surrogate", "n_train", "arch"]
        members = runs.dropna(subset=["members"]).set_index(keys)["members"].map(len).to_dict()
        table["seeds"] = [members.get(k, s) for k, s in zip(table.set_index(keys).index, table["seeds"])]
    table = pd.concat([table, read_floors(test_sidecars, study)], ignore_index=True)
    table["n_train"] = table["n_train"].astype("Int64")
    table["n_params"] = table["n_params"].astype("Int64")
    table["_floor_last"] = table["surrogate"] != "euler_floor"  # the floor row first in each problem
    table = table.sort_values(["problem", "_floor_last", "surrogate", "n_train"], kind="stable")
    return table[ACCURACY_COLUMNS].reset_index(drop=True)


def _count_seeds(seeds: pd.Series) -> int:
    """Distinct seeds of a group of runs; an ensemble (its members as a tuple) counts its members."""
    return len({m for s in seeds for m in (s if isinstance(s, tuple) else (s,))})


BY_OUTPUT_COLUMNS = ["problem", "surrogate", "n_train", "arch", "seeds", "output", "mae_mean", "mae_std"]


def accuracy_by_output(metrics_files, test_sidecars, study=None) -> pd.DataFrame:
    """The MAE of each output (means over seeds), one row per (problem, surrogate, n_train, arch, output), with
    each problem's ``euler_floor`` rows: outputs in different units (mV, mM, gates) read apart. Runs and
    sidecars recorded without ``mae_by_output`` have no rows; none at all gives an empty table."""
    runs = read_runs(metrics_files, study)
    rows = [{"problem": r["problem"], "surrogate": r["surrogate"], "n_train": r["n_train"], "arch": r["arch"],
             "seed": (tuple(r["members"]) if isinstance(r.get("members"), list) else r.get("seed")),
             "output": name, "mae": v}
            for r in runs.to_dict("records") if isinstance(r.get("test"), dict)
            for name, v in r["test"].get("mae_by_output", {}).items()]
    keys = ["problem", "surrogate", "n_train", "arch", "output"]
    if rows:
        per = pd.DataFrame(rows)
        order = {(r["problem"], o): i for r in runs.to_dict("records")  # the problem's output order
                 for i, o in enumerate((r.get("provenance") or {}).get("outputs") or [])}
        table = per.groupby(keys, sort=False).agg(seeds=("seed", _count_seeds), mae_mean=("mae", "mean"),
                                                  mae_std=("mae", "std")).reset_index()
        table["mae_std"] = table["mae_std"].fillna(0.0)
    else:
        table, order = pd.DataFrame(columns=[*keys, "seeds", "mae_mean", "mae_std"]), {}
    floors = []
    for f in test_sidecars:
        fl = read_sidecar(Path(f).with_suffix(".npz"))["euler_floor"].get("mae_by_output", {})
        name = read_floors([f], study)["problem"].iloc[0]
        floors += [{"problem": name, "surrogate": "euler_floor", "n_train": np.nan, "arch": "", "seeds": 0,
                    "output": o, "mae_mean": v, "mae_std": 0.0} for o, v in fl.items()]
        order.update({(name, o): i for i, o in enumerate(fl) if (name, o) not in order})
    table = pd.concat([t for t in (table, pd.DataFrame(floors)) if not t.empty] or [table], ignore_index=True)
    table["n_train"] = table["n_train"].astype("Int64")
    table["seeds"] = table["seeds"].astype("Int64")
    table["_floor_last"] = table["surrogate"] != "euler_floor"
    table["_output"] = [order.get((p, o), 0) for p, o in zip(table["problem"], table["output"])]
    table = table.sort_values(["problem", "_output", "_floor_last", "surrogate", "n_train"], kind="stable")
    return table[BY_OUTPUT_COLUMNS].reset_index(drop=True)


def write_table(df: pd.DataFrame, csv_path, md_path, tex_path, caption: str) -> None:
    """Write ``df`` as CSV, Markdown and LaTeX, each atomically."""
    if not np.isfinite(df.select_dtypes("number").astype(float).fillna(0).to_numpy()).all():
        raise InvalidInputError("refusing to write a table holding infinite values")
    write_text(csv_path, df.to_csv(index=False))
    write_text(md_path, f"{caption}\n\n" + df.to_markdown(index=False, floatfmt=".3g") + "\n")
    write_text(tex_path, df.to_latex(index=False, float_format="%.3g", na_rep="--", caption=caption, escape=True))


SPEEDUP_COLUMNS = ["sweep", "workload", "device", "n_cells", "n_outputs", "solver_backend", "solver_seconds",
                   "solver_kernel_seconds", "surrogate", "arch", "backend", "precision", "surrogate_seconds",
                   "surrogate_kernel_seconds", "speedup", "kernel_speedup", "mae", "noisy"]


def speedup_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The speedup contract from ``benchmarks.speedup`` output: timed rows only, in a stable order; ``noisy``
    marks a point whose repeats kept a spread above 10% (IQR / median)."""
    timed = raw
    for col in ("skipped", "failed"):
        if col in timed:
            timed = timed[timed[col].isna()]
    if timed.empty:
        raise InvalidInputError("no timed rows: every inference backend was skipped or failed")
    out = timed[SPEEDUP_COLUMNS].sort_values(["device", "surrogate", "backend", "precision", "n_outputs", "n_cells"],
                                             kind="stable")
    return out.reset_index(drop=True)
