"""The mean of the seeds' networks as a surrogate of its own (surrogates.ensemble), its table row and its rule."""
import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY
from core.config import merge, read_config
from core.errors import InvalidInputError, ProvenanceError
from core.io import read_json
from core.layout import Layout
from surrogates import datasets as ds
from surrogates.config import validate_config
from surrogates.ensemble import Ensemble, main as ensemble_main, score_ensemble
from surrogates.itnn import rollout
from surrogates.network import MLP, load_checkpoint
from surrogates.scoring import evaluate
from training.train import train_surrogate

ARCH = "mlp3x64"


def tiny(results: Path, **extra) -> dict:
    cfg = merge(read_config(ROOT / "config/quick.yaml"), copy.deepcopy(TINY))
    cfg["results_dir"] = str(results)
    return validate_config(merge(cfg, {"training": {"seeds": [0, 1, 2]}, **extra}))


@pytest.fixture(scope="module")
def seeds_world(tmp_path_factory):
    """C (ddnn) and D (itnn) at n = 300, three seeds each, trained briefly."""
    root = tmp_path_factory.mktemp("ens") / "results"
    cfg = tiny(root)
    lay = Layout(root)
    for p, kind in (("C", "ddnn"), ("D", "itnn")):
        ds.write_test(cfg, p, lay.test(p))
        ds.write_split(cfg, p, 300, lay.split(p, 300, "train"), lay.split(p, 300, "val"))
        for seed in (0, 1, 2):
            train_surrogate(cfg, p, kind, 300, seed, lay.dataset_dir(p), lay.model_dir(p, kind, 300, ARCH, seed),
                            iterations=30)
    return cfg, lay


def models(lay, p, kind, seeds=(0, 1, 2)):
    return [lay.run_file("model", p, kind, 300, ARCH, s) for s in seeds]


def test_the_ensemble_answers_the_mean_of_its_members():
    torch.manual_seed(0)
    nets = [MLP(3, 2, [("Tanh", 8)]) for _ in range(3)]
    x = torch.randn(17, 3)
    with torch.no_grad():
        want = torch.stack([n(x) for n in nets]).mean(0)
        torch.testing.assert_close(Ensemble(nets)(x), want)
    assert Ensemble(nets).n_params == 3 * nets[0].n_params
    with pytest.raises(InvalidInputError, match="at least 2 networks, got 1"):
        Ensemble(nets[:1])
    with pytest.raises(InvalidInputError, match="differ in inputs/outputs"):
        Ensemble([nets[0], MLP(3, 1, [("Tanh", 8)])])


@pytest.mark.parametrize("problem,kind", [("C", "ddnn"), ("D", "itnn")])
def test_the_ensemble_is_scored_like_one_network_on_the_held_out_set(seeds_world, tmp_path, problem, kind):
    cfg, lay = seeds_world
    out = tmp_path / "ensemble" / "metrics.json"
    r = score_ensemble(cfg, problem, kind, 300, ARCH, models(lay, problem, kind), lay.test(problem), out)
    assert read_json(out) == r and r["surrogate"] == f"{kind}_ensemble" and r["members"] == [0, 1, 2]
    assert r["provenance"]["ensemble_of"] == [0, 1, 2] and "seed" not in r["provenance"]
    members_time = sum(read_json(lay.run_file("metrics", problem, kind, 300, ARCH, s))["train_seconds"] for s in (0, 1, 2))
    assert r["train_seconds"] == pytest.approx(members_time)  # what the ensemble cost: its members' trainings
    # the same figure from the members' own outputs, averaged by hand
    p = cfg.problem(problem)
    test = np.load(lay.test(problem))
    nets = [load_checkpoint(m)[0].eval() for m in models(lay, problem, kind)]
    X, Y = test["X"], test["Y"]
    if p.kind == "step":
        src = cfg.problem(p.test_from)
        n_traj = int(test["trajectory"].max()) + 1
        K = len(X) // n_traj
        y0, params = p.rollout_inputs(*src.split(src.columns(X.reshape(n_traj, K, -1)[:, 0]), n_traj), n_traj)
        per = round(src.save_interval / p.step)
        mean = Ensemble(nets)
        pred = rollout(mean, y0, params, (K - 1) * per, keep_every=per).transpose(1, 0, 2).reshape(-1, Y.shape[1])
    else:
        with torch.no_grad():
            pred = np.mean([n(torch.as_tensor(X, dtype=torch.float32)).numpy() for n in nets], axis=0)
    keep = X[:, 0] > 0
    assert r["mae"] == pytest.approx(np.abs(pred - Y)[keep].mean(), rel=1e-5)
    # and it differs from each member's own error (it is a different surrogate)
    members = [evaluate(n, p, dict(test), cfg.rollout_sources(p))[0]["mae"]
               for n in nets]
    assert all(abs(m - r["mae"]) > 1e-9 for m in members)


