"""Forward-Euler throughput: cell-steps per second for each backend and dtype.

The paper's workload: FHN, dt = 0.01 over T = 50 (5000 steps), keeping the state every 2 time units
(26 saved states per cell), initial states drawn from problem B's box. Each configuration gets one
untimed warm-up run (which also compiles), then timed repeats of the whole ``simulate`` call
(allocation of the output and the non-finite check included). On the GPU, kernel-only time is taken
with CUDA events and end-to-end time (host arrays in and out) with host clocks after synchronisation.

    python -m benchmarks.solver_throughput                 # full sweep, N = 1e4 .. 1e7
    python -m benchmarks.solver_throughput --quick         # N = 1e4 .. 1e6, fewer repeats
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import solvers
from solvers.backends import available_backends, get_backend

from .machine import machine_info
from .timing import time_cpu, time_cuda

DEFAULT_N = (10_000, 100_000, 1_000_000, 10_000_000)
QUICK_N = (10_000, 100_000, 1_000_000)


def initial_states(n: int, seed: int = 0) -> np.ndarray:
    """Problem B's box: u0 in [-0.1, 0.81], w0 in [0, 0.12]."""
    return np.random.default_rng(seed).uniform([-0.1, 0.0], [0.81, 0.12], size=(n, 2))


def run(
    n_cells=DEFAULT_N,
    backends=None,
    dtypes=("float32", "float64"),
    repeats: int = 5,
    model: str = "fhn",
    t_end: float = 50.0,
    dt: float = 0.01,
    save_interval: float = 2.0,
    max_seconds: float = 30.0,
    memory_fraction: float = 0.5,
) -> pd.DataFrame:
    """Measure every (backend, dtype, N); returns a tidy table. A larger N is skipped for a backend when
    one run of it would exceed ``max_seconds`` (extrapolated linearly from the previous N), or when the
    output would need more than ``memory_fraction`` of the machine's memory."""
    status = available_backends()
    backends = list(backends or status)
    save_every = round(save_interval / dt)
    n_steps = round(t_end / dt)
    m = solvers.get_model(model)
    info = machine_info()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows = []
    for name in backends:
        if status.get(name) is not None:
            rows.append({"backend": name, "skipped": status[name]})
            print(f"{name:6s} skipped: {status[name]}", flush=True)
            continue
        for dtype in dtypes:
            too_slow = False
            for n in n_cells:
                out_bytes = (n_steps // save_every + 1) * n * m.n_states * np.dtype(dtype).itemsize
                if too_slow or out_bytes > memory_fraction * mem:
                    why = "one run would exceed max_seconds" if too_slow else "output would not fit in memory"
                    rows.append({"backend": name, "dtype": dtype, "n_cells": n, "skipped": why})
                    continue
                y0 = initial_states(n).astype(dtype)

                def call():
                    return solvers.simulate(model, y0, t_end, dt, save_every, backend=name, dtype=dtype)

                first = time_cpu(call, repeats=1, warmup=1)  # compiles, then one timed run to size the repeats
                reps = max(1, min(repeats, int(max_seconds / max(first.median, 1e-9))))
                stats = time_cpu(call, repeats=reps, warmup=0) if reps > 1 else first
                row = {"backend": name, "dtype": dtype, "n_cells": n, "n_steps": n_steps, "model": model,
                       "cell_steps_per_s": n * n_steps / stats.median, **stats.as_dict("seconds_")}
                if name == "cuda":
                    be = get_backend("cuda")
                    P = np.array([[m.parameters[p].default] * n for p in m.param_names], dtype=dtype)
                    import cupy as cp

                    y0_d, P_d = cp.asarray(y0), cp.asarray(P)
                    k = time_cuda(lambda: be.integrate_device(m, y0_d, P_d, dt, n_steps // save_every, save_every, dtype),
                                  repeats=max(repeats, 10))
                    row.update({"kernel_cell_steps_per_s": n * n_steps / k.median, **k.as_dict("kernel_seconds_")})
                rows.append(row)
                print(f"{name:6s} {dtype:8s} N={n:>9,d}  {row['cell_steps_per_s'] / 1e9:7.2f} G cell-steps/s "
                      f"(median {stats.median:.4f} s, IQR {stats.iqr:.4f} s, min {stats.min:.4f} s, {stats.repeats} repeats)",
                      flush=True)
                # the next N is larger: skip it when one run of it would exceed max_seconds
                i = list(n_cells).index(n)
                nxt = n_cells[i + 1] if i + 1 < len(n_cells) else n
                too_slow = first.median * nxt / n > max_seconds
    df = pd.DataFrame(rows)
    for k, v in info.items():
        df[k] = v
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N up to 1e6, 3 repeats")
    ap.add_argument("--n", type=float, nargs="+", help="numbers of cells")
    ap.add_argument("--backends", nargs="+", choices=[b for b in solvers.list_backends() if b != "auto"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=list(solvers.DTYPES))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="skip larger N once one run takes longer")
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/solver_throughput.csv"))
    a = ap.parse_args(argv)
    n = [int(x) for x in a.n] if a.n else (QUICK_N if a.quick else DEFAULT_N)
    repeats = a.repeats or (3 if a.quick else 5)
    info = machine_info()
    print("machine:", json.dumps(info), flush=True)
    df = run(n, a.backends, a.dtypes, repeats, max_seconds=(5.0 if a.quick else a.max_seconds))
    _write_csv(df, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
