"""Imported models against Myokit's own simulator: RMS(V) and APD90 differences per model, backend and dt.

    python -m benchmarks.myokit_check [--out benchmarks/reference/myokit_check.csv] [--models lr_1991 ...]

The models are the ones that ship inside Myokit's wheel (its tests/data: Luo-Rudy 1991, Beeler-Reuter 1977,
Noble 1962, Decker 2009), imported by ``solvers.get_model(path)``. Each is run for one beat by forward Euler
(``solvers.simulate``, float64) at several steps on the CPU backends (``cpu`` at every step, ``numpy`` at the
model's default step: it computes the same numbers, slowly) and by Myokit's ``Simulation`` (CVODES, tolerances
1e-10), both saved every 0.1 ms. A row per (model, backend, dt): the RMS of the difference in membrane potential,
the two APD90s and their difference, or why the run failed (forward Euler unstable at that step). The model's
default step is the largest step of the sweep at which the RMS is within 1 mV and APD90 within 1 ms.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import NonFiniteStateError
from solvers.myokit_import import cvodes_simulation, simulator_unavailable  # noqa: F401 (re-exported)

SAVE = 0.1  # ms between compared samples
TOLERANCE = 1e-10  # CVODES relative and absolute tolerances of the reference
RMS_OK, APD_OK = 1.0, 1.0  # mV, ms: what the default step must meet
DTS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


@dataclass(frozen=True)
class Case:
    """A model file of Myokit's tests/data, simulated for ``t_end`` ms (protocol from ``protocol_file`` where
    the model file has none)."""

    name: str
    file: str
    t_end: float
    protocol_file: str | None = None


CASES = (
    Case("lr_1991", "lr-1991.mmt", 500.0),
    Case("beeler_1977", "beeler-1977-model.mmt", 500.0, "beeler-1977-protocol.mmt"),
    Case("noble_1962", "noble-1962.mmt", 600.0),
    Case("decker_2009", "decker-2009.mmt", 500.0),
)


def myokit_data() -> Path:
    """Myokit's own test models (inside its installed package)."""
    import myokit

    return Path(myokit.__file__).parent / "tests" / "data"


def load_case(case: Case):
    """(CellModel, myokit model, protocol) for ``case``."""
    import myokit

    from solvers.myokit_import import from_myokit, load

    data = myokit_data()
    mm, protocol, _ = myokit.load(str(data / case.file))
    if case.protocol_file is None:
        return load(data / case.file), mm, protocol
    protocol = myokit.load_protocol(str(data / case.protocol_file))
    return from_myokit(mm, protocol, name=case.name, source=str(data / case.file)), mm, protocol


def voltage_name(model) -> str:
    """The membrane potential: the state labelled ``membrane_potential``, else the first state."""
    return next((s for s in model.state_names if s.endswith(".V")), model.state_names[0])


def reference_trace(mm, protocol, t_end: float, variable: str, save: float = SAVE) -> np.ndarray:
    """``variable`` every ``save`` ms on [0, t_end] by Myokit's CVODES simulation."""
    d = cvodes_simulation(mm, protocol, TOLERANCE).run(t_end + save / 2, log=[variable], log_interval=save)
    return np.asarray(d[variable], dtype=np.float64)


def euler_trace(model, backend: str, dt: float, t_end: float, variable: str, save: float = SAVE) -> np.ndarray:
    """``variable`` every ``save`` ms on [0, t_end] by forward Euler at step ``dt`` (float64)."""
    import solvers

    every = int(round(save / dt))
    _, Y = solvers.simulate(model, model.initial_state(), t_end, dt=dt, save_every=every, backend=backend)
    return Y[:, 0, model.state_names.index(variable)]


def apd90(v: np.ndarray, save: float = SAVE) -> float:
    """Action potential duration at 90% repolarisation of the first action potential in ``v`` (sampled every
    ``save`` ms from t = 0): from the upward to the downward crossing of ``V_peak - 0.9 (V_peak - V_0)``,
    linearly interpolated. NaN where the trace has no complete action potential."""
    peak = int(np.argmax(v))
    level = v[peak] - 0.9 * (v[peak] - v[0])
    up = np.nonzero((v[:peak] < level) & (v[1:peak + 1] >= level))[0]
    down = np.nonzero((v[peak:-1] >= level) & (v[peak + 1:] < level))[0]
    if up.size == 0 or down.size == 0:
        return float("nan")
    i, j = up[0], peak + down[0]
    t_up = (i + (level - v[i]) / (v[i + 1] - v[i])) * save
    t_down = (j + (v[j] - level) / (v[j] - v[j + 1])) * save
    return float(t_down - t_up)


