"""benchmarks.reference: a run's tables copied to a tracked folder, marked partial when the grid is not done."""
import json

import pytest

from benchmarks.reference import copy_reference, main
from core.errors import InvalidInputError
from core.io import write_record
from core.layout import Layout
from surrogates.config import load_config

INFO = {"cpu": "Test CPU", "cores": 2, "torch": "2.13.0+cpu", "numba": "0.68.1", "onnxruntime": "1.32.0"}


def _config(tiny_config):
    return load_config(tiny_config())


def test_a_partial_run_is_copied_and_marked_partial_with_what_is_missing(tiny_config, tmp_path):
    cfg = _config(tiny_config)
    layout = Layout(cfg.results_dir)
    jobs = cfg.training_grid()
    assert len(jobs) > 1
    first = jobs[0]
    metrics = layout.run_file("metrics", *first)
    write_record(metrics, {"version": "abc1234", "train_seconds": 12.5})
    table = layout.table("accuracy", "csv")
    table.parent.mkdir(parents=True)
    table.write_bytes(b"problem,mae\nA,0.1\n")

    out = tmp_path / "ref"
    state = copy_reference(cfg, out, note="took 3 h", info=INFO)

    assert state["done"] == [first] and len(state["missing"]) == len(jobs) - 1
    assert (out / "accuracy.csv").read_bytes() == b"problem,mae\nA,0.1\n"
    assert not (out / "speedup.csv").exists()
    run = (out / "run.md").read_text()
    assert "(**partial**)" in run
    assert f"1 of {len(jobs)} configured jobs" in run
    assert "/".join(map(str, jobs[1])) in run  # a missing job is named
    assert "**not made by the run**: accuracy.md, speedup.csv" in run
    assert "abc1234" in run and "took 3 h" in run and "Test CPU (2 cores)" in run
    assert f"| {first[0]} | {first[1]} | 1 | 12 |" in run  # 12.5 s rounds to 12
    assert "kept from an earlier copy" not in run
    # a later partial copy over it: the earlier table the run did not remake stays, and run.md says so
    table.unlink()
    copy_reference(cfg, out, info=INFO)
    run = (out / "run.md").read_text()
    assert (out / "accuracy.csv").exists() and "**kept from an earlier copy** (not made by this run" in run
    assert "git history): accuracy.csv" in run


def test_a_complete_run_is_not_marked_partial(tiny_config, tmp_path):
    cfg = _config(tiny_config)
    layout = Layout(cfg.results_dir)
    for job in cfg.training_grid():
        f = layout.run_file("metrics", *job)
        write_record(f, {"version": "v1", "train_seconds": 1.0})
    for name, ext in [("accuracy", "csv"), ("accuracy", "md"), ("speedup", "csv"), ("speedup", "md")]:
        p = layout.table(name, ext)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(name)
    b = layout.benchmark("solver_throughput.csv")
    b.parent.mkdir(parents=True, exist_ok=True)
    b.write_text("backend\ncpu\n")
    copy_reference(cfg, tmp_path / "ref", info=INFO)
    run = (tmp_path / "ref" / "run.md").read_text()
    assert "partial" not in run and "(complete)" in run
    assert (tmp_path / "ref" / "solver_throughput.csv").read_text() == "backend\ncpu\n"


def test_an_empty_results_folder_is_refused_naming_it(tiny_config, tmp_path, capsys):
    cfg = _config(tiny_config)
    with pytest.raises(InvalidInputError, match="has no tables and no trained models"):
        copy_reference(cfg, tmp_path / "ref", info=INFO)
    assert not (tmp_path / "ref").exists()
    assert main(["--config", str(tiny_config()), "--out", str(tmp_path / "ref")]) == 2
    assert "nothing to copy" in capsys.readouterr().err


