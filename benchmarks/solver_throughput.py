"""Forward-Euler throughput: cell-steps per second for each backend and dtype.

The workload is the configuration's speed workload: the model of ``speed.problem`` (FHN for C), forward
Euler with ``solver.dt`` over ``speed.t_end`` keeping ``speed.n_outputs`` states per cell, cells drawn from
that problem's box, for each N of ``speed.solver_n_cells``. Each configuration gets one untimed warm-up run
(which also compiles), then timed repeats of the whole ``simulate`` call (allocation of the output and the
non-finite check included). On the GPU, kernel-only time is taken with CUDA events on a prepared launch
(buffers allocated once), besides the end-to-end time (host arrays in and out).

    python -m benchmarks.solver_throughput                            # config/config.yaml
    python -m benchmarks.solver_throughput --config config/quick.yaml # the quick preset's N, into its folder
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import solvers
from benchmarks import cli
from core.io import write_text
from core.layout import Layout
from core.machine import machine_info
from core.precision import numpy_name
from inference.timing import measure
from inference.workloads import Case
from surrogates.config import load_config
from surrogates.study import Study


def run(study: Study, n_cells=None, backends=None, dtypes=("float32", "float64"), repeats: int = 5,
        max_seconds: float | None = None, memory_fraction: float = 0.5) -> pd.DataFrame:
    """Measure every (backend, dtype, N); returns a tidy table. A larger N is skipped for a backend when
    one run of it would exceed ``max_seconds`` (extrapolated linearly from the previous N), or when the
    output would need more than ``memory_fraction`` of the machine's memory."""
    sp = study.speed
    problem = study.problem(sp.problem)
    n_cells = list(n_cells or sp.solver_n_cells)
    max_seconds = float(max_seconds or sp.solver_max_seconds)
    status = solvers.available_backends()
    backends = list(backends or status)
    info = machine_info()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    m = problem.model
    rows = []
    for name in backends:
        if status.get(name) is not None:
            rows.append({"backend": name, "skipped": status[name]})
            print(f"{name:6s} skipped: {status[name]}", flush=True)
            continue
        for dtype in map(numpy_name, dtypes):
            too_slow = False
            for i, n in enumerate(n_cells):
                case = Case(problem, int(n), sp.n_outputs, sp.t_end, "N")
                out_bytes = (case.n_saves + 1) * n * m.n_states * np.dtype(dtype).itemsize
                if too_slow or out_bytes > memory_fraction * mem:
                    why = "one run would exceed max_seconds" if too_slow else "output would not fit in memory"
                    rows.append({"backend": name, "dtype": dtype, "n_cells": n, "skipped": why})
                    continue
                y0, params = case.solver_inputs()

                def call():
                    return solvers.simulate(m, y0, case.t_end, problem.dt, case.save_every, params, backend=name,
                                            dtype=dtype)

                first = measure(call, "cpu", 1, 1)  # compiles, then one timed run to size the repeats
                reps = max(1, min(repeats, int(max_seconds / max(first.median, 1e-9))))
                stats = measure(call, "cpu", reps, 0, max_repeats=max(reps, 3 * repeats) if reps > 1 else 1,
                                budget_s=max_seconds) if reps > 1 else first
                row = {"backend": name, "dtype": dtype, "n_cells": n, "n_steps": case.n_steps, "model": m.name,
                       "n_outputs": case.n_outputs, "cell_steps_per_s": n * case.n_steps / stats.median,
                       **stats.as_dict("seconds_")}
                if name == "cuda":
                    launch = solvers.get_backend("cuda").launcher(
                        m, y0.astype(dtype), problem.parameter_matrix(case.cells, n, dtype), problem.dt, case.n_saves,
                        case.save_every, dtype)
                    k = measure(launch, "cupy", max(repeats, 10), 3, max_repeats=100)
                    row.update({"kernel_cell_steps_per_s": n * case.n_steps / k.median, **k.as_dict("kernel_seconds_")})
                rows.append(row)
                print(f"{name:6s} {dtype:8s} N={n:>11,d}  {row['cell_steps_per_s'] / 1e9:7.2f} G cell-steps/s "
                      f"(median {stats.median:.4g} s, IQR {stats.iqr:.2g} s, {stats.repeats} repeats"
                      f"{'; NOISY' if stats.noisy and stats.repeats > 2 else ''})"
                      + (f"; kernel {row['kernel_cell_steps_per_s'] / 1e9:.2f} G" if name == "cuda" else ""), flush=True)
                nxt = n_cells[i + 1] if i + 1 < len(n_cells) else n
                too_slow = first.median * nxt / n > max_seconds
    return cli.table_with_machine(rows, info)


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--n", type=cli.integer(1), nargs="+", help="numbers of cells (default: speed.solver_n_cells)")
    ap.add_argument("--backends", nargs="+", choices=[b for b in solvers.list_backends() if b != "auto"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=list(solvers.DTYPES))
    ap.add_argument("--repeats", type=cli.integer(1), default=5)
    ap.add_argument("--max-seconds", type=cli.number(0), help="skip larger N once one run takes longer "
                                                      "(default: speed.solver_max_seconds)")
    ap.add_argument("--out", type=Path, help="default: RESULTS/benchmarks/solver_throughput.csv")
    a = ap.parse_args(argv)
    study = cli.narrow(load_config(*a.config), {"--n": ("speed.solver_n_cells", a.n),
                                              "--max-seconds": ("speed.solver_max_seconds", a.max_seconds)})
    print("machine:", json.dumps(machine_info()), flush=True)
    df = run(study, a.n, a.backends, a.dtypes, a.repeats, a.max_seconds)
    out = a.out or Layout(study.results_dir).benchmark("solver_throughput.csv")
    write_text(out, df.to_csv(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