def compare(v: np.ndarray, ref: np.ndarray) -> dict:
    """RMS of ``v - ref`` and the two APD90s."""
    n = min(len(v), len(ref))
    a, b = apd90(v), apd90(ref)
    return {"rms_mV": float(np.sqrt(np.mean((v[:n] - ref[:n]) ** 2))), "apd90_ms": a, "apd90_ref_ms": b,
            "apd90_diff_ms": a - b}


def run_case(case: Case, dts=DTS, numpy_too: bool = True) -> list[dict]:
    """The rows of one model: ``cpu`` at every step of ``dts``, ``numpy`` at the default step found."""
    model, mm, protocol = load_case(case)
    var = voltage_name(model)
    ref = reference_trace(mm, protocol, case.t_end, var)
    rows = []

    def row(backend, dt):
        base = {"model": case.name, "file": case.file, "backend": backend, "dt_ms": dt, "t_end_ms": case.t_end,
                "variable": var}
        try:
            return base | compare(euler_trace(model, backend, dt, case.t_end, var), ref) | {"failed": ""}
        except NonFiniteStateError as exc:
            return base | {"rms_mV": np.nan, "apd90_ms": np.nan, "apd90_ref_ms": apd90(ref), "apd90_diff_ms": np.nan,
                           "failed": str(exc)}

    rows = [row("cpu", dt) for dt in dts]
    ok = [r["dt_ms"] for r in rows if not r["failed"] and r["rms_mV"] <= RMS_OK and abs(r["apd90_diff_ms"]) <= APD_OK]
    default = max(ok) if ok else None
    if default is not None and numpy_too:
        rows.append(row("numpy", default))
    for r in rows:
        r["default_dt_ms"] = default
    return rows


def main(argv=None) -> int:
    import argparse

    import myokit
    import pandas as pd

    from benchmarks.cli import table_with_machine
    from core.io import write_text
    from core.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/reference/myokit_check.csv"))
    ap.add_argument("--models", nargs="*", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    ap.add_argument("--dts", type=float, nargs="*", default=list(DTS))
    a = ap.parse_args(argv)
    reason = simulator_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    rows = []
    for case in CASES:
        if case.name in a.models:
            for r in run_case(case, tuple(a.dts)):
                rows.append(r)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "failed"},
                      r["failed"][:60], flush=True)
    info = machine_info(gpu=False) | {"myokit": myokit.__version__, "sundials": myokit.Sundials.version()}
    df = table_with_machine(rows, info)
    write_text(a.out, df.to_csv(index=False))
    write_text(a.out.with_suffix(".md"), summary(pd.DataFrame(rows), info))
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0


def summary(df, info: dict) -> str:
    """The table in Markdown, under a header naming the machine and the versions."""
    from benchmarks.cli import git_commit

    commit = git_commit()
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "numba", "sympy", "myokit", "sundials") if k in info)
    cols = ["model", "backend", "dt_ms", "rms_mV", "apd90_ms", "apd90_ref_ms", "apd90_diff_ms", "default_dt_ms"]
    table = df[cols].copy()
    table["failed"] = df["failed"].map(lambda f: "unstable" if f else "")
    return (
        "Imported models (Myokit's tests/data) by forward Euler (float64) against Myokit's CVODES simulation "
        f"(tolerances {TOLERANCE:g}), one beat, compared every {SAVE:g} ms: `python -m benchmarks.myokit_check`.\n\n"
        f"Machine: {info.get('cpu')} ({info.get('cores')} cores), {info.get('os')}; {versions}; commit {commit}.\n"
        f"default_dt_ms: the largest step with RMS <= {RMS_OK:g} mV and |APD90 difference| <= {APD_OK:g} ms.\n\n"
        + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
