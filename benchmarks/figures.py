"""Figures of the paper (seaborn), each written as PNG and PDF with labelled axes and units."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from core.io import read_json, write_bytes  # noqa: E402


def _style():
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def save(fig, png, pdf) -> None:
    """Save ``fig`` to both files atomically, then close it."""
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        write_bytes(path, buf.getvalue())
    plt.close(fig)


def error_vs_size(accuracy_csv, png, pdf) -> None:
    """Test MAE against training-set size, per problem and surrogate, with the Euler floor."""
    _style()
    df = pd.read_csv(accuracy_csv)
    runs, floor = df[df.surrogate != "euler_floor"], df[df.surrogate == "euler_floor"].set_index("problem")
    problems = sorted(runs.problem.unique())
    fig, axes = plt.subplots(1, len(problems), figsize=(3.6 * len(problems), 3.4), squeeze=False)
    for ax, p in zip(axes[0], problems):
        d = runs[runs.problem == p]
        sns.lineplot(d, x="n_train", y="mae_mean", hue="surrogate", style="surrogate", markers=True, ax=ax,
                     err_style=None)
        for _, r in d.iterrows():
            ax.errorbar(r.n_train, r.mae_mean, yerr=r.mae_std, fmt="none", ecolor="gray", capsize=2)
        if p in floor.index:
            ax.axhline(floor.loc[p, "mae_mean"], color="k", ls="--", lw=1, label="Euler floor")
        ax.set(xscale="log", yscale="log", title=f"problem {p}", xlabel="training rows n", ylabel="test MAE (state units)")
        ax.legend(fontsize=7)
    fig.suptitle("Held-out test error vs training-set size (mean over seeds; dashed: Euler dt=0.01 vs exact)")
    save(fig, png, pdf)


def training_curves(losses_files, metrics_files, png, pdf) -> None:
    """Validation MAE over iterations for each trained model; what each run is comes from its metrics.json."""
    _style()
    frames = []
    for f, mf in zip(losses_files, metrics_files):
        m = read_json(mf, "metrics file")
        d = pd.read_csv(f)
        if "val_mae" not in d:
            continue
        d = d.assign(problem=m["problem"], surrogate=m["surrogate"], n=f"n = {m['n_train']}", seed=m["seed"])
        frames.append(d[["iteration", "val_mae", "problem", "surrogate", "n", "seed"]])
    df = pd.concat(frames, ignore_index=True)
    g = sns.relplot(df, x="iteration", y="val_mae", hue="surrogate", style="n", units="seed", estimator=None,
                    col="problem", kind="line", col_wrap=min(3, df.problem.nunique()), height=3, facet_kws={"sharey": False})
    g.set(yscale="log")
    g.set_axis_labels("iteration", "validation MAE (state units)")
    g.figure.suptitle("Training curves", y=1.02)
    save(g.figure, png, pdf)


def rollout_error(metrics_files, png, pdf) -> None:
    """Mean absolute error of ITNN rollouts over time on the held-out trajectories."""
    _style()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for f in metrics_files:
        m = read_json(f, "metrics file")
        if "rollout_error" not in m:
            continue
        t, e = m["rollout_error"]["t"][1:], m["rollout_error"]["mae"][1:]  # t = 0 is the given initial state
        ax.plot(t, e, label=f"n={m['n_train']} seed {m['seed']}")
    ax.set(yscale="log", xlabel="time (dimensionless)", ylabel="rollout MAE (state units)",
           title="ITNN: error accumulated along the rollout")
    ax.legend(fontsize=7)
    save(fig, png, pdf)


def trajectories(test_npz, checkpoints: dict, png, pdf, n_show: int = 3) -> None:
    """Held-out test trajectories: reference u(t) and each surrogate's prediction."""
    import torch

    from surrogates.network import load_checkpoint

    _style()
    with np.load(test_npz) as z:
        X, Y, traj, outs = z["X"], z["Y"], z["trajectory"], list(z["output_names"])
    picks = np.linspace(0, traj.max(), n_show).astype(int)
    fig, axes = plt.subplots(1, n_show, figsize=(4 * n_show, 3.2), squeeze=False, sharey=True)
    models = {name: load_checkpoint(path)[0].eval() for name, path in checkpoints.items()}
    for ax, j in zip(axes[0], picks):
        rows = traj == j
        t = X[rows, 0]
        ax.plot(t, Y[rows, 0], "k-", lw=2, label="Euler reference (held out)")
        with torch.no_grad():
            for name, m in models.items():
                ax.plot(t, m(torch.as_tensor(X[rows], dtype=torch.float32)).numpy()[:, 0], "--", label=name)
        ic = ", ".join(f"{n}={v:.3g}" for n, v in zip(["u0", "w0", "I"], X[rows][0, 1:]))
        ax.set(xlabel="time (dimensionless)", ylabel=f"{outs[0]} (dimensionless)", title=ic)
    axes[0][0].legend(fontsize=7)
    save(fig, png, pdf)