def test_the_shipped_checkpoint_of_problem_c_scores_what_its_metrics_say():
    """benchmarks/reference/model_C: loads with surrogates.load_checkpoint, was made for the configured
    problem C (fingerprint), and reproduces its recorded held-out errors."""
    import surrogates
    from benchmarks.reference import evaluate_checkpoint
    from conftest import ROOT

    folder = ROOT / "benchmarks/reference/model_C"
    model, meta = surrogates.load_checkpoint(folder / "best_model.pth")
    assert meta["provenance"]["problem"] == "C" and meta["provenance"]["n"] == 100000
    recorded = json.loads((folder / "metrics.json").read_text())
    got = evaluate_checkpoint(folder / "best_model.pth", load_config())
    for k in ("mae", "max_abs_err", "rel_l2"):
        assert got[k] == pytest.approx(recorded["test"][k], rel=1e-5)
    assert got["mae"] < 1e-3


def test_the_run_s_job_times_go_into_run_md_from_its_benchmark_records(tiny_config, tmp_path):
    from test_runlog import T0, record

    cfg = _config(tiny_config)
    layout = Layout(cfg.results_dir)
    table = layout.table("accuracy", "csv")
    table.parent.mkdir(parents=True)
    table.write_text("problem,mae\n")
    copy_reference(cfg, tmp_path / "ref0", info=INFO)  # no records: no job table
    assert "Jobs of the run" not in (tmp_path / "ref0" / "run.md").read_text()
    record(layout.job_records, "train", "C_ddnn_n300_mlp3x64_seed0", 120.0, T0 + 120)
    copy_reference(cfg, tmp_path / "ref", info=INFO)
    run = (tmp_path / "ref" / "run.md").read_text()
    assert "Jobs of the run (Snakemake's `benchmark:` records): 1 jobs" in run
    assert "| train | 1 | 120 | 120 | C_ddnn_n300_mlp3x64_seed0 |" in run
    # a record that is not one is refused before anything is written
    (layout.job_records / "train" / "bad.tsv").write_text("hello\n")
    with pytest.raises(InvalidInputError, match="bad.tsv: not a Snakemake benchmark record"):
        copy_reference(cfg, tmp_path / "ref2", info=INFO)
    assert not (tmp_path / "ref2").exists()


