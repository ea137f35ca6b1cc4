"""Compare two results directories of the same preset (a local run and a SLURM run).

    python tests/slurm/compare_runs.py RESULTS_A RESULTS_B [--sacct sacct.txt]

They must agree on everything that does not depend on timing:
- every dataset file byte for byte (same sha256 of X and Y in the sidecars);
- the accuracy table exactly, except `train_seconds_mean`;
- the speedup table's rows (workload, device, sizes, solver backend, surrogate, architecture, precision)
  and its `mae`; timings only have to be positive and finite, and `backend` is the faster CPU backend
  measured in that run, so it may differ.
With --sacct, every line of the accounting file must be a COMPLETED job (so the SLURM run really ran
its jobs through SLURM). Exits 1 with the differences listed.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

TIMING = {"train_seconds_mean", "solver_seconds", "solver_kernel_seconds", "surrogate_seconds", "surrogate_kernel_seconds",
          "speedup", "kernel_speedup", "backend", "noisy"}
NOT_POSITIVE = {"backend", "noisy"}  # timing-dependent, but not timings


def sidecar_checksums(root: Path) -> dict:
    out = {}
    for f in sorted(root.glob("datasets/**/*.json")):
        meta = json.loads(f.read_text())
        out[str(f.relative_to(root))] = {k: v for k, v in meta.items() if k.startswith("sha256")}
    return out


def compare_frames(name, a: pd.DataFrame, b: pd.DataFrame, problems: list):
    if list(a.columns) != list(b.columns):
        problems.append(f"{name}: columns differ: {list(a.columns)} vs {list(b.columns)}")
        return
    if len(a) != len(b):
        problems.append(f"{name}: {len(a)} rows vs {len(b)} rows")
        return
    keys = [c for c in a.columns if c not in TIMING]
    a = a.sort_values(keys, na_position="first").reset_index(drop=True)
    b = b.sort_values(keys, na_position="first").reset_index(drop=True)
    for c in keys:
        same = (a[c] == b[c]) | (a[c].isna() & b[c].isna())
        for i in (~same).to_numpy().nonzero()[0][:5]:
            problems.append(f"{name}: row {i} column {c}: {a[c][i]!r} vs {b[c][i]!r}")
    for c in TIMING & set(a.columns) - NOT_POSITIVE:
        for df, label in ((a, "A"), (b, "B")):
            vals = df[c].dropna().to_numpy()
            if not all(math.isfinite(v) and v > 0 for v in vals):
                problems.append(f"{name}: run {label} has a non-positive or non-finite {c}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--sacct", type=Path, help="sacct -X --parsable2 output of run B's jobs")
    args = ap.parse_args(argv)
    problems: list[str] = []

    ca, cb = sidecar_checksums(args.a), sidecar_checksums(args.b)
    if not ca:
        problems.append(f"no dataset sidecars under {args.a}")
    if ca != cb:
        diff = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        problems.append(f"datasets differ: {diff[:10]}")
    for table in ("accuracy", "speedup"):
        fa, fb = args.a / f"tables/{table}.csv", args.b / f"tables/{table}.csv"
        missing = [str(f) for f in (fa, fb) if not f.is_file()]
        if missing:
            problems.append(f"missing: {missing}")
            continue
        compare_frames(table, pd.read_csv(fa), pd.read_csv(fb), problems)
    n_jobs = None
    if args.sacct:
        lines = [ln.split("|") for ln in args.sacct.read_text().splitlines() if ln.strip()]
        n_jobs = len(lines)
        bad = [ln for ln in lines if ln[4] != "COMPLETED"]
        if not lines:
            problems.append("no SLURM job in accounting: the run did not go through SLURM")
        if bad:
            problems.append(f"SLURM jobs not COMPLETED: {bad[:5]}")

    if problems:
        print("runs DIFFER:\n  " + "\n  ".join(problems))
        return 1
    acc = pd.read_csv(args.a / "tables/accuracy.csv")
    print(f"runs agree: {len(ca)} dataset files, {len(acc)} accuracy rows, "
          f"{len(pd.read_csv(args.a / 'tables/speedup.csv'))} speedup rows"
          + (f"; {n_jobs} SLURM jobs, all COMPLETED" if n_jobs is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
