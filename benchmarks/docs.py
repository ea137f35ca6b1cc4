"""The results tables of the docs, generated from the tracked reference tables (``benchmarks/reference/``).

    python -m benchmarks.reference --docs           # rewrite every generated block of README.md, benchmarks/README.md
    python -m benchmarks.reference --docs --check   # exit 1, naming the file and block, where a block is stale

A generated block is the text between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated -->``; NAME
picks the function of ``BLOCKS`` that renders it from the reference folder. Everything else in a document is
left as it is. ``tests/test_docs.py`` fails when a block differs from what the tables give, so a number in
these blocks is always the tracked tables' number.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from core.errors import InvalidInputError
from core.io import write_text

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "reference"
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
BLOCK = re.compile(r"(<!-- BEGIN generated: ([\w-]+) -->\n)(.*?)(<!-- END generated -->)", re.S)
PAPER_N, PAPER_K = 20000, 26


# ---------------------------------------------------------------- number formats
def sci(x: float) -> str:
    """3 significant digits, a small number as 1.79e-3."""
    if pd.isna(x):
        return "-"
    if x != 0 and abs(x) < 0.01:
        m, e = f"{x:.2e}".split("e")
        return f"{m}e{int(e)}"
    return f"{x:.3g}"


def ratio(x: float) -> str:
    """A speedup: 3 significant digits, never in exponent form."""
    if pd.isna(x):
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.1g}"


def _read(ref: Path, name: str) -> pd.DataFrame:
    path = ref / name
    if not path.exists():
        raise InvalidInputError(f"{path}: missing; the docs' tables are generated from it")
    return pd.read_csv(path)


# ---------------------------------------------------------------- the reference run (run.md)
def run_facts(ref: Path) -> dict:
    """What run.md records: wall time, jobs, machine, code version, training seconds."""
    path = ref / "run.md"
    if not path.exists():
        raise InvalidInputError(f"{path}: missing; the docs' run summary is generated from it")
    text = path.read_text()

    def grab(pattern, what):
        m = re.search(pattern, text, re.M)
        if not m:
            raise InvalidInputError(f"{path}: no {what} found (pattern {pattern!r})")
        return m.group(1)

    seconds = [float(s) for s in re.findall(r"^\| \w+ \| \w+ \| \d+ \| (\d+) \|$", text, re.M)]
    if "Jobs of the run" in text:  # benchmarks.runlog's summary of Snakemake's `benchmark:` records
        times = {"wall": grab(r"^Jobs of the run.*?\(span \*\*([\d:]+)\*\*\)", "wall time"),
                 "day": grab(r"^Jobs of the run.*?: \d+ jobs from (\d{4}-\d\d-\d\d) ", "date of the run"),
                 "jobs": int(grab(r"^Jobs of the run.*?: (\d+) jobs from", "job count"))}
    else:  # the summary of Snakemake's log that earlier reference runs recorded
        times = {"wall": grab(r"Wall time of the run.*?\*\*([\d:]+)\*\*", "wall time"),
                 "day": grab(r"Wall time of the run.*?\), (\d{4}-\d\d-\d\d) ", "date of the run"),
                 "jobs": int(grab(r"; (\d+) jobs finished", "job count"))}
    return {
        **times,
        "machine": grab(r"^- machine: ([^;]+);", "machine"),
        "software": grab(r"^- machine: [^;]+; (.*)$", "software versions"),
        "version": grab(r"^- models trained by code version\(s\): (.*)$", "code version"),
        "grid": grab(r"^- training grid: (.*)$", "training grid state"),
        "train_seconds": sum(seconds),
        "train_jobs": sum(int(n) for n in re.findall(r"^\| \w+ \| \w+ \| (\d+) \| \d+ \|$", text, re.M)),
    }


# ---------------------------------------------------------------- blocks
def _acc(acc: pd.DataFrame, problem: str, surrogate: str, n: int) -> pd.Series:
    rows = acc[(acc.problem == problem) & (acc.surrogate == surrogate) & (acc.n_train.astype("Int64") == n)]
    if len(rows) != 1:
        raise InvalidInputError(f"accuracy.csv: expected one row for {problem} {surrogate} n = {n}, found {len(rows)}")
    return rows.iloc[0]


def _floor(acc: pd.DataFrame, problem: str) -> pd.Series:
    rows = acc[(acc.problem == problem) & (acc.surrogate == "euler_floor")]
    if len(rows) != 1:
        raise InvalidInputError(f"accuracy.csv: expected one euler_floor row for {problem}, found {len(rows)}")
    return rows.iloc[0]


def _best(speed: pd.DataFrame, surrogates, n: int, k: int) -> pd.Series:
    rows = speed[speed.surrogate.isin(surrogates) & (speed.n_cells == n) & (speed.n_outputs == k)]
    if rows.empty:
        raise InvalidInputError(f"speedup.csv: no {'/'.join(surrogates)} row at N = {n}, K = {k}")
    return rows.loc[rows.speedup.idxmax()]


def glance(ref: Path) -> str:
    """The README's results at a glance: one row per question the study asks."""
    acc, speed, solver = _read(ref, "accuracy.csv"), _read(ref, "speedup.csv"), _read(ref, "solver_throughput.csv")
    run = run_facts(ref)
    ok = solver[solver.skipped.isna() & (solver.n_cells == 1e6) & (solver.dtype == "float32")]
    cpu = ok[ok.backend == "cpu"].cell_steps_per_s.max()
    npy = ok[ok.backend == "numpy"].cell_steps_per_s.max()
    c = _acc(acc, "C", "ddnn", 100000)
    cf, hf = _floor(acc, "C"), _floor(acc, "hh_m")
    d = acc[(acc.problem == "D") & (acc.surrogate == "itnn")]
    d = d.loc[d.mae_mean.idxmin()]
    small = {p: (_acc(acc, p, "pinn", 1000), _acc(acc, p, "ddnn", 1000)) for p in ("A", "B", "C")}
    helps = [p for p, (pinn, ddnn) in small.items() if pinn.mae_mean < ddnn.mae_mean]
    hurts = [p for p in small if p not in helps]
    verdict = (f"on {', '.join(helps)}" if helps else "nowhere") + (f", not on {', '.join(hurts)}" if hurts else "")
    h = {(s, n): _acc(acc, "hh_m", s, n) for s in ("ddnn", "pinn", "pinn_seed") for n in (1000, 7000)}
    direct = _best(speed, ["ddnn", "pinn"], PAPER_N, PAPER_K)
    k1 = _best(speed, ["ddnn", "pinn"], PAPER_N, 1)
    itnn = _best(speed, ["itnn"], PAPER_N, PAPER_K)
    ks = sorted(speed[speed.surrogate.isin(["ddnn", "pinn"]) & (speed.n_cells == PAPER_N)].n_outputs.unique())
    pays = [k for k in ks if _best(speed, ["ddnn", "pinn"], PAPER_N, k).speedup > 1]
    rows = [
        ("How fast is the classical solver?",
         f"`cpu` backend, FHN, float32, N = 1e6: {cpu / 1e9:.1f} G cell-steps/s ({cpu / npy:.0f}x NumPy)",
         "`solver_throughput.csv`"),
        ("How accurate is the paper's 3x64 net on C (n = 100k)?",
         f"MAE {sci(c.mae_mean)}, max {sci(c.max_abs_err_mean)} (Euler floor {sci(cf.mae_mean)} / "
         f"{sci(cf.max_abs_err_mean)})", "`accuracy.csv`"),
        ("Does the iterative net (ITNN) stay bounded?",
         f"yes: rolled out over C's test set, MAE {sci(d.mae_mean)}, max {sci(d.max_abs_err_mean)} "
         f"(n = {int(d.n_train)})", "`accuracy.csv`"),
        ("Does physics help when data is scarce (n = 1000)?",
         f"{verdict}: MAE pinn / ddnn " + ", ".join(f"{p} {sci(pi.mae_mean)} / {sci(dd.mae_mean)}"
                                                   for p, (pi, dd) in small.items()), "`accuracy.csv`"),
        ("hh_m, the seed notebook's gate (n = 7000)",
         f"MAE ddnn {sci(h['ddnn', 7000].mae_mean)}, pinn {sci(h['pinn', 7000].mae_mean)}, the notebook's "
         f"residual {sci(h['pinn_seed', 7000].mae_mean)} (floor {sci(hf.mae_mean)})", "`accuracy.csv`"),
        ("hh_m with 1000 rows",
         f"pinn MAE {sci(h['pinn', 1000].mae_mean)} (max {sci(h['pinn', 1000].max_abs_err_mean)}); ddnn "
         f"{sci(h['ddnn', 1000].mae_mean)} (max {sci(h['ddnn', 1000].max_abs_err_mean)})", "`accuracy.csv`"),
        ("Does a DDNN gain from more data (n = 10k to 100k)?", _data_size(ref), "`data_size.csv`"),
        (f"Is a surrogate faster than the solver (CPU, N = {PAPER_N:,}, K = {PAPER_K} kept states)?",
         f"no: best direct net {ratio(direct.speedup)}x ({direct.surrogate}, {direct.backend}), ITNN "
         f"{ratio(itnn.speedup)}x", "`speedup.csv`"),
        ("When does a direct net pay off on the CPU?",
         (f"only for K = {', '.join(map(str, pays))} kept state{'s' if pays != [1] else ''} per cell "
          f"({ratio(k1.speedup)}x at K = 1)"
          if pays else f"never in the sweep (best {ratio(k1.speedup)}x at K = 1)"), "`speedup.csv`"),
        ("How long does the paper's whole grid take?",
         f"{run['wall']} for {run['jobs']} jobs, {run['machine']}", "`run.md`"),
    ]
    lines = [f"Reference run of {run['day']} on {run['machine']} (code {run['version']}); tables in "
             f"[`benchmarks/reference/`](benchmarks/reference/).", "",
             "| question | answer | table |", "|---|---|---|"]
    lines += [f"| {q} | {a} | {t} |" for q, a, t in rows]
    return "\n".join(lines) + "\n"


