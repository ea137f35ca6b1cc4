"""Figures of the study, each written as PNG and PDF through :func:`save`.

Every figure reads the fields its inputs record (``metrics.json``, ``losses.csv``, the accuracy table, the
speed and solver-throughput CSVs), never positions in a path. One palette (below) gives each surrogate
kind, inference backend, solver backend and precision the same colour, marker or line style in every
figure; the Euler solver (its reference curves, its floor, its time) is always black. Figures are sized
for the Snakemake HTML report: panels of about 3 x 2 inches, constrained layout, legends outside the data,
units on every axis.
"""
from __future__ import annotations

import io
import zlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from core.io import load_dataset, read_record, write_bytes  # noqa: E402
from surrogates.study import Study

# ---------------------------------------------------------------- the palette: one definition for all figures
EULER = "#000000"  # the reference solver: labels, floor, timings
TEST_POINTS = "#F0A030"  # held-out points drawn beneath a reference curve
SURROGATE_COLORS = {
    "ddnn": "#0072B2",       # blue
    "pinn": "#D55E00",       # vermillion
    "pinn_seed": "#CC79A7",  # reddish purple
    "itnn": "#009E73",       # bluish green
    "euler_floor": EULER,
}
SURROGATE_LABELS = {
    "ddnn": "DDNN (data only)",
    "pinn": "PINN",
    "pinn_seed": "PINN, notebook residual",
    "itnn": "ITNN (rolled out)",
    "euler_floor": "Euler floor (labels vs exact)",
}
BACKEND_COLORS = {
    # inference backends: one hue family per library, darker on the GPU
    "torch": "#E69F00", "torch_cuda": "#9C6500", "torch_compile": "#C0392B",
    "onnxruntime": "#56B4E9", "onnxruntime_cuda": "#1F4E99",
    "tensorrt": "#7B3FA0",
    "fused": "#8DC63F",
    # solver backends
    "numpy": "#8C8C8C", "cpu": EULER, "cuda": "#D81B60",
}
BACKEND_MARKERS = {"torch": "o", "torch_cuda": "^", "torch_compile": "v", "onnxruntime": "s",
                   "onnxruntime_cuda": "<", "tensorrt": "P", "fused": "D",
                   "numpy": "X", "cpu": "p", "cuda": "h"}
PRECISION_STYLES = {"fp32": "-", "fp16": "--", "bf16": ":", "float32": "-", "float64": "--"}
_SPARE = sns.color_palette("tab20", 20).as_hex()
NOISY_NOTE = "hollow: noisy (IQR/median > 10%)"
PANEL = (3.3, 2.4)  # inches per panel


def color(name: str) -> str:
    """The colour of a surrogate kind or a backend; a name the palette lacks gets a fixed spare colour."""
    known = {**BACKEND_COLORS, **SURROGATE_COLORS}
    return known.get(name) or _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def label(kind: str) -> str:
    base = kind.removesuffix("_ensemble")  # surrogates.ensemble's rows: <kind>_ensemble
    if base != kind and base in SURROGATE_LABELS:
        return SURROGATE_LABELS[base] + ", mean of the seeds"
    return SURROGATE_LABELS.get(kind, kind)


def units_label(units: str | None) -> str:
    """Axis-label text of a model's unit string (``"1"`` is dimensionless)."""
    return "dimensionless" if units in (None, "", "1") else units


def variable_units(study: Study, problem: str) -> dict:
    """Units of a problem's variables from its model definition: ``t``, each state and each parameter."""
    m = study.problem(problem).model
    return {"t": m.time_units, **{n: s.units for n, s in m.states.items()},
            **{n: p.units for n, p in m.parameters.items()}}


def error_units(study: Study) -> dict:
    """Axis-label text of each problem's errors: the unit its outputs share (else "state units")."""
    out = {}
    for name in study.problems:
        units = variable_units(study, name)
        found = {units[o] for o in study.problem(name).outputs}
        out[name] = units_label(found.pop()) if len(found) == 1 else "state units"
    return out


# ---------------------------------------------------------------- common helpers
def _style():
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    plt.rcParams.update({"legend.fontsize": 8, "axes.titlesize": 10, "figure.titlesize": 11})