def test_evaluate_scores_a_shipped_network_on_fresh_trajectories_too(capsys):
    """--evaluate --fresh-seeds: one more line per seed, on trajectories the datasets never drew (labelled by
    the same Euler solver), and the range of the fresh sets' maxima."""
    import numpy as np

    from benchmarks.reference import evaluate_checkpoint
    from conftest import ROOT
    from surrogates.datasets import make_test

    ckpt = ROOT / "benchmarks/reference/model_C/best_model.pth"
    cfg = load_config()
    fresh = evaluate_checkpoint(ckpt, cfg, fresh_seed=7)
    assert fresh["set"] == "fresh seed 7" and fresh["rows"] == 1000 * 201
    recorded = json.loads((ckpt.parent / "metrics.json").read_text())["test"]
    assert fresh["mae"] != pytest.approx(recorded["mae"], rel=1e-3)  # other trajectories, other errors
    p = cfg.problem("C")
    test, _ = make_test(p, cfg.datasets.test_seed, cfg.datasets.seed)
    other, _ = make_test(p, 7, cfg.datasets.seed)
    assert not np.isin(other["X"][:, 1], test["X"][:, 1]).any()  # no initial state of the test set again
    assert main(["--evaluate", str(ckpt), "--fresh-seeds", "7", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and "held-out test set (201000 rows" in out[0]
    assert f"fresh seed 7 (201000 rows, t = 0 not scored): MAE {fresh['mae']:.3g}, max abs err " \
           f"{fresh['max_abs_err']:.3g}" in out[1]
    assert "max abs err over the 2 fresh sets: " in out[3]


def test_evaluate_refuses_a_seed_the_datasets_use_and_a_single_trace(tmp_path, capsys):
    import torch

    import surrogates
    from benchmarks.reference import evaluate_checkpoint
    from conftest import ROOT

    cfg = load_config()
    for seed in (cfg.datasets.seed, cfg.datasets.seed + 1, cfg.datasets.test_seed):
        assert main(["--evaluate", str(ROOT / "benchmarks/reference/model_C/best_model.pth"),
                     "--fresh-seeds", "5", str(seed)]) == 2
        assert f"error: fresh seed {seed} is one the datasets use" in capsys.readouterr().err
    p = cfg.problem("A")  # one trajectory: every point is in its datasets
    torch.manual_seed(0)
    model = surrogates.MLP(1, 2, [("Tanh", 4)])
    surrogates.save_checkpoint(model, tmp_path / "a.pth", meta={"provenance": {"problem": "A",
                                                                               "problem_fingerprint": p.fingerprint}})
    with pytest.raises(InvalidInputError, match="problem 'A' has one trace.*no fresh trajectories"):
        evaluate_checkpoint(tmp_path / "a.pth", cfg, fresh_seed=5)


def test_the_accuracy_per_output_and_named_figures_are_copied_where_the_run_made_them(tiny_config, tmp_path):
    cfg = _config(tiny_config)
    layout = Layout(cfg.results_dir)
    for name in ("accuracy", "accuracy_by_output"):
        p = layout.table(name, "csv")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{name}\n")
    fig = layout.figure("trajectories_C", "png")
    fig.parent.mkdir(parents=True)
    fig.write_bytes(b"\x89PNG")
    with pytest.raises(InvalidInputError, match="--figure nope.png: the run made no such figure"):
        copy_reference(cfg, tmp_path / "ref", info=INFO, figures=["nope.png"])
    assert not (tmp_path / "ref").exists()
    copy_reference(cfg, tmp_path / "ref", info=INFO, figures=["trajectories_C.png"])
    ref = tmp_path / "ref"
    assert (ref / "accuracy_by_output.csv").read_text() == "accuracy_by_output\n"
    assert (ref / "trajectories_C.png").read_bytes() == b"\x89PNG"
    run = (ref / "run.md").read_text()
    assert "accuracy_by_output.csv" in run.split("- files: ")[1].split(";")[0]
    assert "accuracy_by_output.md" not in run  # optional: not made, not counted missing


def test_the_tracked_lr1991_tables_are_well_formed_and_finite():
    """benchmarks/reference/lr1991/ (config/lr1991.yaml's run): the table contracts' columns, finite errors and
    timings, the V and Ca_i errors of every surrogate and of the Euler floor, a complete run."""
    import numpy as np
    import pandas as pd

    from benchmarks.tables import ACCURACY_COLUMNS, BY_OUTPUT_COLUMNS, SPEEDUP_COLUMNS
    from conftest import ROOT

    folder = ROOT / "benchmarks/reference/lr1991"
    acc = pd.read_csv(folder / "accuracy.csv")
    assert list(acc.columns) == ACCURACY_COLUMNS and set(acc["problem"]) == {"LR1991"}
    assert set(acc["surrogate"]) >= {"euler_floor", "ddnn", "pinn"}
    for col in ("mae_mean", "max_abs_err_mean", "rel_l2_mean"):
        assert np.isfinite(acc[col]).all() and (acc[col] > 0).all(), col
    trained = acc[acc["surrogate"] != "euler_floor"]
    assert np.isfinite(trained["train_seconds_mean"]).all() and (trained["train_seconds_mean"] > 0).all()

    by = pd.read_csv(folder / "accuracy_by_output.csv")
    assert list(by.columns) == BY_OUTPUT_COLUMNS and np.isfinite(by["mae_mean"]).all()
    for kind, rows in by.groupby("surrogate"):
        assert {"membrane.V", "ica.Ca_i"} <= set(rows["output"]), kind
        assert rows["mae_mean"].mean() == pytest.approx(acc.set_index("surrogate").loc[kind, "mae_mean"], rel=1e-6)

    sp = pd.read_csv(folder / "speedup.csv")
    assert list(sp.columns) == SPEEDUP_COLUMNS and len(sp) > 0
    assert set(sp["surrogate"]) >= {"ddnn", "pinn"} and (sp["sweep"] == "K").any()
    for col in ("solver_seconds", "surrogate_seconds", "speedup"):
        assert np.isfinite(sp[col]).all() and (sp[col] > 0).all(), col
    np.testing.assert_allclose(sp["speedup"], sp["solver_seconds"] / sp["surrogate_seconds"], rtol=1e-6)

    run = (folder / "run.md").read_text()
    assert "(complete)" in run and "partial" not in run and "Wall time of the run" in run