def _data_size(ref: Path) -> str:
    """The glance's answer from ``data_size.csv`` (``benchmarks.data_size``): ddnn's test MAE from n = 10k to
    100k on B and C, under the grid's fixed step budget and at equal passes over the rows."""
    ds = _read(ref, "data_size.csv")

    def mae(problem, budget, n):
        rows = ds[(ds.problem == problem) & (ds.budget == budget) & (ds.n_train == n)]
        if len(rows) != 1:
            raise InvalidInputError(f"data_size.csv: expected one row for {problem} {budget} n = {n}, found {len(rows)}")
        return rows.iloc[0]

    parts, falls = {}, {}
    for budget in ("steps", "passes"):
        r = {p: (mae(p, budget, 10000), mae(p, budget, 100000)) for p in ("B", "C")}
        # beyond the seeds' spread: the fall larger than the two rows' standard deviations together
        falls[budget] = all(a.mae_mean - b.mae_mean > a.mae_std + b.mae_std for a, b in r.values())
        what = (f"{int(r['B'][0].steps):,} steps for every n" if budget == "steps"
                else f"{r['B'][0].passes:,.0f} passes over the rows")
        parts[budget] = f"{what}: B {sci(r['B'][0].mae_mean)} -> {sci(r['B'][1].mae_mean)}, C " \
                        f"{sci(r['C'][0].mae_mean)} -> {sci(r['C'][1].mae_mean)}"
    verdict = ("yes, when the steps grow with n" if falls["passes"] and not falls["steps"] else
               "yes, under either budget" if falls["passes"] and falls["steps"] else "not beyond the seeds' spread")
    return f"{verdict}. MAE at {parts['steps']}; at {parts['passes']}"


