"""benchmarks.data_size: the step and pass arithmetic, the plan, the table and its writer, argument errors."""
import pandas as pd
import pytest
import torch

from benchmarks import data_size as ds
from conftest import ROOT, tiny
from core.errors import InvalidInputError

QUICK, TINY_FILE = ROOT / "config/quick.yaml", ROOT / "config/tiny.yaml"


@pytest.mark.parametrize("n, batch, per_pass", [(1000, 1024, 1), (1024, 1024, 1), (10000, 1024, 9),
                                                (100000, 1024, 97), (500, None, 1), (2049, 1024, 2)])
def test_steps_per_pass_is_what_the_data_loss_draws(n, batch, per_pass):
    """A pass is floor(n / batch) minibatches (the loss starts a new shuffled pass when the rest is shorter
    than a batch), or one full-batch step: counted on the data loss itself."""
    from surrogates.losses import DataLoss

    assert ds.steps_per_pass(n, batch) == per_pass
    loss = DataLoss(torch.zeros(n, 1), torch.zeros(n, 1), batch_size=batch)
    if loss.batch_size == n:  # the full set every step: one step is one pass
        return
    passes = 0
    real = loss._new_pass

    def counted():
        nonlocal passes
        passes += 1
        real()

    loss._new_pass = counted
    for _ in range(3 * per_pass):
        loss._next_rows()
    assert passes == 3
    loss._next_rows()
    assert passes == 4


def test_budget_steps_and_passes():
    assert ds.budget_steps("steps", 100000, 1024, 20000, 2048) == 20000
    assert ds.budget_steps("passes", 100000, 1024, 20000, 2048) == 2048 * 97 == 198656
    assert ds.budget_steps("passes", 10000, 1024, 20000, 2048) == 18432
    assert ds.budget_steps("passes", 1000, 1024, 20000, 2048) == 2048
    assert ds.passes_of(20000, 10000, 1024) == pytest.approx(2222.2, abs=0.1)
    assert ds.passes_of(20000, 100000, 1024) == pytest.approx(206.2, abs=0.1)
    # long: the largest size's equal-passes steps for every n
    assert ds.budget_steps("long", 10000, 1024, 20000, 2048, n_max=100000) == 198656
    assert ds.budget_steps("long", 1000, 1024, 20000, 2048, n_max=100000) == 198656
    with pytest.raises(InvalidInputError, match="n_max"):
        ds.budget_steps("long", 1000, 1024, 20000, 2048)
    with pytest.raises(InvalidInputError, match="unknown budget 'epochs'"):
        ds.budget_steps("epochs", 1000, 1024, 1, 1)
    with pytest.raises(InvalidInputError, match="at least 1"):
        ds.steps_per_pass(0, 1024)


def test_the_plan_names_what_it_cannot_run(tmp_path):
    cfg = tiny(tmp_path, training={"seeds": [0, 1]})
    entries = ds.plan(cfg, ["B", "C"], [300], ds.DEFAULT_BUDGETS, steps=50, passes=4)
    assert len(entries) == 2 * 2 * 2  # problems x budgets x seeds
    assert {(e["budget"], e["steps"], e["passes"]) for e in entries} == {("steps", 50, 50.0), ("passes", 4, 4.0)}
    # the long budget takes the problem's largest configured size, whatever sizes are asked for
    big = tiny(tmp_path, datasets={"sizes": [300, 3000]}, training={"batch_size": 100})
    long = ds.plan(big, ["C"], [300], ["long", "passes"], steps=50, passes=4)
    assert {(e["budget"], e["steps"], e["passes"]) for e in long} == {("long", 120, 40.0), ("passes", 12, 4.0)}
    assert {e["run"] for e in entries} == {(p, "ddnn", 300, "mlp3x64", s) for p in "BC" for s in (0, 1)}
    with pytest.raises(InvalidInputError, match="'D' has no ddnn"):
        ds.plan(cfg, ["D"], [300], ds.BUDGETS, 50, 4)
    with pytest.raises(InvalidInputError, match="C:ddnn:5000"):
        ds.plan(cfg, ["C"], [5000], ds.BUDGETS, 50, 4)
    with pytest.raises(InvalidInputError, match="patience must be null"):
        ds.plan(tiny(tmp_path, training={"patience": 3}), ["C"], [300], ds.BUDGETS, 50, 4)


def _table(mae):
    """A summary table of problem X at n = 10, 100 under both budgets with the given (mean, std) per row."""
    rows = []
    for (budget, n), (m, s) in mae.items():
        rows.append({"problem": "X", "n_train": n, "budget": budget, "steps": 1, "passes": 1.0, "seeds": 2,
                     "mae_mean": m, "mae_std": s, "max_abs_err_mean": 1.0, "max_abs_err_min": 0.9,
                     "max_abs_err_max": 1.1, "train_seconds_mean": 1.0})
    return pd.DataFrame(rows)