def _grid(nrows: int, ncols: int, panel=PANEL, extra_h: float = 0.0, **kw):
    """A constrained-layout figure of ``nrows x ncols`` panels (always a 2-D array of axes); ``extra_h``
    inches are added for a suptitle and a legend below, so they do not squeeze the panels."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows + extra_h), squeeze=False,
                             layout="constrained", **kw)
    return fig, axes


def _legend(fig, handles, ncol: int = 4):
    """One legend for a figure of several panels, below all of them (clear of the suptitle)."""
    fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol, len(handles)), frameon=False)


def _side_legend(ax, handles):
    """The legend of a one-panel figure, right of its axes."""
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0)


def _handle(text, c="0.3", ls="-", marker=None, fill=True, lw=1.5, **kw):
    return Line2D([], [], color=c, ls=ls, lw=lw, marker=marker, markersize=6,
                  markerfacecolor=c if fill else "white", label=text, **kw)


def _short(v, _pos=None) -> str:
    """A tick label: plain digits from 0.001 to 9999, else a power of ten."""
    if v <= 0:
        return f"{v:g}"
    e = int(np.floor(np.log10(v) + 1e-9))
    if -3 <= e <= 3:
        return f"{v:.3g}"
    m = v / 10.0 ** e
    return f"$10^{{{e}}}$" if np.isclose(m, 1) else f"${m:.2g}\\times10^{{{e}}}$"


def _tidy_log_axes(fig) -> None:
    """Give every log axis at least two labelled ticks: evenly spaced ones within one decade, 1-2-5 ones
    within two, the powers of ten beyond. Axes with ticks of their own (training sizes, K) are left alone."""
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            if axis.get_scale() != "log" or isinstance(axis.get_major_locator(), FixedLocator):
                continue
            lo, hi = sorted(lim)
            decades = np.log10(hi / lo) if lo > 0 else np.inf
            if decades < 1:
                axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
            elif decades < 2:
                axis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
            if decades < 2:
                axis.set_major_formatter(FuncFormatter(_short))
            axis.set_minor_formatter(NullFormatter())


def save(fig, png, pdf) -> None:
    """Tidy the log axes' ticks, save ``fig`` to both files atomically, then close it."""
    _tidy_log_axes(fig)
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        write_bytes(path, buf.getvalue())
    plt.close(fig)


def read_runs(metrics_files) -> pd.DataFrame:
    """One row per trained model with the fields its ``metrics.json`` records."""
    fields = ("problem", "surrogate", "n_train", "seed", "arch", "mae", "max_abs_err", "rel_l2", "train_seconds",
              "iterations")
    return pd.DataFrame([{k: read_record(f, "metrics file").get(k) for k in fields} for f in metrics_files])


def _floors(accuracy_csv) -> pd.DataFrame:
    acc = pd.read_csv(accuracy_csv)
    return acc[acc.surrogate == "euler_floor"].set_index("problem")


def _seed_spread(runs: pd.DataFrame, value: str, keys=("problem", "surrogate", "arch", "n_train")) -> pd.DataFrame:
    """Mean, min and max of ``value`` over seeds for each (problem, surrogate, arch, n)."""
    g = runs.groupby(list(keys))[value]
    return g.agg(["mean", "min", "max", "count"]).reset_index()


def _spread_errorbar(ax, x, s: pd.DataFrame, c, **kw):
    """Means with bars from the seeds' minimum to maximum."""
    yerr = np.vstack([s["mean"] - s["min"], s["max"] - s["mean"]])
    ax.errorbar(x, s["mean"], yerr=yerr, color=c, capsize=3, **kw)


# ---------------------------------------------------------------- accuracy
def error_vs_size(metrics_files, accuracy_csv, png, pdf, units: dict | None = None) -> None:
    """Held-out error against training-set size, one panel per problem: test MAE (solid) and maximum
    absolute error (dashed) per surrogate kind at the seeds' mean, bars from the seeds' minimum to maximum,
    and the Euler floor of the problem's test set for both (dotted black)."""
    _style()
    runs, floors = read_runs(metrics_files), _floors(accuracy_csv)
    problems = sorted(runs.problem.unique())
    markers = _arch_markers(runs)
    fig, axes, spare = _panels(len(problems))
    for ax, p in zip(axes, problems):
        d = runs[runs.problem == p]
        for col, ls in (("mae", "-"), ("max_abs_err", "--")):
            _error_lines(ax, d, col, ls, markers)
        archs = sorted(d.arch.unique())
        if p in floors.index:
            for col in ("mae_mean", "max_abs_err_mean"):
                ax.axhline(floors.loc[p, col], color=EULER, ls=":", lw=1.2)
        ax.set(xscale="log", yscale="log", xlabel="training rows n",
               title=f"problem {p}" + (f" ({archs[0]})" if len(archs) == 1 else ""),
               ylabel=f"error ({(units or {}).get(p, 'state units')})")
        _size_ticks(ax, d.n_train)
    kinds = [k for k in SURROGATE_COLORS if k in set(runs.surrogate)]
    handles = [_handle(label(k), color(k), marker="o") for k in kinds]
    handles += [_handle("test MAE", "0.3"), _handle("max. abs. error", "0.3", ls="--"),
                _handle("Euler floor (MAE and max.)", EULER, ls=":", lw=1.2)]
    if len(set(markers.values())) > 1:  # else each panel's title names its architecture
        handles += [_handle(a, "0.3", ls="none", marker=m) for a, m in markers.items()]
    _place_legend(fig, spare, handles)
    fig.suptitle("Held-out test error vs training-set size (mean over seeds; bars: seed min to max)")
    save(fig, png, pdf)


