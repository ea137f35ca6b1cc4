"""benchmarks.reference: a run's tables copied to a tracked folder, marked partial when the grid is not done."""
import json

import pytest

from benchmarks.reference import copy_reference, main
from core.errors import InvalidInputError
from core.io import write_record
from core.layout import Layout
from surrogates.config import load_config, validate_config

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


def _card_figure(x: float) -> str:
    """A figure as the model cards write it: 8.5e-4 (two significant digits)."""
    return f"{x:.1e}".replace("e-0", "e-")


@pytest.mark.parametrize("name, problem, sets", [("model_C", "C", ["C"]), ("model_D_itnn", "D", ["C", "B"])])
def test_the_shipped_checkpoints_score_what_their_metrics_and_cards_say(name, problem, sets):
    """benchmarks/reference/model_C and model_D_itnn: load with surrogates.load_checkpoint, were made for the
    configured problem (fingerprint), and reproduce their recorded held-out errors; the ITNN of D rolled out over
    C's test trajectories (its metrics.json) and over B's (the figures of its card)."""
    import surrogates
    from benchmarks.reference import evaluate_checkpoint, rollout_problems
    from conftest import ROOT

    folder = ROOT / "benchmarks/reference" / name
    model, meta = surrogates.load_checkpoint(folder / "best_model.pth")
    assert meta["provenance"]["problem"] == problem and meta["provenance"]["n"] == 100000
    cfg = load_config()
    assert rollout_problems(folder / "best_model.pth", cfg) == sets
    recorded = json.loads((folder / "metrics.json").read_text())
    got = evaluate_checkpoint(folder / "best_model.pth", cfg)
    for k in ("mae", "max_abs_err", "rel_l2"):
        assert got[k] == pytest.approx(recorded["test"][k], rel=1e-5)
    assert got["mae"] < 1e-3
    card = (folder / "README.md").read_text()
    for on in sets[1:]:
        got = evaluate_checkpoint(folder / "best_model.pth", cfg, on=on)
        row = f"| {on}'s held-out test set | {_card_figure(got['mae'])} | {got['max_abs_err']:.2g} | " \
              f"{_card_figure(got['rel_l2'])} |"
        assert row in card, row
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
    timings, the V and Ca_i errors of every surrogate and of the Euler floor (against Myokit's CVODES), a complete
    run."""
    import numpy as np
    import pandas as pd

    from benchmarks.tables import ACCURACY_COLUMNS, BY_OUTPUT_COLUMNS, SPEEDUP_COLUMNS
    from conftest import ROOT

    folder = ROOT / "benchmarks/reference/lr1991"
    acc = pd.read_csv(folder / "accuracy.csv")
    assert list(acc.columns) == ACCURACY_COLUMNS and set(acc["problem"]) == {"LR1991", "lr_step"}
    assert set(acc["surrogate"]) >= {"euler_floor", "ddnn", "pinn", "itnn"}
    for col in ("mae_mean", "max_abs_err_mean", "rel_l2_mean"):
        assert np.isfinite(acc[col]).all() and (acc[col] > 0).all(), col
    trained = acc[acc["surrogate"] != "euler_floor"]
    assert np.isfinite(trained["train_seconds_mean"]).all() and (trained["train_seconds_mean"] > 0).all()

    by = pd.read_csv(folder / "accuracy_by_output.csv")
    assert list(by.columns) == BY_OUTPUT_COLUMNS and np.isfinite(by["mae_mean"]).all()
    keys = ["problem", "surrogate", "n_train"]
    for key, rows in by.groupby(keys, dropna=False):
        assert {"membrane.V", "ica.Ca_i"} <= set(rows["output"]), key
        row = acc[(acc[keys[:2]] == key[:2]).all(axis=1) & ((acc.n_train == key[2]) | acc.n_train.isna() & pd.isna(key[2]))]
        assert len(row) == 1 and rows["mae_mean"].mean() == pytest.approx(row["mae_mean"].item(), rel=1e-6), key

    sp = pd.read_csv(folder / "speedup.csv")
    assert list(sp.columns) == SPEEDUP_COLUMNS and len(sp) > 0
    assert set(sp["surrogate"]) >= {"ddnn", "pinn", "itnn"} and (sp["sweep"] == "K").any()
    for col in ("solver_seconds", "surrogate_seconds", "speedup"):
        assert np.isfinite(sp[col]).all() and (sp[col] > 0).all(), col
    np.testing.assert_allclose(sp["speedup"], sp["solver_seconds"] / sp["surrogate_seconds"], rtol=1e-6)

    run = (folder / "run.md").read_text()
    assert "(complete)" in run and "partial" not in run and "Jobs of the run" in run
    assert "against Myokit's CVODES" in run and "CVODES" in (folder / "accuracy.md").read_text()


# ---------------------------------------------------------------- --evaluate on an ITNN (a step problem's network)
@pytest.fixture(scope="module")
def itnn(tmp_path_factory):
    """The tiny preset's test sets of B and C and an ITNN of D trained for a few steps (one module-wide run)."""
    from conftest import tiny
    from surrogates import datasets as ds
    from training.train import train_surrogate

    root = tmp_path_factory.mktemp("itnn") / "results"
    cfg = tiny(root)
    lay = Layout(root)
    for p in ("B", "C", "D"):
        ds.write_test(cfg, p, lay.test(p))
    ds.write_split(cfg, "D", 300, lay.split("D", 300, "train"), lay.split("D", 300, "val"))
    arch = cfg.training("D").architecture
    train_surrogate(cfg, "D", "itnn", 300, 0, lay.dataset_dir("D"), lay.model_dir("D", "itnn", 300, arch, 0),
                    iterations=5)
    return cfg, lay, arch


def test_evaluate_rolls_an_itnn_out_over_c_and_b_as_the_pipeline_scores_it(itnn, capsys):
    """--evaluate on D's ITNN: over C's test trajectories (its test_from) the errors its run recorded, and over
    B's (I fixed, inside D's box) those of the pipeline's transfer scoring, each with its own set's Euler floor."""
    from benchmarks.reference import _evaluate, evaluate_checkpoint, rollout_problems
    from core.io import load_dataset
    from surrogates.transfer import score_transfer

    cfg, lay, arch = itnn
    ckpt = lay.run_file("model", "D", "itnn", 300, arch, 0)
    assert rollout_problems(ckpt, cfg) == ["C", "B"]
    recorded = json.loads(lay.run_file("metrics", "D", "itnn", 300, arch, 0).read_text())
    on_c = evaluate_checkpoint(ckpt, cfg)
    assert on_c == evaluate_checkpoint(ckpt, cfg, on="C")
    assert (on_c["problem"], on_c["on"], on_c["rows"]) == ("D", "C", 20 * 201)
    for k in ("mae", "max_abs_err", "rel_l2"):
        assert on_c[k] == pytest.approx(recorded["test"][k], rel=1e-6)
    assert on_c["euler_floor_mae"] == pytest.approx(recorded["euler_floor"]["mae"], rel=1e-9)

    on_b = evaluate_checkpoint(ckpt, cfg, on="B")
    transfer = score_transfer(cfg, "D", 300, arch, [ckpt], "B", lay.test("B"))
    assert (on_b["problem"], on_b["on"]) == ("D", "B")
    for k in ("mae", "max_abs_err", "rel_l2"):
        assert on_b[k] == pytest.approx(transfer["runs"][0][k], rel=1e-6)
    _, meta = load_dataset(lay.test("B"))
    assert on_b["euler_floor_mae"] == pytest.approx(meta["euler_floor"]["mae"], rel=1e-9)
    assert on_b["euler_floor_max_abs_err"] == pytest.approx(meta["euler_floor"]["max_abs_err"], rel=1e-9)
    assert on_b["mae"] != pytest.approx(on_c["mae"], rel=1e-3)  # another set, other errors

    fresh_b = evaluate_checkpoint(ckpt, cfg, fresh_seed=7, on="B")
    assert fresh_b["set"] == "fresh seed 7" and fresh_b["rows"] == on_b["rows"]
    assert fresh_b["mae"] != pytest.approx(on_b["mae"], rel=1e-3)

    assert _evaluate([ckpt], cfg, [7, 8]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8  # per problem: the test set, two fresh sets, the range of their maxima
    assert f"problem D rolled out over C, held-out test set ({20 * 201} rows, t = 0 not scored): MAE " \
           f"{on_c['mae']:.3g}, max abs err {on_c['max_abs_err']:.3g}, rel L2 {on_c['rel_l2']:.3g} (Euler floor: " \
           f"MAE {on_c['euler_floor_mae']:.3g}" in out[0]
    assert f"problem D rolled out over B, held-out test set ({20 * 201} rows" in out[4]
    assert f"MAE {on_b['mae']:.3g}, max abs err {on_b['max_abs_err']:.3g}" in out[4]
    assert f"problem D rolled out over B, fresh seed 7 ({20 * 201} rows, t = 0 not scored): MAE " \
           f"{fresh_b['mae']:.3g}" in out[5]
    assert "problem D rolled out over B: max abs err over the 2 fresh sets: " in out[7]


def test_evaluate_refuses_a_missing_checkpoint_and_problems_it_cannot_score(itnn, tmp_path, capsys):
    from benchmarks.reference import _evaluate, evaluate_checkpoint
    from conftest import ROOT
    from core.errors import ProvenanceError

    cfg, lay, arch = itnn
    ckpt = lay.run_file("model", "D", "itnn", 300, arch, 0)
    missing = tmp_path / "none.pth"
    assert _evaluate([missing], cfg, []) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint {missing} does not exist"
    with pytest.raises(InvalidInputError, match=r"unknown problem 'Z'; valid: \["):
        evaluate_checkpoint(ckpt, cfg, on="Z")
    with pytest.raises(InvalidInputError, match=r"an ITNN rolls out over trajectory problems; 'hh_m' is 'trace'"):
        evaluate_checkpoint(ckpt, cfg, on="hh_m")
    raw = cfg.as_dict()
    raw["problems"].pop("D")  # a config without D (and so without the ITNN it trains)
    raw["training"]["surrogates"].pop("itnn")
    raw["speed"]["surrogates"] = [k for k in raw["speed"]["surrogates"] if k != "itnn"]
    raw["speed"]["ensembles"] = [k for k in raw["speed"].get("ensembles", []) if k != "itnn"]
    assert _evaluate([ckpt], validate_config(raw), []) == 2
    assert "error: unknown problem 'D'; valid: [" in capsys.readouterr().err
    changed = cfg.as_dict()
    changed["problems"]["D"]["ranges"]["I"] = [0.07, 0.12]
    changed = validate_config(changed)
    with pytest.raises(ProvenanceError, match="problem_fingerprint"):
        evaluate_checkpoint(ckpt, changed, on="B")
    # a trajectory problem's network is scored on its own problem's sets only
    with pytest.raises(InvalidInputError, match=r"a network of trajectory problem 'C' is scored on 'C''s sets only, "
                                                r"not on 'B'"):
        evaluate_checkpoint(ROOT / "benchmarks/reference/model_C/best_model.pth", load_config(), on="B")