def test_the_verdict_weighs_the_drop_against_the_seeds_spread():
    budget_bound = _table({("steps", 10): (1.0e-2, 1e-4), ("steps", 100): (0.99e-2, 1e-4),
                           ("passes", 10): (1.0e-2, 1e-4), ("passes", 100): (0.5e-2, 1e-4)})
    lines = ds.verdict(budget_bound)
    assert any("steps budget" in x and "falls by 1%, within" in x for x in lines)
    assert any("passes budget" in x and "falls by 50%, beyond" in x for x in lines)
    assert "the budget's, not the data's" in lines[-1]
    data_bound = _table({("passes", 10): (1.0e-2, 1e-3), ("passes", 100): (0.9e-2, 1e-3)})
    assert "the data's (or the network's)" in ds.verdict(data_bound)[-1]
    steps_only = _table({("passes", 10): (1.0e-2, 1e-4), ("passes", 100): (0.5e-2, 1e-4),
                         ("long", 10): (0.5e-2, 1e-4), ("long", 100): (0.5e-2, 1e-4)})
    assert "the extra steps, not the extra data" in ds.verdict(steps_only)[-1]
    data_too = _table({("long", 10): (0.8e-2, 1e-4), ("long", 100): (0.5e-2, 1e-4)})
    assert "the data, not only the extra steps" in ds.verdict(data_too)[-1]


def test_the_program_trains_both_budgets_and_writes_the_tables(tmp_path, capsys):
    out = tmp_path / "t" / "data_size.csv"
    common = ["--config", str(QUICK), str(TINY_FILE), "--problems", "C", "--sizes", "300", "--seeds", "0", "1",
              "--steps", "6", "--workers", "1", "--out", str(out), "--set", f"results_dir={tmp_path / 'r'}"]
    args = common + ["--passes", "3"]
    assert ds.main(args) == 0, capsys.readouterr().err
    csv = pd.read_csv(out)
    assert csv[["budget", "steps", "passes", "seeds"]].values.tolist() == [["steps", 6, 6.0, 2], ["passes", 3, 3.0, 2]]
    assert (csv["mae_mean"] > 0).all() and csv["mae_std"].notna().all() and "torch" in csv.columns
    assert (csv["max_abs_err_min"] <= csv["max_abs_err_mean"]).all()
    assert (csv["max_abs_err_mean"] <= csv["max_abs_err_max"]).all()
    md = out.with_suffix(".md").read_text()
    assert "Machine:" in md and "torch" in md and "## What it says" in md and "## The configuration's default" in md
    assert "Missing" not in md
    runs = pd.read_csv(tmp_path / "r" / "benchmarks" / "data_size_runs.csv")
    assert sorted(runs["iterations"].tolist()) == [3, 3, 6, 6]
    # runs of one step count live in one folder, datasets shared
    base = tmp_path / "r" / "data_size"
    assert sorted(p.name for p in base.glob("steps*")) == ["steps3", "steps6"]
    assert (base / "steps3" / "datasets").resolve() == (base / "datasets").resolve()
    # a second call reads the finished runs (same numbers), and --collect trains nothing
    mtime = (base / "steps6/models/C/ddnn/n300/mlp3x64/seed0/metrics.json").stat().st_mtime
    assert ds.main(args + ["--collect"]) == 0
    assert pd.read_csv(out)["mae_mean"].tolist() == csv["mae_mean"].tolist()
    assert (base / "steps6/models/C/ddnn/n300/mlp3x64/seed0/metrics.json").stat().st_mtime == mtime
    # a budget not trained yet is listed as missing, not invented
    assert ds.main(common + ["--passes", "5", "--collect"]) == 0
    md = out.with_suffix(".md").read_text()
    assert "Missing (not run or not finished): C n=300 passes (seeds 0, 1)." in md
    assert pd.read_csv(out)["budget"].tolist() == ["steps"]


def _exit_code(args) -> int:
    try:
        return ds.main(args)
    except SystemExit as exc:  # argparse's own checks
        return exc.code


@pytest.mark.parametrize("extra, message", [
    (["--passes", "0"], "--passes"),
    (["--out", "x.txt"], "--out: give a .csv path"),
    (["--problems", "Z"], "unknown problem 'Z'"),
    (["--problems", "D"], "'D' has no ddnn"),
    (["--budgets", "epochs"], "--budgets"),
    (["--seeds", "-1"], "--seeds"),
])
def test_argument_errors_are_one_line(tmp_path, capsys, extra, message):
    args = ["--config", str(QUICK), str(TINY_FILE), "--collect", "--set", f"results_dir={tmp_path}"]
    assert _exit_code(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("data_size/steps*/models"))