def _panels(n: int, ncols: int = 3, panel=(3.0, 2.5)):
    """``n`` panels in rows of ``ncols``; returns the figure, the panels and the spare (hidden) axes."""
    ncols = min(ncols, n + 1) if n > 1 else 1
    nrows = -(-n // ncols)
    fig, axes = _grid(nrows, ncols, panel=panel)
    spare = list(axes.flat[n:])
    for ax in spare:
        ax.axis("off")
    return fig, list(axes.flat[:n]), spare


def _place_legend(fig, spare: list, handles) -> None:
    """The legend in an empty panel when there is one, else below the panels."""
    if spare:
        spare[0].legend(handles=handles, loc="center", frameon=False)
    else:
        _legend(fig, handles)


def _error_lines(ax, d: pd.DataFrame, col: str, ls: str, markers: dict) -> None:
    for (kind, arch), sub in d.groupby(["surrogate", "arch"]):
        s = _seed_spread(sub, col).sort_values("n_train")
        _spread_errorbar(ax, s.n_train, s, color(kind), marker=markers[arch], markersize=4, lw=1.5, ls=ls)


def _arch_markers(runs: pd.DataFrame) -> dict:
    """A marker per architecture, used where a problem has several (else all circles)."""
    if runs.groupby("problem").arch.nunique().max() == 1:
        return {a: "o" for a in runs.arch.unique()}
    return dict(zip(sorted(runs.arch.unique()), ["o", "s", "^", "D", "v", "P"] * len(runs)))


def _size_ticks(ax, sizes) -> None:
    """Ticks at the values measured (training sizes, N, K): a log axis over a decade or two has too few
    of its own."""
    n = sorted(set(int(v) for v in sizes))
    ax.set_xticks(n, [_short(v) if n[-1] >= 1e6 else f"{v:,}" for v in n])
    ax.minorticks_off()
    if len(n) == 1:
        ax.set_xlim(n[0] / 2, n[0] * 2)


def pinn_vs_ddnn(metrics_files, png, pdf, units: dict | None = None) -> None:
    """Physics-informed against data-only networks, for each problem where both were trained: test MAE
    (top) and training time (bottom) per training size, every seed as a dot and the seeds' mean with bars
    from minimum to maximum. (The Euler floor is in ``error_vs_size``; here it would squeeze the
    differences this figure is about.)"""
    _style()
    runs = read_runs(metrics_files)
    physics = [k for k in ("pinn", "pinn_seed") if k in set(runs.surrogate)]
    problems = sorted(p for p, d in runs.groupby("problem")
                      if "ddnn" in set(d.surrogate) and set(physics) & set(d.surrogate))
    if not problems:
        raise ValueError("no problem has both a ddnn and a pinn run to compare")
    fig, axes = _grid(2, len(problems), panel=(2.5, 2.4), extra_h=0.8)
    kinds = ["ddnn", *physics]
    for (top, bottom), p in zip(axes.T, problems):
        d = runs[(runs.problem == p) & runs.surrogate.isin(kinds)]
        present = [k for k in kinds if k in set(d.surrogate)]
        _dodged(top, d, "mae", present)
        _dodged(bottom, d, "train_seconds", present)
        top.set(yscale="log", ylabel=f"test MAE ({(units or {}).get(p, 'state units')})", title=f"problem {p}")
        bottom.set(yscale="log", ylabel="training time (s)")
    _legend(fig, [_handle(label(k), color(k), marker="o", ls="none") for k in kinds])
    fig.suptitle("Physics-informed vs data-only networks: test error (top) and training time (bottom); "
                 "dots: seeds, bars: seed min to max")
    save(fig, png, pdf)


def _dodged(ax, d: pd.DataFrame, col: str, kinds: list) -> None:
    """Per training size (categorical x), one group per kind: the seeds as dots, their mean and spread."""
    sizes = sorted(d.n_train.unique())
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        sub = d[d.surrogate == kind]
        pos = {n: j + (i - (len(kinds) - 1) / 2) * width for j, n in enumerate(sizes)}
        ax.scatter(sub.n_train.map(pos), sub[col], s=18, color=color(kind), edgecolors="white", lw=0.6, zorder=4)
        s = _seed_spread(sub, col, keys=("n_train",))
        _spread_errorbar(ax, s.n_train.map(pos), s, color(kind), fmt="_", markersize=12, mew=2, zorder=3)
    ax.set_xticks(range(len(sizes)), [_size_label(n) for n in sizes])  # short: three sizes share a 2.5-inch panel
    ax.set_xlim(-0.6, len(sizes) - 0.4)
    ax.grid(False, axis="x")
    ax.set_xlabel("training rows n")


def _size_label(n: int) -> str:
    """1000 -> '1k', 100000 -> '100k', 7000 -> '7k', 300 -> '300'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def training_curves(losses_files, metrics_files, png, pdf, units: dict | None = None) -> None:
    """Validation MAE over the optimiser's iterations for every trained model, one panel per problem:
    colour the surrogate kind, line style the training size, one line per seed."""
    _style()
    frames = []
    for f, mf in zip(losses_files, metrics_files):
        m, d = read_record(mf, "metrics file"), pd.read_csv(f)
        if "val_mae" in d:
            frames.append(d[["iteration", "val_mae"]].assign(problem=m["problem"], surrogate=m["surrogate"],
                                                              n=m["n_train"], seed=m["seed"]))
    if not frames:
        raise ValueError("no losses.csv holds a val_mae column")
    df = pd.concat(frames, ignore_index=True)
    problems = sorted(df.problem.unique())
    fig, axes, spare = _panels(len(problems))
    sizes = sorted(df.n.unique())
    styles = dict(zip(sizes[::-1], ["-", "--", ":", "-."] * len(sizes)))  # the largest n solid
    for ax, p in zip(axes, problems):
        for (kind, n, _), g in df[df.problem == p].groupby(["surrogate", "n", "seed"]):
            ax.plot(g.iteration, g.val_mae, color=color(kind), ls=styles[n], lw=1.2, alpha=0.85)
        ax.set(yscale="log", title=f"problem {p}", xlabel="iteration (optimiser steps)",
               ylabel=f"val. MAE ({(units or {}).get(p, 'state units')})")
    kinds = [k for k in SURROGATE_COLORS if k in set(df.surrogate)]
    handles = [_handle(label(k), color(k)) for k in kinds]
    if len(sizes) > 1:
        handles += [_handle(f"n = {n:,}", "0.3", ls=styles[n]) for n in sizes]
    _place_legend(fig, spare, handles)
    fig.suptitle("Training curves: validation MAE, one line per seed")
    save(fig, png, pdf)


def rollout_error(metrics_files, png, pdf, time_units: str = "1", units: str = "1") -> None:
    """ITNN: MAE of the rolled-out state against the held-out trajectories over time, per training size
    (line: the seeds' mean; band: their minimum to maximum), with the Euler floor of the test set."""
    _style()
    runs, floors = [], []
    for f in metrics_files:
        m = read_record(f, "metrics file")
        if "rollout_error" in m:
            r = m["rollout_error"]  # t = 0 is the given initial state: no error to show
            runs.append(pd.DataFrame({"t": r["t"][1:], "mae": r["mae"][1:], "n": m["n_train"], "seed": m["seed"]}))
            floors.append((m.get("euler_floor") or {}).get("mae"))
    if not runs:
        raise ValueError("no metrics file holds a rollout_error")
    floor = floors[0]
    df = pd.concat(runs, ignore_index=True)
    sizes = sorted(df.n.unique())
    shades = sns.dark_palette(color("itnn"), len(sizes) + 2, reverse=True)[1:-1][::-1]  # darker: more data
    styles = ["-", "--", ":", "-."][:len(sizes)][::-1]  # the largest n solid
    fig, axes = _grid(1, 1, panel=(6.0, 3.4), extra_h=0.6)
    ax = axes[0, 0]
    handles = []
    for n, c, ls in zip(sizes, shades, styles):
        g = df[df.n == n].groupby("t").mae.agg(["mean", "min", "max"]).reset_index()
        ax.fill_between(g.t, g["min"], g["max"], color=c, alpha=0.2, lw=0)
        ax.plot(g.t, g["mean"], color=c, ls=ls, lw=1.8)
        handles.append(_handle(f"ITNN, n = {n:,} ({df[df.n == n].seed.nunique()} seeds)", c, ls=ls))
    if floor is not None:
        ax.axhline(floor, color=EULER, ls=":", lw=1.2)
        handles.append(_handle("Euler floor (MAE over the test set)", EULER, ls=":", lw=1.2))
    ax.set(yscale="log", xlabel=f"time along the rollout ({units_label(time_units)})",
           ylabel=f"rollout MAE ({units_label(units)})",
           title="ITNN: error accumulated along the rollout, over the held-out test trajectories")
    _legend(fig, handles, ncol=2)
    save(fig, png, pdf)


# ---------------------------------------------------------------- held-out trajectories
def rollout_predictions(net, step_problem, source_problem, X: np.ndarray, n_traj: int) -> np.ndarray:
    """An iterative network rolled out from the first row of each of ``n_traj`` test trajectories (rows of
    ``X`` ordered by trajectory, then time on the source problem's save grid); returns the rows' states."""
    from core.steps import whole_steps
    from surrogates.itnn import rollout

    Xt = X.reshape(n_traj, -1, X.shape[1])
    states, params = source_problem.split(source_problem.columns(Xt[:, 0]), n_traj)
    y0, params = step_problem.rollout_inputs(states, params, n_traj, t0=Xt[:, 0, 0])
    per = whole_steps(source_problem.save_interval, step_problem.step, "ITNN step on the test grid")
    R = rollout(net, y0, params, (Xt.shape[1] - 1) * per, keep_every=per, clock=step_problem.rollout_clock)
    return R.transpose(1, 0, 2).reshape(len(X), -1)


def load_network(study: Study, checkpoint, run) -> tuple:
    """(network, its provenance) of a checkpoint drawn in a figure: it must be the run ``[problem, kind, n,
    seed, arch]`` its input slot stands for, as every other consumer checks (else refused, naming the file)."""
    from surrogates.network import load_checkpoint
    from surrogates.scoring import expected_model

    p, kind, n, seed, arch = run
    net, meta = load_checkpoint(checkpoint, expect=expected_model(study, p, kind, int(n), int(seed), arch))
    return net.eval(), meta["provenance"]


def load_test(study: Study, path, problem: str) -> dict:
    """The held-out test set of ``problem`` for a figure, checked (checksums, finite values, provenance)."""
    from surrogates.datasets import expected_provenance

    return load_dataset(path, expect=expected_provenance(study.problem(problem), study, "test"))[0]


def test_trajectory_ids(z) -> np.ndarray:
    """The trajectory of each row of a loaded test set (``trajectory``; a test set drawn from one trajectory,
    such as A's held-out time points, has none: every row is trajectory 0)."""
    return z["trajectory"] if "trajectory" in getattr(z, "files", z) else np.zeros(len(z["X"]), dtype=np.int64)


def trajectories(test_npz, predictions: dict, png, pdf, units: dict | None = None,
                 quantiles=(0.5, 0.9, 1.0)) -> None:
    """Held-out test trajectories: the Euler reference (black) and each surrogate's prediction of every
    output (rows) for the trajectories at the given quantiles of the surrogates' mean error (columns:
    median, 90th percentile, worst). ``predictions``: kind -> (rows, outputs) array on the test rows."""
    _style()
    z, _ = load_dataset(test_npz)  # checksums and finite values checked
    X, Y, traj = z["X"], z["Y"], test_trajectory_ids(z)
    ins, outs = [str(s) for s in z["input_names"]], [str(s) for s in z["output_names"]]
    units = units or {}
    err = np.mean([np.abs(P - Y).mean(axis=1) for P in predictions.values()], axis=0)
    per_traj = pd.Series(err).groupby(traj).mean()
    ranked = per_traj.sort_values().index.to_numpy()
    chosen = {}  # trajectory -> the first quantile that picks it (a test set of one trajectory: one column)
    for q in quantiles:
        chosen.setdefault(ranked[min(int(q * (len(ranked) - 1)), len(ranked) - 1)], q)
    picks, quantiles = list(chosen), list(chosen.values())
    fig, axes = _grid(len(outs), len(picks), panel=(2.8, 2.3), extra_h=0.8, sharex=True)
    off_scale = set()
    for j, (q, k) in enumerate(zip(quantiles, picks)):
        rows = np.flatnonzero(traj == k)
        rows = rows[np.argsort(X[rows, ins.index("t")], kind="stable")]  # held-out time points in time order
        t = X[rows, ins.index("t")]
        for i, o in enumerate(outs):
            ax = axes[i, j]
            ax.plot(t, Y[rows, i], color=EULER, lw=2.2, zorder=2)
            for kind, P in predictions.items():
                ax.plot(t, P[rows, i], color=color(kind), ls="--", lw=1.4, zorder=3)
            off_scale |= _clip_to_reference(ax, Y[:, i], {kind: P[rows, i] for kind, P in predictions.items()})
            ax.set_ylabel(f"{o} ({units_label(units.get(o))})" if j == 0 else "")
        start = ", ".join(f"{n}={X[rows][0, ins.index(n)]:.3g}" for n in ins if n != "t")
        name = {0.5: "median", 1.0: "worst"}.get(q, f"{100 * q:.0f}th pct.")
        if len(ranked) > 1:  # one trajectory: the suptitle says what the column is
            axes[0, j].set_title(f"{name} error\n{start}", fontsize=8.5)
        axes[-1, j].set_xlabel(f"time ({units_label(units.get('t'))})")
    handles = [_handle("Euler reference (held out)", EULER, lw=2.2)]
    handles += [_handle(label(k) + (", partly off scale" if k in off_scale else ""), color(k), ls="--")
                for k in predictions]
    _legend(fig, handles)
    fig.suptitle(f"Held-out test trajectories ({len(per_traj)} in the test set; columns ranked by the "
                 "surrogates' mean error)" if len(per_traj) > 1 else f"The held-out time points ({len(X)})\nof the "
                 "problem's one trajectory")
    save(fig, png, pdf)


def _clip_to_reference(ax, reference: np.ndarray, predictions: dict) -> set:
    """Keep a panel's y range to the reference's range over the whole test set (plus a margin), so that one
    diverging prediction does not flatten the others; returns the kinds drawn partly outside it."""
    lo, hi = float(np.min(reference)), float(np.max(reference))
    pad = 0.25 * (hi - lo) or 0.1 * max(abs(hi), 1e-12)
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    return {k for k, P in predictions.items() if np.any((P < lo) | (P > hi))}


def hh_m_figure(t, V, m_true, test_t, predictions: dict, losses: dict, png, pdf, units: dict | None = None) -> None:
    """The seed notebook's figure: the voltage trace; m(t), reference and each variant's prediction with the
    held-out time points beneath the reference; then the data loss, the physics residual and the
    validation MAE over iterations, one line per variant (one colour each)."""
    _style()
    units = units or {}
    tu = units_label(units.get("t"))
    fig = plt.figure(figsize=(9.0, 8.0), layout="constrained")
    gs = fig.add_gridspec(3, 3, height_ratios=[1, 1.4, 1.3])
    ax_v, ax_m = fig.add_subplot(gs[0, :]), fig.add_subplot(gs[1, :])
    ax_v.plot(t, V, color=EULER, lw=1)
    ax_v.set(ylabel=f"V ({units_label(units.get('V'))})", xlabel=f"time ({tu})", title="voltage under the pulse protocol")
    idx = np.clip(np.searchsorted(t, test_t), 0, len(t) - 1)
    ax_m.scatter(test_t, m_true[idx], s=12, color=TEST_POINTS, lw=0, zorder=1)
    ax_m.plot(t, m_true, color=EULER, lw=1.5, zorder=2)
    for kind, pred in predictions.items():
        ax_m.plot(t, pred, color=color(kind), ls="--", lw=1.3, zorder=3)
    ax_m.set(ylabel=f"m ({units_label(units.get('m'))})", xlabel=f"time ({tu})",
             title="gating variable m: reference, predictions and held-out test points")
    panels = (("data", "data loss", "MSE (normalised)"), ("physics", "physics residual", "mean square (normalised)"),
              ("val_mae", "validation MAE", f"MAE of m ({units_label(units.get('m'))})"))
    for col, (prefix, title, ylabel) in enumerate(panels):
        ax = fig.add_subplot(gs[2, col])
        for kind, df in losses.items():
            for c in [c for c in df.columns if c.startswith(prefix)]:
                ax.plot(df["iteration"], df[c], color=color(kind), lw=1.4)
        ax.set(yscale="log", title=title, xlabel="iteration (optimiser steps)", ylabel=ylabel)
        if not ax.lines:
            ax.text(0.5, 0.5, "no variant has this term", ha="center", va="center", transform=ax.transAxes)
        polish = [df["iteration"][df["lr"].isna()].min() for df in losses.values() if "lr" in df]
        polish = [p for p in polish if np.isfinite(p)]
        if polish:  # rows without a learning rate: the L-BFGS polish (training.lbfgs_iterations)
            ax.axvline(min(polish), color="0.5", ls=":", lw=1)
            ax.text(min(polish), 0.98, " L-BFGS", color="0.4", fontsize=8, va="top", transform=ax.get_xaxis_transform())
    handles = [_handle("m reference (Euler)", EULER, lw=1.8),
               _handle("held-out test points", TEST_POINTS, ls="none", marker="o")]
    handles += [_handle(label(k), color(k), ls="--") for k in predictions]
    _legend(fig, handles, ncol=len(handles))
    fig.suptitle("Hodgkin-Huxley sodium activation m(t) from (t, V): the seed notebook's experiment")
    save(fig, png, pdf)


# ---------------------------------------------------------------- speed
def timed_rows(raw_csv) -> pd.DataFrame:
    """The speed benchmark's timed rows (skipped and failed ones dropped), ``noisy`` as a boolean."""
    df = pd.read_csv(raw_csv)
    for col in ("skipped", "failed"):
        if col in df:
            df = df[df[col].isna()]
    if df.empty:
        raise ValueError(f"{raw_csv}: no timed rows (every backend was skipped or failed)")
    return df.assign(noisy=_flag(df, "noisy"))


def _flag(df: pd.DataFrame, col: str) -> pd.Series:
    """A CSV's boolean column (missing or empty: False)."""
    if col not in df:
        return pd.Series(False, index=df.index)
    return df[col].astype(str).str.lower().eq("true")


def _in_sweep(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    return df[df.sweep.astype(str).str.split(",").apply(lambda s: axis in s)]


def _swept(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The rows of one sweep that form curves: seed ensembles (``<kind>_ensemble``) are timed at one point of
    it only, so they stay in the speedup table and out of the sweep's panels."""
    df = _in_sweep(df, axis)
    return df[~df.surrogate.astype(str).str.endswith("_ensemble")]


def _machine(df: pd.DataFrame) -> str:
    from core.machine import describe_machine

    row = {k: (None if pd.isna(v) else v) for k, v in df.iloc[0].items()}
    if row.get("cpu") is None or row.get("cores") is None:
        return "machine not recorded"
    return describe_machine({**row, "cores": int(row["cores"])})


def _ints(values) -> str:
    return ", ".join(f"{int(v):,}" for v in sorted(set(values)))


def _crossings(x, y) -> list[float]:
    """Where a piecewise-linear (in log-log) curve crosses y = 1."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    out = []
    for i in range(len(lx) - 1):
        if ly[i] == 0 or ly[i] * ly[i + 1] < 0:
            f = ly[i] / (ly[i] - ly[i + 1]) if ly[i] != ly[i + 1] else 0.0
            out.append(float(np.exp(lx[i] + f * (lx[i + 1] - lx[i]))))
    return out


def _speed_lines(ax, df: pd.DataFrame, x: str, y: str) -> list[float]:
    """One line per (backend, precision), hollow markers for noisy points, a star wherever it crosses 1;
    returns the crossings."""
    found = []
    for (backend, prec), g in df.groupby(["backend", "precision"]):
        g = g.sort_values(x)
        c = color(backend)
        ax.plot(g[x], g[y], color=c, ls=PRECISION_STYLES.get(prec, "-"), lw=1.5, zorder=2)
        for noisy, h in g.groupby("noisy"):
            ax.scatter(h[x], h[y], marker=BACKEND_MARKERS.get(backend, "o"), s=30, zorder=3, lw=1.2,
                       facecolors="white" if noisy else c, edgecolors=c)
        for xc in _crossings(g[x], g[y]):
            ax.scatter([xc], [1.0], marker="*", s=120, color=c, edgecolors=EULER, lw=0.6, zorder=4)
            found.append(xc)
    return found


def _speed_figure(df: pd.DataFrame, x: str, xlabel: str, xname: str, title: str, png, pdf) -> None:
    """Speedup panels: a column per surrogate kind; an end-to-end row, and a kernel-only row where a GPU ran.
    The largest crossover of each panel is labelled (the most a surrogate can be asked for and still pay)."""
    kinds = [k for k in SURROGATE_COLORS if k in set(df.surrogate)] + sorted(set(df.surrogate) - set(SURROGATE_COLORS))
    rows = [("speedup", "end to end", df)]
    gpu = df[df.device != "cpu"]
    if len(gpu):
        rows.append(("kernel_speedup", "kernel only (GPU)", gpu))
    fig, axes = _grid(len(rows), len(kinds), panel=(2.9, 2.6), extra_h=1.4, sharey="row")
    for (y, timing, d), axrow in zip(rows, axes):
        for ax, kind in zip(axrow, kinds):
            sub = d[d.surrogate == kind]
            ax.axhline(1.0, color=EULER, ls="--", lw=1)
            found = _speed_lines(ax, sub, x, y)
            if found:
                ax.annotate(f"{xname} = {max(found):,.3g}", (max(found), 1.0), xytext=(5, 6),
                            textcoords="offset points", fontsize=8)
            ax.set(xscale="log", yscale="log", xlabel=xlabel, title=f"{label(kind)}, {timing}")
            if 0 < sub[x].nunique() <= 6:
                _size_ticks(ax, sub[x])
        axrow[0].set_ylabel(f"{'speedup' if y == 'speedup' else 'kernel speedup'} (\u00d7)")
    _legend(fig, _speed_handles(df))
    fig.suptitle(title)
    save(fig, png, pdf)


def _speed_handles(df: pd.DataFrame) -> list:
    handles = []
    for (backend, device), _ in df.groupby(["backend", "device"]):
        handles.append(_handle(f"{backend} ({device})", color(backend), marker=BACKEND_MARKERS.get(backend, "o")))
    precs = sorted(set(df.precision))
    if len(precs) > 1:
        handles += [_handle(p, "0.3", ls=PRECISION_STYLES.get(p, "-")) for p in precs]
    handles += [_handle("filled: spread <= 10%", "0.3", ls="none", marker="o"),
                _handle(NOISY_NOTE, "0.3", ls="none", marker="o", fill=False),
                _handle("break-even (speedup = 1)", EULER, ls="--", lw=1),
                _handle("crossover (interpolated)", "0.5", ls="none", marker="*", markeredgecolor=EULER)]
    return handles


def speedup_vs_n(raw_csv, png, pdf) -> None:
    """Speedup over the Euler solver (same device, same N x K outputs) against the number of cells N, at the
    K of the N sweep; stars mark where a backend crosses break-even."""
    _style()
    df = _swept(timed_rows(raw_csv), "N")
    _speed_figure(df, "n_cells", "cells N", "N",
                  f"Speedup over the Euler solver vs number of cells, K = {_ints(df.n_outputs)} kept states per "
                  f"cell\n{_machine(df)}; speedup = solver time / surrogate time, same outputs, same device",
                  png, pdf)


def _unmeasured(raw_csv, axis: str) -> list[str]:
    """Why points of a sweep were not measured (the reasons of its skipped rows that have no timed row beside
    them at the same point), e.g. a speed run's time budget."""
    raw = pd.read_csv(raw_csv)
    if "skipped" not in raw or "sweep" not in raw:
        return []
    sweep = raw[raw.sweep.notna()]
    sweep = _in_sweep(sweep, axis)
    timed = sweep[sweep.skipped.isna() & (sweep["failed"].isna() if "failed" in sweep else True)]
    done = set(zip(timed.n_cells, timed.n_outputs))
    left = sweep[sweep.skipped.notna() & ~pd.Series([(n, k) in done for n, k in zip(sweep.n_cells, sweep.n_outputs)],
                                                      index=sweep.index)]
    return sorted(set(left.skipped.astype(str)))


def _note_figure(png, pdf, title: str, note: str) -> None:
    """A figure that says what is missing and why, where the data for a plot were not measured."""
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10)
    fig.suptitle(title)
    save(fig, png, pdf)


def speedup_vs_k(raw_csv, png, pdf) -> None:
    """Speedup against the number of kept states per cell K at the N of the K sweep: the solver's cost hardly
    depends on K, a direct network's grows with it; stars mark the crossover. Where the run measured fewer
    than two K (its time budget spent first), the figure says so instead."""
    _style()
    df = _swept(timed_rows(raw_csv), "K")
    if df.n_outputs.nunique() < 2:
        why = _unmeasured(raw_csv, "K")
        if not why:
            raise ValueError("the K sweep needs at least two values of K")
        return _note_figure(png, pdf, "Where a surrogate pays off: speedup vs kept states per cell",
                            f"The K sweep was not measured in this run (timed K: {_ints(df.n_outputs) or 'none'}): "
                            + "; ".join(why))
    _speed_figure(df, "n_outputs", "kept states per cell K", "K",
                  f"Where a surrogate pays off: speedup vs kept states per cell, N = {_ints(df.n_cells)} cells\n"
                  f"{_machine(df)}; speedup = solver time / surrogate time, same outputs, same device", png, pdf)


def time_vs_error(raw_csv, accuracy_csv, problem: str, png, pdf, units: str = "1") -> None:
    """End-to-end inference time against held-out test MAE at the paper's point (the first, smallest N of
    the N sweep, where the seed ensembles are timed too): colour the surrogate kind, marker the backend; the
    solver's time per device dashed, the Euler floor dotted."""
    _style()
    df = _in_sweep(timed_rows(raw_csv), "N")
    df = df[df.n_cells == df.n_cells.min()]
    N, K = _ints(df.n_cells), _ints(df.n_outputs)
    fig, axes = _grid(1, 1, panel=(8.0, 3.8))  # the axes and the legend beside them
    ax = axes[0, 0]
    for _, r in df.iterrows():
        c = color(r.surrogate)
        ax.scatter(r.surrogate_seconds, r.mae, marker=BACKEND_MARKERS.get(r.backend, "o"), s=55, lw=1.3,
                   facecolors="white" if r.noisy else c, edgecolors=c, zorder=3)
    kinds = [k for k in SURROGATE_COLORS if k in set(df.surrogate)] + sorted(set(df.surrogate) - set(SURROGATE_COLORS))
    handles = [_handle(label(k), color(k), ls="none", marker="o") for k in kinds]
    handles += [_handle(f"{b} ({d})", "0.4", ls="none", marker=BACKEND_MARKERS.get(b, "o"))
                for (b, d), _ in df.groupby(["backend", "device"])]
    for j, (dev, sub) in enumerate(df.groupby("device")):
        ls = ["--", "-."][j % 2]
        ax.axvline(sub.solver_seconds.median(), color=EULER, ls=ls, lw=1)
        handles.append(_handle(f"Euler solver time ({sub.solver_backend.iloc[0]} backend, {dev})", EULER, ls=ls, lw=1))
    floors = _floors(accuracy_csv)
    if problem in floors.index:
        ax.axhline(floors.loc[problem, "mae_mean"], color=EULER, ls=":", lw=1.2)
        handles.append(_handle(label("euler_floor"), EULER, ls=":", lw=1.2))
    if df.noisy.any():
        handles.append(_handle(NOISY_NOTE, "0.4", ls="none", marker="o", fill=False))
    ax.set(xscale="log", yscale="log", xlabel=f"end-to-end time for N = {N} cells x K = {K} (s)",
           ylabel=f"held-out test MAE ({units_label(units)})",
           title=f"Inference time vs error, problem {problem}\n{_machine(df)}")
    _side_legend(ax, handles)
    save(fig, png, pdf)


def solver_throughput(throughput_csv, png, pdf) -> None:
    """Forward-Euler throughput (cell-steps per second) against the number of cells N, per solver backend
    (colour) and dtype (line style): end to end, and kernel only where a GPU backend ran."""
    _style()
    df = pd.read_csv(throughput_csv)
    if "skipped" in df:
        df = df[df.skipped.isna()]
    if "cell_steps_per_s" not in df or df.cell_steps_per_s.isna().all():
        raise ValueError(f"{throughput_csv}: no measured rows")
    df = df[df.cell_steps_per_s.notna()]
    rows = [("cell_steps_per_s", "end to end", df.assign(noisy=_flag(df, "seconds_noisy")))]
    if "kernel_cell_steps_per_s" in df and df.kernel_cell_steps_per_s.notna().any():
        k = df[df.kernel_cell_steps_per_s.notna()]
        rows.append(("kernel_cell_steps_per_s", "kernel only (GPU, CUDA events)",
                     k.assign(noisy=_flag(k, "kernel_seconds_noisy"))))
    fig, axes = _grid(1, len(rows), panel=(4.0 if len(rows) > 1 else 5.0, 3.0), extra_h=1.2, sharey=True)
    for ax, (y, timing, d) in zip(axes[0], rows):
        for (backend, dtype), g in d.groupby(["backend", "dtype"]):
            g = g.sort_values("n_cells")
            c = color(backend)
            ax.plot(g.n_cells, g[y] / 1e9, color=c, ls=PRECISION_STYLES.get(dtype, "-"), lw=1.6, zorder=2)
            ax.scatter(g.n_cells, g[y] / 1e9, marker=BACKEND_MARKERS.get(backend, "o"), s=30, lw=1.2, zorder=3,
                       facecolors=np.where(g.noisy, "white", c), edgecolors=c)
            if len(g) == 1:  # a lone point has no line style to show its dtype
                ax.annotate(dtype, (g.n_cells.iloc[0], g[y].iloc[0] / 1e9), xytext=(7, 0), textcoords="offset points",
                            va="center", fontsize=7.5, color=c)
        ax.set(xscale="log", yscale="log", xlabel="cells N", title=timing)
        _size_ticks(ax, d.n_cells)
    axes[0, 0].set_ylabel("throughput (G cell-steps / s)")
    handles = [_handle(b, color(b), marker=BACKEND_MARKERS.get(b, "o")) for b in dict.fromkeys(df.backend)]
    handles += [_handle(d, "0.3", ls=PRECISION_STYLES.get(d, "-")) for d in sorted(set(df.dtype))]
    if any(d.noisy.any() for _, _, d in rows):
        handles.append(_handle(NOISY_NOTE, "0.3", ls="none", marker="o", fill=False))
    _legend(fig, handles, ncol=3)
    fig.suptitle(f"Forward-Euler solver throughput, model {', '.join(sorted(set(df.model)))}\n{_ints(df.n_steps)} "
                 f"steps, K = {_ints(df.n_outputs)} kept states per cell; {_machine(df)}")
    save(fig, png, pdf)