def test_members_that_are_not_the_runs_they_stand_for_are_refused(seeds_world, tmp_path):
    cfg, lay = seeds_world
    with pytest.raises(InvalidInputError, match=r"repeat a seed \(\[0, 0, 1\]\)"):
        score_ensemble(cfg, "C", "ddnn", 300, ARCH, models(lay, "C", "ddnn", (0, 0, 1)), lay.test("C"), tmp_path / "m.json")
    with pytest.raises(ProvenanceError, match=r"itnn/n300/mlp3x64/seed2/best_model.pth was made for problem = 'D'"):
        score_ensemble(cfg, "C", "ddnn", 300, ARCH, models(lay, "C", "ddnn", (0, 1)) + models(lay, "D", "itnn", (2,)),
                       lay.test("C"), tmp_path / "m.json")
    with pytest.raises(ProvenanceError, match="problem"):  # C's members scored on D's test set
        score_ensemble(cfg, "D", "itnn", 300, ARCH, models(lay, "C", "ddnn"), lay.test("D"), tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_the_cli_reports_bad_members_without_a_traceback(seeds_world, tmp_path, capsys):
    cfg, lay = seeds_world
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.as_dict()))
    args = ["--config", str(tmp_path / "cfg.yaml"), "--problem", "C", "--surrogate", "ddnn", "--n", "300", "--arch", ARCH,
            "--test", str(lay.test("C")), "--out", str(tmp_path / "m.json")]
    assert ensemble_main(args + ["--model", str(models(lay, "C", "ddnn")[0])]) == 2
    assert re.search(r"error: an ensemble needs at least 2 networks, got 1", capsys.readouterr().err)
    assert ensemble_main(args + [a for m in models(lay, "C", "ddnn") for a in ("--model", str(m))]) == 0
    assert read_json(tmp_path / "m.json")["members"] == [0, 1, 2]


def test_the_grid_has_one_ensemble_per_configuration_of_seeds(tmp_path):
    cfg = tiny(tmp_path)
    grid = cfg.ensemble_grid()
    configs = {(p, s, n, a) for p, s, n, a, _ in cfg.training_grid()}
    assert {(p, s, n, a) for p, s, n, a, _ in grid} == configs and len(grid) == len(configs)
    assert all(seeds == (0, 1, 2) for *_, seeds in grid)
    assert validate_config(merge(cfg.as_dict(), {"training": {"ensemble": False}})).ensemble_grid() == []
    one_seed = validate_config(merge(cfg.as_dict(), {"training": {"seeds": [4]}}))
    assert one_seed.ensemble_grid() == []  # one seed: nothing to average


def test_the_accuracy_table_gives_the_ensemble_a_row_of_its_own(seeds_world, tmp_path):
    from benchmarks.tables import accuracy_table

    cfg, lay = seeds_world
    ens = lay.ensemble_file("C", "ddnn", 300, ARCH)
    score_ensemble(cfg, "C", "ddnn", 300, ARCH, models(lay, "C", "ddnn"), lay.test("C"), ens)
    files = [lay.run_file("metrics", "C", "ddnn", 300, ARCH, s) for s in (0, 1, 2)] + [ens]
    table = accuracy_table(files, [lay.sidecar(lay.test("C"))])  # without cfg: no grid check
    rows = table.set_index("surrogate")
    assert rows.loc["ddnn_ensemble", "seeds"] == 3 and rows.loc["ddnn", "seeds"] == 3
    assert rows.loc["ddnn_ensemble", "mae_mean"] == pytest.approx(read_json(ens)["mae"])
    assert rows.loc["ddnn_ensemble", "mae_std"] == 0.0
    # the maximum error with its spread over seeds: the smallest and largest seed's own maximum
    per_seed = [read_json(f)["max_abs_err"] for f in files[:3]]
    assert len(set(per_seed)) == 3
    assert rows.loc["ddnn", "max_abs_err_min"] == pytest.approx(min(per_seed))
    assert rows.loc["ddnn", "max_abs_err_max"] == pytest.approx(max(per_seed))
    assert rows.loc["ddnn", "max_abs_err_mean"] == pytest.approx(sum(per_seed) / 3)
    ens_max = read_json(ens)["max_abs_err"]  # one network: its spread is its own value
    assert rows.loc["ddnn_ensemble", ["max_abs_err_min", "max_abs_err_max"]].tolist() == pytest.approx([ens_max] * 2)
    floor = rows.loc["euler_floor"]
    assert floor["max_abs_err_min"] == floor["max_abs_err_max"] == floor["max_abs_err_mean"]


def test_the_accuracy_per_output_averages_to_the_table_s_mae(seeds_world):
    """Each output's MAE (outputs in different units read apart): over the same rows, their mean is the
    run's MAE, for each seed, the ensemble and the Euler floor."""
    from benchmarks.tables import accuracy_by_output, accuracy_table
    from surrogates.metrics import error_metrics

    cfg, lay = seeds_world
    ens = lay.ensemble_file("C", "ddnn", 300, ARCH)
    score_ensemble(cfg, "C", "ddnn", 300, ARCH, models(lay, "C", "ddnn"), lay.test("C"), ens)
    files = [lay.run_file("metrics", "C", "ddnn", 300, ARCH, s) for s in (0, 1, 2)] + [ens]
    floors = [lay.sidecar(lay.test("C"))]
    by = accuracy_by_output(files, floors)
    whole = accuracy_table(files, floors).set_index("surrogate")
    assert list(by.loc[by["surrogate"] == "ddnn", "output"]) == ["u", "w"]  # the problem's output order
    for kind, seeds in (("ddnn", 3), ("ddnn_ensemble", 3), ("euler_floor", 0)):
        rows = by[by["surrogate"] == kind]
        assert len(rows) == 2 and set(rows["seeds"]) == {seeds}
        assert rows["mae_mean"].mean() == pytest.approx(whole.loc[kind, "mae_mean"], rel=1e-12)
        assert (rows["mae_mean"] > 0).all()
    first = read_json(files[0])["test"]["mae_by_output"]
    assert set(first) == {"u", "w"} and np.mean(list(first.values())) == pytest.approx(read_json(files[0])["mae"])
    with pytest.raises(ValueError, match="2 output columns for 3 output names"):
        error_metrics(np.zeros((4, 2)), np.ones((4, 2)), names=["u", "w", "v"])
