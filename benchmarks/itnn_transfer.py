"""An ITNN (the one-step map of a step problem) rolled out over other trajectory problems' held-out test sets.

The accuracy table scores an ITNN over the test trajectories of its problem's ``test_from`` (D: C's). The
same one-step map answers every trajectory problem of the same model whose initial states and parameters lie
in the step problem's input box: B (I fixed at 0.08, u0 and w0 inside D's ranges) as well as C. This program
scores trained ITNN checkpoints, each and as their mean (the ensemble), on such problems' test sets. Nothing
of those test sets is seen before scoring: the networks were trained and selected on the step problem's own
training and validation rows.

    python -m benchmarks.itnn_transfer --problem D --n 100000 --arch silu4x128 \\
        --model results/models/D/itnn/n100000/silu4x128/seed0/best_model.pth ...seed1/... ...seed2/... --on C B

Prints a Markdown table (mean and std over the checkpoints, the ensemble, each test set's Euler floor) and
writes it to ``<results_dir>/benchmarks/itnn_transfer_<problem>_<arch>_n<n>.md``. Test sets are read from
``<results_dir>/datasets/<problem>/test.npz`` (``--data`` changes the folder) and checked to be the configured
problem's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import cli
from core.errors import InvalidInputError
from core.io import write_text
from core.layout import Layout
from core.machine import describe_machine, machine_info
from surrogates.config import load_config
from surrogates.transfer import score_transfer
from surrogates.study import Study


def transfer(study: Study, problem: str, n: int, arch: str, checkpoints, on, data_dir=None) -> list[dict]:
    """Rows ``{test, network, mae, max_abs_err, rel_l2, floor_mae, floor_max}``: each checkpoint, their mean (with
    the std over them) and, with two or more, the ensemble, on each trajectory problem of ``on``
    (:func:`surrogates.transfer.score_transfer`)."""
    data_dir = Path(data_dir) if data_dir else Layout(study.results_dir).root / "datasets"
    rows = []
    for name in on:
        r = score_transfer(study, problem, n, arch, checkpoints, name, data_dir / name / "test.npz")
        floor = r["euler_floor"] or {}
        base = {"test": name, "floor_mae": floor.get("mae"), "floor_max": floor.get("max_abs_err")}
        for run in r["runs"]:
            if not run["rollout_bounded"]:
                print(f"warning: seed {run['seed']} on {name}: the rollout left the bounds (non-finite or > 10x the "
                      "data)", file=sys.stderr)
            rows.append({**base, "network": f"seed {run['seed']}", **{k: run[k] for k in ("mae", "max_abs_err", "rel_l2")}})
        rows.append({**base, "network": f"mean of {len(r['runs'])} (std)", **r["mean"], "mae_std": r["std"]["mae"],
                     "max_std": r["std"]["max_abs_err"]})
        if r["ensemble"] is not None:
            rows.append({**base, "network": "ensemble (mean of the networks)",
                         **{k: r["ensemble"][k] for k in ("mae", "max_abs_err", "rel_l2")}})
    return rows


def table(rows: list[dict], problem: str, n: int, arch: str, info: dict) -> str:
    lines = [f"ITNN of problem {problem} (n = {n}, {arch}) rolled out over held-out test trajectories; "
             f"{describe_machine(info)}.", "",
             "| test set | network | MAE | max abs err | rel L2 | Euler floor MAE / max |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        mae = f"{r['mae']:.3g}" + (f" ({r['mae_std']:.1g})" if "mae_std" in r else "")
        mx = f"{r['max_abs_err']:.3g}" + (f" ({r['max_std']:.1g})" if "max_std" in r else "")
        floor = f"{r['floor_mae']:.3g} / {r['floor_max']:.3g}" if r["floor_mae"] is not None else ""
        lines.append(f"| {r['test']} | {r['network']} | {mae} | {mx} | {r['rel_l2']:.3g} | {floor} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--problem", default="D", help="the step problem the ITNN learnt")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--model", action="append", required=True, help="a checkpoint (best_model.pth); repeat per seed")
    ap.add_argument("--on", nargs="+", required=True, help="trajectory problems whose test sets to roll out over")
    ap.add_argument("--data", type=Path, default=None, help="folder of the problems' datasets (default: results_dir/datasets)")
    a = ap.parse_args(argv)
    study = load_config(*a.config)
    try:
        rows = transfer(study, a.problem, a.n, a.arch, a.model, a.on, a.data)
    except (InvalidInputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table(rows, a.problem, a.n, a.arch, machine_info())
    print(text)
    out = Layout(study.results_dir).benchmark(f"itnn_transfer_{a.problem}_{a.arch}_n{a.n}.md")
    write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