def hh_m_figure(t, V, m_true, test_t, predictions: dict, losses: dict, png, pdf) -> None:
    """The seed notebook's figure: voltage; m true vs predicted with the test points; loss curves."""
    _style()
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=False)
    axes[0].plot(t, V, "b-")
    axes[0].set(ylabel="V (mV)", xlabel="time (ms)", title="Hodgkin-Huxley voltage under the pulse protocol")
    axes[1].plot(t, m_true, "r-", lw=2, label="m reference")
    for name, pred in predictions.items():
        axes[1].plot(t, pred, "--", label=name)
    idx = np.searchsorted(t, test_t)
    axes[1].scatter(test_t, m_true[np.clip(idx, 0, len(t) - 1)], c="orange", s=6, zorder=5, label="test points")
    axes[1].set(ylabel="m (1)", xlabel="time (ms)")
    axes[1].legend(fontsize=7)
    for name, df in losses.items():
        for col in [c for c in df.columns if c not in ("iteration", "lr", "elapsed_s")]:
            axes[2].plot(df["iteration"], df[col], label=f"{name}: {col}")
    axes[2].set(yscale="log", xlabel="iteration", ylabel="loss / metric")
    axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save(fig, png, pdf)


def _timed(raw_csv) -> pd.DataFrame:
    df = pd.read_csv(raw_csv)
    df = df[df["skipped"].isna()] if "skipped" in df else df
    df = df.copy()
    df["backend / precision"] = df["backend"] + " " + df["precision"] + " (" + df["device"] + ")"
    return df


def speedup_vs_n(raw_csv, n_outputs: int, png, pdf) -> None:
    """Speedup over the solver against the number of cells, at the paper's K."""
    _style()
    df = _timed(raw_csv)
    df = df[df.n_outputs == n_outputs]
    g = sns.relplot(df, x="n_cells", y="speedup", hue="backend / precision", style="surrogate", kind="line",
                    markers=True, height=3.6, aspect=1.4)
    g.set(xscale="log", yscale="log")
    for ax in g.axes.flat:
        ax.axhline(1.0, color="k", ls="--", lw=1)
    g.set_axis_labels("cells N", f"speedup vs Euler solver (K = {n_outputs} kept states)")
    g.figure.suptitle("Surrogate speedup (> 1: faster than the solver)", y=1.02)
    save(g.figure, png, pdf)


def speedup_vs_k(raw_csv, png, pdf) -> None:
    """Speedup against the number of kept outputs per cell: the crossover where a surrogate pays off."""
    _style()
    df = _timed(raw_csv)
    n0 = df.n_cells.min()
    df = df[df.n_cells == n0]
    if df.n_outputs.nunique() < 2:
        raise ValueError("the K sweep needs at least two values of K")
    g = sns.relplot(df, x="n_outputs", y="speedup", hue="backend / precision", style="surrogate", kind="line",
                    markers=True, height=3.6, aspect=1.4)
    g.set(xscale="log", yscale="log")
    for ax in g.axes.flat:
        ax.axhline(1.0, color="k", ls="--", lw=1, label="break-even")
    g.set_axis_labels("kept states per cell K", f"speedup vs Euler solver (N = {n0})")
    g.figure.suptitle("Where a surrogate starts to pay off: few outputs per cell favour the network", y=1.02)
    save(g.figure, png, pdf)


def time_vs_error(raw_csv, accuracy_csv, problem: str, n_outputs: int, png, pdf) -> None:
    """Inference time against held-out error, with the solver's time (and its Euler floor) as reference lines."""
    _style()
    df = _timed(raw_csv)
    df = df[(df.n_outputs == n_outputs) & (df.n_cells == df.n_cells.max())]
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(df, x="surrogate_seconds", y="mae", hue="backend / precision", style="surrogate", s=70, ax=ax)
    for dev, sub in df.groupby("device"):
        ax.axvline(sub.solver_seconds.median(), color="k", ls="--", lw=1)
        ax.annotate(f"Euler solver ({sub.solver_backend.iloc[0]}, {dev})", (sub.solver_seconds.median(), ax.get_ylim()[0]),
                    rotation=90, va="bottom", ha="right", fontsize=7)
    acc = pd.read_csv(accuracy_csv)
    floor = acc[(acc.problem == problem) & (acc.surrogate == "euler_floor")]
    if len(floor):
        ax.axhline(float(floor.mae_mean.iloc[0]), color="gray", ls=":", lw=1, label="Euler floor (MAE)")
    ax.set(xscale="log", yscale="log", xlabel=f"seconds for N = {int(df.n_cells.max())} cells x K = {n_outputs}",
           ylabel="held-out test MAE", title="Inference time vs error")
    ax.legend(fontsize=6)
    save(fig, png, pdf)