def _max_with_spread(r) -> str:
    """A row's mean maximum error, with the smallest and largest seed's own maximum where the table has them."""
    lo, hi = getattr(r, "max_abs_err_min", float("nan")), getattr(r, "max_abs_err_max", float("nan"))
    if lo == lo and hi == hi:  # both recorded (not NaN)
        return f"{sci(r.max_abs_err_mean)} ({sci(lo)} to {sci(hi)})"
    return sci(r.max_abs_err_mean)


def accuracy(ref: Path) -> str:
    """The accuracy table, condensed: each (problem, surrogate, n) with its seeds' mean and its ensemble."""
    acc = _read(ref, "accuracy.csv")
    lines = ["| problem | surrogate | n | arch | MAE (mean +- std of seeds) | max abs err (mean; seeds' range) | rel L2 | "
             "ensemble MAE / max | train s a seed |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for problem in acc.problem.drop_duplicates():
        p = acc[acc.problem == problem]
        f = _floor(acc, problem)
        lines.append(f"| {problem} | *Euler floor* | | | {sci(f.mae_mean)} | {sci(f.max_abs_err_mean)} | "
                     f"{sci(f.rel_l2_mean)} | | |")
        kinds = p[~p.surrogate.str.endswith("_ensemble") & (p.surrogate != "euler_floor")]
        for _, r in kinds.iterrows():
            ens = p[(p.surrogate == r.surrogate + "_ensemble") & (p.n_train == r.n_train) & (p.arch == r.arch)]
            e = f"{sci(ens.iloc[0].mae_mean)} / {sci(ens.iloc[0].max_abs_err_mean)}" if len(ens) else "-"
            lines.append(f"| {problem} | {r.surrogate} | {int(r.n_train)} | {r.arch} | {sci(r.mae_mean)} +- "
                         f"{sci(r.mae_std)} | {_max_with_spread(r)} | {sci(r.rel_l2_mean)} | {e} | "
                         f"{r.train_seconds_mean:.0f} |")
    return "\n".join(lines) + "\n"


def speed(ref: Path) -> str:
    """Speedups (solver time / surrogate time) over K at the paper's N and over N at the paper's K."""
    s = _read(ref, "speedup.csv")
    single = s[~s.surrogate.str.endswith("_ensemble")]
    cols = list(single[["surrogate", "backend"]].drop_duplicates().itertuples(index=False, name=None))
    head = " | ".join(f"{sur} {be}" for sur, be in cols)

    def table(sel, key, label):
        rows = [f"| {label} | solver s | {head} |", "|---:|---:|" + "---:|" * len(cols)]
        for v in sorted(sel[key].unique()):
            at = sel[sel[key] == v]
            cells = []
            for sur, be in cols:
                r = at[(at.surrogate == sur) & (at.backend == be)]
                cells.append("skipped" if r.empty else ratio(r.iloc[0].speedup) + (" *" if r.iloc[0].noisy else ""))
            rows.append(f"| {v:,} | {at.solver_seconds.iloc[0]:.3g} | " + " | ".join(cells) + " |")
        return rows

    lines = [f"Over K kept states per cell at N = {PAPER_N:,} cells:", ""]
    lines += table(single[single.n_cells == PAPER_N], "n_outputs", "K")
    lines += ["", f"Over N cells at K = {PAPER_K}:", ""]
    lines += table(single[single.n_outputs == PAPER_K], "n_cells", "N")
    ens = s[s.surrogate.str.endswith("_ensemble")]
    if len(ens):
        lines += ["", f"Seed ensembles at N = {PAPER_N:,}, K = {PAPER_K}: " + "; ".join(
            f"{r.surrogate} ({r.backend}) {ratio(r.speedup)}x, MAE {sci(r.mae)}" for r in ens.itertuples()) + "."]
    lines += ["", f"`*`: the point stayed noisy after the adaptive repeats (IQR/median > 10%): {int(s.noisy.sum())} "
              f"of {len(s)} points. skipped: K - 1 does not divide the ITNN's rollout steps."]
    return "\n".join(lines) + "\n"


def solver(ref: Path) -> str:
    """Solver throughput: G cell-steps/s per backend and dtype over N."""
    t = _read(ref, "solver_throughput.csv")
    ns = sorted(t.n_cells.dropna().unique())
    lines = ["| backend | dtype | " + " | ".join(f"N = {n:.0e}".replace("e+0", "e") for n in ns) + " |",
             "|---|---|" + "---:|" * len(ns)]
    for (backend, dtype), g in t[t.dtype.notna()].groupby(["backend", "dtype"], sort=False):
        cells = []
        for n in ns:
            r = g[g.n_cells == n]
            if r.empty or pd.notna(r.iloc[0].skipped):
                cells.append("skipped")
            else:
                cells.append(f"{r.iloc[0].cell_steps_per_s / 1e9:.2f}" + (" *" if r.iloc[0].seconds_noisy else ""))
        lines.append(f"| {backend} | {dtype} | " + " | ".join(cells) + " |")
    for r in t[t.dtype.isna() & t.skipped.notna()].itertuples():
        lines += ["", f"`{r.backend}`: not measured there ({r.skipped})."]
    lines += ["", "G cell-steps/s (FHN, 5000 Euler steps, 26 kept states); `*`: noisy (IQR/median > 10%); "
              "skipped: one run would exceed the benchmark's time limit."]
    return "\n".join(lines) + "\n"


def run(ref: Path) -> str:
    """The reference run: what, where, how long."""
    r = run_facts(ref)
    return (f"- run: {r['day']}, {r['jobs']} jobs in **{r['wall']}** (wall time, Snakemake's log); training grid: "
            f"{r['grid']}; {r['train_jobs']} trainings, {r['train_seconds']:,.0f} s of training in all\n"
            f"- machine: {r['machine']}; {r['software']}\n"
            f"- code: {r['version']}; details, seconds per rule and per part: [`reference/run.md`](reference/run.md)\n")


def training(ref: Path) -> str:
    """The training-speed table as `python -m benchmarks.training_speed --reference` wrote it."""
    path = ref / "training_speed.md"
    if not path.exists():
        raise InvalidInputError(f"{path}: missing; write it with `python -m benchmarks.training_speed --reference`")
    return path.read_text().rstrip("\n") + "\n"


def lr1991(ref: Path) -> str:
    """The published-model study (config/lr1991.yaml): each output's error in its own unit, and the speedup over
    the kept states K, from ``benchmarks/reference/lr1991/``."""
    sub = ref / "lr1991"
    acc, by, sp = _read(sub, "accuracy.csv"), _read(sub, "accuracy_by_output.csv"), _read(sub, "speedup.csv")
    lines = ["| surrogate | n | membrane.V MAE (mV) | ica.Ca_i MAE (mM) | max abs err (all outputs) | train s |",
             "|---|---:|---:|---:|---:|---:|"]
    floor = acc.surrogate == "euler_floor"  # a step problem's floor is its test_from's: shown once
    acc = acc[~floor | ~acc.duplicated(["surrogate", "mae_mean", "max_abs_err_mean"])]
    for _, r in acc.iterrows():
        same_n = by.n_train.isna() if pd.isna(r.n_train) else by.n_train == r.n_train
        mae = by[(by.problem == r.problem) & (by.surrogate == r.surrogate) & same_n].set_index("output").mae_mean
        name = {"euler_floor": "*Euler floor*", "itnn": "itnn (rolled out)"}.get(r.surrogate, r.surrogate)
        n = "" if r.surrogate == "euler_floor" else f"{int(r.n_train)}"
        secs = "" if r.surrogate == "euler_floor" else f"{r.train_seconds_mean:.0f}"
        lines.append(f"| {name} | {n} | {sci(mae['membrane.V'])} | {sci(mae['ica.Ca_i'])} | {sci(r.max_abs_err_mean)} "
                     f"| {secs} |")
    ks = sorted(sp.n_outputs.unique())
    lines += ["", f"Speedup (the compiled Euler solver's time over the surrogate's, N = "
              f"{', '.join(str(n) for n in sorted(sp.n_cells.unique()))} cells, one beat) over K kept states per cell"
              + (" (every point flagged noisy by the harness)" if sp.noisy.all() else "") + ":", "",
              "| surrogate | backend | " + " | ".join(f"K = {k}" for k in ks) + " |",
              "|---|---|" + "---:|" * len(ks)]
    for (kind, backend), g in sp.groupby(["surrogate", "backend"]):
        v = g.set_index("n_outputs").speedup
        lines.append(f"| {kind} | {backend} | " + " | ".join(ratio(v[k]) if k in v else "-" for k in ks) + " |")
    return "\n".join(lines) + "\n"


BLOCKS = {"glance": glance, "accuracy": accuracy, "speed": speed, "solver": solver, "run": run,
          "training": training, "lr1991": lr1991}


# ---------------------------------------------------------------- documents
def render(text: str, ref: Path = REFERENCE, where: str = "document") -> str:
    """``text`` with every generated block rewritten from ``ref``."""
    if text.count("<!-- BEGIN generated:") != len(BLOCK.findall(text)):
        raise InvalidInputError(f"{where}: a `<!-- BEGIN generated: NAME -->` has no `<!-- END generated -->`")
    cache = {}

    def fill(m):
        name = m.group(2)
        if name not in BLOCKS:
            raise InvalidInputError(f"{where}: unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
        if name not in cache:
            cache[name] = BLOCKS[name](ref)
        return m.group(1) + cache[name] + m.group(4)

    return BLOCK.sub(fill, text)


def stale(paths=DOCS, ref: Path = REFERENCE) -> list[str]:
    """'FILE: block NAME' for every block that differs from what the tables give."""
    out = []
    for path in paths:
        text = Path(path).read_text()
        new = render(text, ref, str(path))
        old_blocks, new_blocks = BLOCK.findall(text), BLOCK.findall(new)
        out += [f"{path}: block {o[1]}" for o, n in zip(old_blocks, new_blocks) if o[2] != n[2]]
    return out


def main(check: bool = False, paths=DOCS, ref: Path = REFERENCE) -> int:
    try:
        if check:
            bad = stale(paths, ref)
            for b in bad:
                print(f"stale: {b} (run `python -m benchmarks.reference --docs`)", file=sys.stderr)
            return 1 if bad else 0
        for path in paths:
            text = Path(path).read_text()
            new = render(text, ref, str(path))
            if new != text:
                write_text(Path(path), new)
                print(f"updated {path}")
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
